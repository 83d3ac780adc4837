import Config
import KVM
import Logging
import Memory
import Realtime
#if canImport(Glibc)
import Glibc
#endif

/// A real-time VM's host side, set up before any vCPU exists and undone when the VM ends:
/// locked memory, the cpuset partition, IRQs steered away, exits disabled, and per-vCPU pinning
/// and SCHED_FIFO applied by each vCPU thread before its first KVM_RUN.
final class RealtimeSetup: @unchecked Sendable {
    let vm: String
    let settings: RealtimeSettings
    let housekeeping: [Int]
    let partition: RealtimePartition?
    /// Where the cpuset controller is (read once, at start).
    let hierarchy: CpusetHierarchy?
    let logger: Logger
    /// The wake-up latency probe, when `latency_probe_us` asks for one.
    let probe: WakeupLatencyProbe?

    /// Runs in the VMM's main thread before it creates any other thread, so every helper thread
    /// inherits the housekeeping affinity; only vCPU threads move to the real-time CPUs.
    init(definition def: VMDefinition, settings rt: RealtimeSettings, latencyFile: String? = nil, logger: Logger) throws {
        self.vm = def.name
        self.settings = rt
        self.logger = logger
        let host = HostCPUs()
        let online = Set(host.online)
        let offline = rt.cpus.filter { !online.contains($0) }
        if !offline.isEmpty { throw VMMError.setup(PartitionError.offline(vm: def.name, cpus: offline).description) }
        if rt.lockMemory {
            do { try ThreadScheduling.lockAllMemory() } catch { throw VMMError.setup("real-time VM \(def.name): \(error)") }
        }
        // The partition the previous VMM of this VM left across its guest's reset is taken over
        // as it is: no cpuset is removed or recreated, no IRQ steered back and forth.
        let hierarchy = CpusetHierarchy.detect()
        self.hierarchy = hierarchy
        var kept: PartitionState?
        switch PartitionHandover.claim(vm: def.name, cpus: rt.cpus, moveIRQs: rt.moveIRQs, hierarchy: hierarchy) {
        case .nothingLeft: break
        case let .adopted(state): kept = state
        case let .replaced(why): logger.notice("real-time VM \(def.name): the partition its previous VMM left is not the one asked for (\(why)): building a new one")
        }
        // The partition: cgroup v1 shield or v2 threaded partition; without a usable cpuset the
        // VM still gets pinned FIFO vCPUs, and the log says what isolation it lacks.
        var partition: RealtimePartition?
        var reserved = Set(rt.cpus)
        /// A failed start undoes what it took over too: nobody else would.
        func abandon() {
            partition?.release()
            if kept != nil { PartitionState.undo(vm: def.name, hierarchy: hierarchy) }
        }
        switch hierarchy {
        case let .v1(root)?:
            let v1 = CpusetV1(root: root, host: host)
            do { partition = try kept != nil ? v1.adopt(vm: def.name, cpus: rt.cpus) : v1.acquire(vm: def.name, cpus: rt.cpus) } catch {
                if kept != nil { _ = releaseRealtimePartition(vm: def.name, hierarchy: hierarchy) }
                throw VMMError.setup("\(error)")
            }
            reserved.formUnion(v1.heldCPUs())
        case let .v2(mount)?:
            let hk = online.subtracting(reserved).sorted()
            if hk.isEmpty { abandon(); throw VMMError.setup(PartitionError.noHousekeepingCPU(vm: def.name, cpus: rt.cpus).description) }
            // In the VMM's own cgroup, which outlives a VMM that leaves its partition: writing the
            // same values again changes nothing.
            if let cg = CpusetV2.ownCgroup(mount: mount) {
                do { partition = try CpusetV2(cgroup: cg).acquire(vm: def.name, cpus: rt.cpus, housekeeping: hk) }
                catch { logger.warning("real-time VM \(def.name): no cpuset partition, vCPUs are pinned only: \(error)") }
            }
        case nil:
            logger.warning("real-time VM \(def.name): no cpuset controller mounted, vCPUs are pinned only")
        }
        self.partition = partition
        housekeeping = online.subtracting(reserved).sorted()
        if housekeeping.isEmpty {
            abandon()
            throw VMMError.setup(PartitionError.noHousekeepingCPU(vm: def.name, cpus: rt.cpus).description)
        }
        do { try ThreadScheduling.setAffinity(housekeeping) } catch {
            abandon()
            throw VMMError.setup("real-time VM \(def.name): \(error)")
        }
        if let kept {
            logger.notice("real-time partition adopted from the previous VMM across the guest's reset (built by PID \(kept.builtBy), hand-over \(kept.handovers))")
        }
        if let partition { logger.notice("real-time partition: \(partition.summary)") }
        // On an adopted partition these moves find nothing to do unless an IRQ came or was
        // steered back meanwhile; the values saved when it was built stay the ones to restore.
        var irqs = kept?.irqs ?? IRQAffinity.Saved()
        if rt.moveIRQs {
            let moved = IRQAffinity().move(off: Set(rt.cpus), housekeeping: housekeeping)
            irqs = irqs.adding(moved)
            let unmovable = moved.unmovable.isEmpty ? "" : ", not movable: \(moved.unmovable.joined(separator: "; "))"
            logger.notice("real-time CPUs \(CPUList.format(rt.cpus)): \(moved.irqs.count) IRQs moved to CPUs \(CPUList.format(housekeeping))\(unmovable)")
        }
        let workqueues = CPUMaskFile.workqueues().move(off: Set(rt.cpus), housekeeping: housekeeping)
        if workqueues != nil { logger.notice("unbound kernel workqueues confined to CPUs \(CPUList.format(housekeeping))") }
        PartitionState(vm: def.name, cpus: rt.cpus, irqs: irqs, workqueueMask: kept?.workqueueMask ?? workqueues, moveIRQs: rt.moveIRQs,
                       builtBy: kept?.builtBy ?? getpid(), handovers: kept?.handovers ?? 0).save()
        probe = rt.latencyProbeMicroseconds > 0
            ? WakeupLatencyProbe(vm: def.name, cpu: rt.cpus[0], vcpuPriority: rt.priority, periodMicroseconds: rt.latencyProbeMicroseconds,
                                 file: latencyFile, logger: logger)
            : nil
        let report = RealtimeReport(vm: def.name, cpus: rt.cpus, host: host, exitsDisabled: rt.exits.contains(.hlt))
        for line in report.lines { logger.notice("\(line)") }
        probe?.placer = { [unowned self] tid, cpu, priority in try self.place(tid: tid, cpu: cpu, priority: priority) }
    }

