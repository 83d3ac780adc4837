import Config
import Realtime
import Sandbox
import VMMInterface
#if canImport(Glibc)
import Glibc
#endif

extension Machine {
    /// What this VM's VMM keeps after dropping root (docs/sandbox.md): /proc (read-only), its
    /// output files (`writableFiles`: status, latency; each bound alone, owned by the VM's uid,
    /// rewritten in place), journald's socket, and RLIMITs sized to the VM. The directories those
    /// files live in stay root's: rtvisord, which has no CAP_DAC_OVERRIDE under its unit, must
    /// still read them. Not its kernel, initrd or disks: they were read or are open through the
    /// descriptors the guest files phase checked, and binding their paths would look them up
    /// again (a symlink swapped in since, even one to `/`, would be bound into the jail).
    public func jailPlan(uid: UInt32, writableFiles: [String], journal: Bool, openFileDescriptors: Int) -> JailPlan {
        let def = definition
        var visible: [JailPlan.Path] = [JailPlan.Path("/proc")]
        var owned: [String] = []
        for file in writableFiles {
            let fd = open(file, O_WRONLY | O_CREAT | O_CLOEXEC, 0o640)
            guard fd >= 0 else { continue }
            close(fd)
            visible.append(JailPlan.Path(file, writable: true))
            owned.append(file)
        }
        if journal { visible.append(JailPlan.Path("/run/systemd/journal", writable: true)) }
        var limits: [(resource: Int32, name: String, value: UInt64)] = [
            // Descriptors: what the VM has open now plus room for console clients and lazily
            // created eventfds; a guest cannot make the VMM exhaust the host's.
            (Int32(RLIMIT_NOFILE.rawValue), "RLIMIT_NOFILE", UInt64(max(256, openFileDescriptors + 256))),
            // Threads of this uid: vCPUs, an I/O thread per NIC, and the VMM's few helpers.
            (Int32(__RLIMIT_NPROC.rawValue), "RLIMIT_NPROC", UInt64(def.vcpus + def.nets.count + 32)),
            (Int32(RLIMIT_CORE.rawValue), "RLIMIT_CORE", 0),
        ]
        if let rt = realtime {
            if rt.settings.lockMemory { limits.append((Int32(__RLIMIT_MEMLOCK.rawValue), "RLIMIT_MEMLOCK", UInt64.max)) }
        }
        return JailPlan(root: JailLocation.root(vm: def.name), visible: visible, owned: owned, uid: uid, gid: uid, limits: limits)
    }

    /// The real-time partition is undone by a privileged helper process (`--realtime-janitor`)
    /// once this VMM has dropped root: `run()` asks it through `release` at the end.
    public func handRealtimeReleaseToJanitor(_ release: @escaping @Sendable () throws -> String) { realtime?.releaseBroker = release }
    /// Likewise, leaving the partition for the next VMM after a guest reset (`RealtimeSetup.handOver`).
    public func handRealtimeHandOverToJanitor(_ handOver: @escaping @Sendable () throws -> String) { realtime?.handOverBroker = handOver }
    public var isRealtime: Bool { realtime != nil }
}

extension Machine {
    /// Real-time placement requests go to `broker` from now on (the VMM is about to drop root).
    public func setRealtimePlacementBroker(_ broker: @escaping @Sendable (_ tid: Int32, _ cpu: Int, _ priority: Int) throws -> Void) {
        realtime?.placementBroker = broker
    }
    /// The real-time CPUs and the highest SCHED_FIFO priority this VM's threads may get (vCPUs at
    /// `priority`, the latency probe one above), for the janitor's checks.
    public var realtimeGrant: (cpus: [Int], maxPriority: Int, attachFile: String?)? {
        guard let rt = realtime else { return nil }
        return (rt.settings.cpus, rt.settings.priority + 1, rt.partition?.attachFiles.first)
    }
}
