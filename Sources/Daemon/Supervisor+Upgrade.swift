import APIModels
import Foundation
import Posix
import SystemPackage
import VMMInterface

/// Same-host upgrade (`rtvisorctl upgrade NAME`, docs/migration.md "Upgrading the VMM"): the
/// rtvisor-vmm binary installed now is started for the running VM with one end of a socket pair
/// (`--incoming fd:3`), and the old VMM moves the VM to it over the other end, passing guest RAM
/// (memfds) and the taps as descriptors: nothing is copied, the guest pauses only while its state
/// moves. The VM stays `running` throughout and exactly one VMM runs it at any time.
extension Supervisor {
    /// How long a new VMM whose outcome is unknown may take to show whether it runs the guest.
    static let upgradeResolveSeconds = 15.0

    public func upgrade(_ name: String) async throws(ControlError) -> UpgradeResult {
        let r = try record(name)
        guard case let .running(old) = r.lifecycle.phase, r.state == .running else {
            throw .conflict("VM \(name) is \(r.state.rawValue), not running: only a running VM is upgraded (a stopped one starts under the new binary anyway)")
        }
        guard !migrating.contains(name) else { throw .conflict("VM \(name) is being migrated or upgraded already") }
        guard old.definition.realtime == nil else {
            throw .conflict("VM \(name) is a real-time VM: its CPU partition cannot move between two running VMMs yet; restart it to run the new binary (docs/migration.md)")
        }
        guard old.definition.passthrough.isEmpty else {
            throw .conflict("VM \(name) has passthrough devices: their state lives in the host device, which cannot move (docs/migration.md)")
        }
        guard old.definition.channels.isEmpty else {
            throw .conflict("VM \(name) has shared-memory channels: the handover does not pass their descriptors yet; restart it to run the new binary (docs/channels.md)")
        }
        let request = MigrationRequest(definitionJSON: try runningDefinition(name).json.bytes, handover: true)
        migrating.insert(name)
        defer { migrating.remove(name) }

        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            throw .failed("socketpair: \(errnoMessage())")
        }
        let ours = FileDescriptor(rawValue: pair[0])
        defer { try? ours.close() }
        let cgroup = r.lifecycle.cgroup
        let started = monotonicNanoseconds()
        let pid: pid_t
        do {
            defer { close(pair[1]) }
            removeUpgradeFiles(name)
            pid = try Processes.spawnVMM(executable: paths.vmm, environment: ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], cgroup: cgroup,
                                         passing: [pair[1]]) { joinItself in
                paths.vmmLaunch(name, baseDirectory: r.loaded.directory, cgroup: joinItself ? cgroup : nil, latencyProbe: false, upgrade: true).arguments
            }
        } catch {
            throw .failed("VM \(name): the new rtvisor-vmm (\(paths.vmm)) did not start: \(error); the VM runs on under PID \(old.pid)")
        }
        let target = VMProcess(pid: pid, startTime: Processes.startTime(of: pid) ?? 0, definition: old.definition)
        if case let .failure(error)? = feed(name, .upgradeStarted(pid: old.pid, target: target)) {
            await discardUpgradeTarget(name, pid)
            throw error
        }
        logger.notice("VM \(name): upgrading, rtvisor-vmm PID \(old.pid) hands the VM to PID \(pid) (\(paths.vmm))")
        let controlSocket = paths.controlSocket(name)
        let outcome = await Processes.offThePool { Self.sendVM(controlSocket: controlSocket, over: ours, request: request) }
        switch outcome {
        case let .success(.moved(report)):
            // The lifecycle takes the new VMM on when the old one has ended `migrated`.
            _ = await waitForExit(name, pid: old.pid, seconds: 10)
            return UpgradeResult(name: name, oldPID: old.pid, newPID: pid, vmm: paths.vmm, memoryHandedOver: report.memoryHandedOver == true,
                                 totalBytes: report.totalBytes, totalMilliseconds: Double(monotonicNanoseconds() - started) / 1e6,
                                 downtimeMilliseconds: report.downtimeMilliseconds, state: records[name]?.state ?? .running)
        case let .success(.refused(reason)):
            await discardUpgradeTarget(name, pid)
            event(.vmMigrationFailed, .warning, "VM \(name): upgrade refused, the VM runs on under PID \(old.pid): \(reason)", vm: name, pid: old.pid,
                  extra: ["MIGRATION_OUTCOME": "refused", "MIGRATION_DESTINATION": "local"])
            throw .failed("VM \(name) was not upgraded (it runs on under PID \(old.pid)): \(reason)")
        case let .success(.unknown(reason)):
            return try await resolveUpgrade(name, old: old, target: pid, reason: reason, started: started)
        case let .failure(error):
            return try await resolveUpgrade(name, old: old, target: pid, reason: "\(error)", started: started)
        }
    }

    /// The old VMM sent `go` without hearing back, or its control connection failed: on this host
    /// the new VMM shows which it is. Serving its control socket, it runs the guest (the old one,
    /// paused, is ended); gone, it does not (the old one resumes).
    func resolveUpgrade(_ name: String, old: VMProcess, target pid: pid_t, reason: String, started: UInt64) async throws(ControlError) -> UpgradeResult {
        let startTime = Processes.startTime(of: pid) ?? 0
        let socket = paths.upgradePath(paths.controlSocket(name))
        let problem = await Processes.offThePool {
            VMMControlClient.waitUntilServing(socket, timeoutSeconds: Self.upgradeResolveSeconds) { Processes.isAlive(pid, startTime: startTime) }
        }
        if problem == nil {
            feed(name, .upgradeConfirmed(targetPID: pid))
            _ = await waitForExit(name, pid: old.pid, seconds: 10)
            event(.vmMigrationFailed, .warning, "VM \(name): upgrade to PID \(pid) completed without the old VMM's report (\(reason)): the new VMM runs the guest",
                  vm: name, pid: pid, extra: ["MIGRATION_OUTCOME": "resolved", "MIGRATION_DESTINATION": "local"])
            return UpgradeResult(name: name, oldPID: old.pid, newPID: pid, vmm: paths.vmm, memoryHandedOver: false, totalBytes: 0,
                                 totalMilliseconds: Double(monotonicNanoseconds() - started) / 1e6, downtimeMilliseconds: 0,
                                 state: records[name]?.state ?? .running)
        }
        await discardUpgradeTarget(name, pid)
        // The old VMM may keep the guest paused (it sent `go`): it is the only one now.
        let control = paths.controlSocket(name)
        let resumed = await Processes.offThePool { () -> String? in
            do { try VMMControlClient.connect(control, timeoutSeconds: 10).resume(); return nil } catch { return "\(error)" }
        }
        event(.vmMigrationFailed, .error, "VM \(name): upgrade failed (\(reason)); the new VMM did not take the guest (\(problem!)), PID \(old.pid) keeps it\(resumed.map { ", but resuming it failed: \($0)" } ?? "")",
              vm: name, pid: old.pid, extra: ["MIGRATION_OUTCOME": "error", "MIGRATION_DESTINATION": "local"])
        throw .failed("VM \(name) was not upgraded (it runs on under PID \(old.pid)): \(reason)")
    }

    /// Ends the new VMM of an upgrade that did not happen, reaps it, removes its files.
    func discardUpgradeTarget(_ name: String, _ pid: pid_t) async {
        Processes.signal(pid, SIGKILL)
        _ = await Processes.offThePool { Processes.waitForExit(pid: pid, isChild: true) }
        feed(name, .upgradeAbandoned(targetPID: pid))
        removeUpgradeFiles(name)
    }

    /// A new VMM's files (`DaemonPaths.upgradeFiles`), left by an earlier attempt or by one that did not take over.
    func removeUpgradeFiles(_ name: String) {
        for path in paths.upgradeFiles(name) { try? FileManager.default.removeItem(atPath: paths.upgradePath(path)) }
    }

    /// The new VMM is the VM's process: its sockets and exit report take the usual paths (rename
    /// replaces the old VMM's files atomically, its `migrated` report with them). The new VMM's
    /// jail holds its exit report by the file, not the path, so it writes to it there still.
    func finishUpgrade(_ name: String) {
        for path in paths.upgradeFiles(name) {
            if rename(paths.upgradePath(path), path) != 0 {
                if errno != ENOENT { logger.warning("VM \(name): cannot move \(paths.upgradePath(path)) to \(path): \(errnoMessage())") }
                // No report of the new VMM (no seccomp report file): the old one's must not speak for it.
                if path == paths.statusFile(name) { try? FileManager.default.removeItem(atPath: path) }
            }
        }
    }
}