    var memoryBacking: MemoryBacking {
        MemoryBacking(populate: true, hugePages: settings.hugepages, lock: settings.lockMemory)
    }

    /// KVM_CAP_X86_DISABLE_EXITS on the VM; must precede vCPU creation.
    func disableExits(system: KVMSystem, vm: VirtualMachine) throws {
        guard !settings.exits.isEmpty else { return }
        let supported = UInt64(max(0, system.checkExtension(KVMCapability.x86DisableExits)))
        let missing = settings.exits.filter { supported & $0.kvmBit == 0 }
        if !missing.isEmpty {
            throw VMMError.setup("real-time VM \(self.vm): this host's KVM cannot disable \(missing.map(\.rawValue).joined(separator: ", ")) exits (KVM_CAP_X86_DISABLE_EXITS = 0x\(String(supported, radix: 16)))")
        }
        try vm.enableCapability(UInt32(KVMCapability.x86DisableExits), args: [settings.disabledExitMask])
        logger.notice("real-time VM \(self.vm): \(settings.exits.map(\.rawValue).joined(separator: ", ")) exits disabled")
    }

    /// In vCPU thread `index`, before its first KVM_RUN.
    func enterVCPUThread(index: Int) throws {
        let cpu = settings.cpus[index]
        let tid = ThreadScheduling.currentTID
        do {
            try place(tid: tid, cpu: cpu, priority: settings.priority)
        } catch {
            throw VMMError.setup("real-time vCPU \(index) (thread \(tid)) on CPU \(cpu): \(error)")
        }
        logger.info("vCPU \(index): thread \(tid) on CPU \(cpu), SCHED_FIFO \(settings.priority)")
    }

    /// Set when a privileged helper process undoes the partition (the VMM dropped root): called
    /// at stop, it returns what was undone.
    nonisolated(unsafe) var releaseBroker: (@Sendable () throws -> String)?
    /// Set with `releaseBroker`: the same helper leaves the partition for the next VMM.
    nonisolated(unsafe) var handOverBroker: (@Sendable () throws -> String)?
    /// Once the VMM has dropped root, its threads' real-time placement (cpuset, CPU, SCHED_FIFO)
    /// is applied by the privileged janitor process on request (JailSetup in rtvisor-vmm).
    nonisolated(unsafe) var placementBroker: (@Sendable (_ tid: Int32, _ cpu: Int, _ priority: Int) throws -> Void)?

    /// Puts thread `tid` in the partition on `cpu` at SCHED_FIFO `priority`, itself or through the broker.
    func place(tid: Int32, cpu: Int, priority: Int) throws {
        if let placementBroker { try placementBroker(tid, cpu, priority); return }
        // Join the cpuset first: a v1 attach resets the thread's affinity to the set's CPUs.
        try partition?.attach(tid: tid)
        try ThreadScheduling.setAffinity([cpu], tid: tid)
        try ThreadScheduling.setFIFO(priority: priority, tid: tid)
    }

    /// After every vCPU thread ended. Returns how it was undone.
    @discardableResult
    func release() -> String {
        if let releaseBroker {
            do {
                let done = try releaseBroker()
                logger.notice("real-time partition of \(vm) released by the janitor: \(done)")
                return "by the VMM's janitor: \(done)"
            } catch {
                logger.error("real-time partition of \(vm): \(error); the janitor undoes it when this process exits")
                return "by the VMM's janitor as the VMM exits (\(error))"
            }
        }
        partition?.release()
        PartitionState.undo(vm: vm, hierarchy: hierarchy)
        logger.notice("real-time partition of \(vm) released")
        return "by the VMM"
    }

    /// After every vCPU thread ended, when the guest reset and this VMM's caller starts the next
    /// VMM of the VM (`--keep-realtime-partition-on-reset`): the partition stays as it is, marked
    /// for that VMM to adopt. The caller undoes it if it starts none (rtvisord: a stop requested
    /// meanwhile, a changed definition).
    func handOver() {
        if let handOverBroker {
            do { let answer = try handOverBroker(); logger.notice("real-time partition of \(vm): \(answer) (the janitor)") }
            catch { logger.error("real-time partition of \(vm): \(error); the janitor undoes it when this process exits") }
            return
        }
        if PartitionState.handOver(vm: vm) {
            logger.notice("real-time partition of \(vm) kept for the next VMM (guest reset)")
        } else {
            release()
        }
    }
}
