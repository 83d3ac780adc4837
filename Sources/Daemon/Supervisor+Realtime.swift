import Config
import Foundation
import Realtime

/// Real-time admission and CPU housekeeping: which CPUs running real-time VMs hold, and keeping
/// everything else off them.
extension Supervisor {
    /// Why `name` may not start with `rt` now, or nil: its CPUs must be online, not held by another
    /// real-time VM, and leave the host at least one housekeeping CPU.
    func admitRealtime(_ name: String, _ rt: RealtimeSettings) -> String? {
        let online = Set(HostCPUs().online)
        let offline = rt.cpus.filter { !online.contains($0) }
        if !offline.isEmpty { return PartitionError.offline(vm: name, cpus: offline).description }
        var reserved = Set(rt.cpus)
        for (other, o) in records.sorted(by: { $0.key < $1.key }) where other != name {
            guard let held = o.realtimeCPUsHeld else { continue }
            let overlap = held.filter { rt.cpus.contains($0) }
            if !overlap.isEmpty { return PartitionError.cpusTaken(vm: name, owner: other, cpus: overlap).description }
            reserved.formUnion(held)
        }
        if online.subtracting(reserved).isEmpty { return PartitionError.noHousekeepingCPU(vm: name, cpus: rt.cpus).description }
        return nil
    }

    /// CPUs held by real-time VMs (other than `name`).
    func reservedRealtimeCPUs(excluding name: String? = nil) -> Set<Int> {
        Set(records.filter { $0.key != name }.compactMap { $0.value.realtimeCPUsHeld }.joined())
    }

    /// Keeps the daemon's threads and ordinary VMMs off real-time CPUs (all CPUs again once no
    /// real-time VM runs). A real-time VMM confines its own helper threads.
    func applyHousekeepingAffinity() {
        let online = HostCPUs().online
        let reserved = reservedRealtimeCPUs()
        let housekeeping = online.filter { !reserved.contains($0) }
        guard !housekeeping.isEmpty else { return }
        let ordinary = records.values.filter { $0.pid != nil && $0.current.realtime == nil }.compactMap(\.pid)
        for pid in [getpid()] + ordinary {
            for tid in ThreadScheduling.threads(of: pid) { try? ThreadScheduling.setAffinity(housekeeping, tid: tid) }
        }
    }
}

extension Supervisor.Record {
    /// The real-time CPUs this VM holds: its running VMM's, or, between two VMMs of a guest
    /// reboot, those of the partition kept for the next one (nobody else may take them then).
    var realtimeCPUsHeld: [Int]? {
        pid != nil ? current.realtime?.cpus : lifecycle.keptPartition?.realtime?.cpus
    }
}
