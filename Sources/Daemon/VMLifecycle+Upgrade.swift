import APIModels
import VMMInterface
#if canImport(Glibc)
import Glibc
#endif

/// A same-host upgrade (`rtvisorctl upgrade`, docs/migration.md "Upgrading the VMM"): a new VMM
/// takes the running VM over from the old one. The VM stays `running` throughout; the new VMM
/// becomes its process when the old one ends `migrated` (it does only once the new one runs the
/// guest), or when the supervisor found out otherwise that the new one runs it (`confirmed`).
/// Until then an exit of the new VMM is the supervisor's business, not the VM's.
extension VMLifecycle {
    mutating func upgradeStarted(pid: pid_t, target: VMProcess) -> [VMEffect] {
        guard case let .running(p) = phase, p.pid == pid, receiving == nil, restoring == nil, !pausedByVMM, upgrading == nil else {
            return refuse(.conflict("VM \(name) is \(stateName.rawValue)\(upgrading != nil ? " and being upgraded" : ""): it cannot be upgraded now"))
        }
        upgrading = UpgradingVMM(target: target)
        return []
    }

    mutating func upgradeConfirmed(_ targetPID: pid_t) -> [VMEffect] {
        guard var u = upgrading, u.target.pid == targetPID, let old = process else { return [] }
        u.confirmed = true
        upgrading = u
        // The old VMM keeps the guest paused (the outcome was unknown to it): it must end.
        return [.signal(pid: old.pid, .kill)]
    }

    /// The effects of the new VMM taking over when `old` ended with `outcome` (its exit report
    /// read in: a re-adopted VMM's status is known only from it), or nil: no upgrade took place,
    /// the exit is an ordinary one.
    mutating func upgradeTakesOver(from old: VMProcess, outcome: ExitOutcome) -> [VMEffect]? {
        guard let u = upgrading else { return nil }
        let migrated: Bool = if case .exited(VMMExitStatus.migrated.code) = outcome { true } else { false }
        guard migrated || u.confirmed else { return nil }
        upgrading = nil
        phase = .running(u.target)
        generation += 1
        return [
            .finishUpgrade(pid: u.target.pid),
            .writeStateFile,
            .watch(pid: u.target.pid, isChild: true),
            .journal(.init(.vmUpgraded, .notice, "VM \(name) moved to a new rtvisor-vmm: PID \(old.pid) → \(u.target.pid), the guest ran on",
                           pid: u.target.pid, state: .running, extra: ["VM_OLD_PID": String(old.pid)])),
            .publishStatus,
        ]
    }
}
