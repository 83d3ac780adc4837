#if canImport(Glibc)
import Glibc
#endif
import Posix

/// A real-time partition kept across a guest reset. Rebuilding it for every reboot would undo and
/// redo the host's IRQ affinities, workqueue mask and cpusets, and leave the real-time CPUs open to
/// host work in between (issue 16). So the VMM whose guest reset leaves it in place
/// (`PartitionState.handOver`, asked for by `--keep-realtime-partition-on-reset`), and the next VMM
/// of the same VM takes it over as it is (`claim`, then `CpusetV1.adopt`). Who owns it meanwhile:
/// the VMM's caller, which either starts that next VMM or undoes the partition
/// (`releaseRealtimePartition`); rtvisord's lifecycle decides which (docs/realtime.md).
public enum PartitionHandover {
    public enum Claim: Equatable, Sendable {
        /// No partition was left for this VM: build one.
        case nothingLeft
        /// The partition the previous VMM left, exactly as asked for: the caller holds it now and
        /// builds nothing. The state is the one it was built with (the IRQs' and masks' values
        /// before any real-time VM), `handedOver` cleared and `handovers` counted.
        case adopted(PartitionState)
        /// A partition was left, but not the one asked for (other CPUs, other `move_irqs`, or its
        /// cpuset is gone): it was undone, build a new one. Says why and what was undone.
        case replaced(String)
    }

    /// Called by a real-time VMM at start, before it builds a partition. The check and the claim
    /// happen under the state lock, so two VMMs cannot both adopt one partition.
    public static func claim(vm: String, cpus: [Int], moveIRQs: Bool, hierarchy: CpusetHierarchy?,
                             stateDirectory: String = PartitionState.defaultDirectory, paths: HostPaths = HostPaths(),
                             cpusetLock: String = CpusetV1.defaultLockPath) -> Claim {
        let verdict = PartitionState.locked(directory: stateDirectory) { () -> Result<PartitionState, Mismatch>? in
            guard var state = PartitionState.load(vm: vm, directory: stateDirectory), state.handedOver else { return nil }
            if state.cpus != cpus {
                return .failure(Mismatch("it has CPUs \(CPUList.format(state.cpus)), the VM asks for \(CPUList.format(cpus))"))
            }
            if state.moveIRQs != moveIRQs { return .failure(Mismatch("it was built with move_irqs \(state.moveIRQs), the VM asks for \(moveIRQs)")) }
            if case let .v1(root)? = hierarchy {
                let v1 = CpusetV1(root: root, lockPath: cpusetLock, host: HostCPUs(paths: paths), stateDirectory: stateDirectory)
                guard let set = v1.reservations().first(where: { $0.vm == vm }), set.cpus == cpus else {
                    return .failure(Mismatch("its cpuset \(v1.rtDir(vm)) is gone or changed"))
                }
                if !HostFiles.isDirectory(v1.housekeepingDir) { return .failure(Mismatch("the housekeeping cpuset \(v1.housekeepingDir) is gone")) }
            }
            // Held by this VMM from here on, before it stops being "handed over": a cpuset with
            // no task yet is never free for another VMM's `acquire` to remove.
            try? CpusetV1.recordHolder(vm: vm, in: stateDirectory)
            state.handedOver = false
            state.handovers += 1
            state.write(directory: stateDirectory)
            return .success(state)
        }
        switch verdict {
        case nil: return .nothingLeft
        case let .success(state): return .adopted(state)
        case let .failure(mismatch):
            // Outside the state lock: the release takes it again.
            let done = releaseRealtimePartition(vm: vm, stateDirectory: stateDirectory, hierarchy: hierarchy, paths: paths, cpusetLock: cpusetLock)
            return .replaced("\(mismatch.reason); undone: \(done ?? "nothing was left")")
        }
    }

    struct Mismatch: Error { let reason: String; init(_ reason: String) { self.reason = reason } }
}

extension CpusetV1 {
    /// Takes over `vm`'s cpuset as the previous VMM of the VM left it (`PartitionHandover.claim`
    /// checked that it is the one asked for): nothing is removed or created. The housekeeping set
    /// is written only if it is not what the held partitions leave (another real-time VM came or
    /// went meanwhile); tasks that appeared in the root cpuset since move to it, as at `acquire`.
    public func adopt(vm: String, cpus: [Int]) throws(PartitionError) -> RealtimePartition {
        let lock = FileLock(path: lockPath)
        defer { lock.unlock() }
        let housekeeping = Set(host.online).subtracting(heldCPUs(excluding: vm)).subtracting(cpus).sorted()
        if housekeeping.isEmpty { throw .noHousekeepingCPU(vm: vm, cpus: cpus) }
        if HostFiles.line(housekeepingDir + "/cpuset.cpus").flatMap(CPUList.parse) != housekeeping {
            do { try HostFiles.write(housekeepingDir + "/cpuset.cpus", CPUList.format(housekeeping)) } catch { throw .hostFile(error) }
        }
        let (moved, _) = moveTasks(from: root, to: housekeepingDir)
        let dir = rtDir(vm)
        return CpusetV1Partition(owner: self, vm: vm, dir: dir,
                                 summary: "cgroup v1 cpuset \(dir) (CPUs \(CPUList.format(cpus))) adopted as it was; housekeeping CPUs \(CPUList.format(housekeeping)), \(moved) host tasks moved there since")
    }
}

extension IRQAffinity.Saved {
    /// What a partition saved when it was built (`self`), plus what a later `move` on the same
    /// CPUs changed (IRQs that came or were steered back since): each IRQ's and mask's earliest
    /// saved value is the one from before any real-time VM, and that is what `restore` must put back.
    public func adding(_ later: IRQAffinity.Saved) -> IRQAffinity.Saved {
        var merged = self
        merged.irqs.merge(later.irqs) { earlier, _ in earlier }
        merged.defaultAffinity = defaultAffinity ?? later.defaultAffinity
        merged.unmovable = later.unmovable
        return merged
    }
}
