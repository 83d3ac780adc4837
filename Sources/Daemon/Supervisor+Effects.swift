import APIModels
import Config
import Foundation
import Realtime
import VMMInterface
import Posix

/// Performing `VMEffect`s: the only place where a VM's lifecycle touches processes, files,
/// timers and the journal. Effects that have a result (spawn, freeze, thaw) feed it back into
/// the lifecycle at once, within the same actor turn.
extension Supervisor {
    /// Returns the API answer, if performing the effect (or what it fed back) produced one.
    func perform(_ effect: VMEffect, for name: String) -> Result<ActionResult, ControlError>? {
        switch effect {
        case let .spawn(reason):
            return feed(name, spawnVMM(name, why: reason))
        case let .watch(pid, isChild):
            watch(name: name, pid: pid, isChild: isChild, notices: noticeSockets.removeValue(forKey: pid))
        case let .signal(pid, signal):
            Processes.signal(pid, signal.number)
        case let .wakeIfStopped(pid):
            if Processes.stateLetter(of: pid) == "T" { Processes.signal(pid, SIGCONT) }
        case let .freeze(pid):
            let sent = Processes.signal(pid, SIGSTOP)
            return feed(name, sent ? .frozen(pid: pid) : .freezeFailed(pid: pid, error: errnoMessage()))
        case let .thaw(pid):
            let sent = Processes.signal(pid, SIGCONT)
            return feed(name, sent ? .thawed(pid: pid) : .thawFailed(pid: pid, error: errnoMessage()))
        case let .scheduleRestart(afterMs, generation):
            Task {
                try? await Task.sleep(for: .milliseconds(afterMs))
                self.feed(name, .restartTimerFired(generation: generation))
            }
        case let .scheduleEscalation(pid, generation, seconds, signal):
            Task {
                try? await Task.sleep(for: .milliseconds(Int(seconds * 1000)))
                self.feed(name, .escalationDue(pid: pid, generation: generation, signal: signal))
            }
        case .writeStateFile:
            writeStateFile(name)
        case .removeRuntimeFiles:
            try? FileManager.default.removeItem(atPath: paths.stateFile(name))
            // The VMM's socket file outlives it; nobody listens any more.
            try? FileManager.default.removeItem(atPath: paths.consoleSocket(name))
            try? FileManager.default.removeItem(atPath: paths.controlSocket(name))
            try? FileManager.default.removeItem(atPath: paths.incomingConfig(name))
            // The VMM's jail mount point: an empty directory on the host once it has ended.
            rmdir(JailLocation.root(vm: name))
            cgroups.remove(vm: name)
        case .releaseRealtime:
            if let done = releaseRealtimePartition(vm: name) {
                event(.vmRealtimeReleased, .notice, "VM \(name): real-time host changes undone after its VMM ended: \(done)", vm: name)
            }
            applyHousekeepingAffinity()
        case .applyHousekeepingAffinity:
            applyHousekeepingAffinity()
        case let .journal(e):
            event(e.kind, e.level, e.message, vm: name, pid: e.pid, state: e.state, exitReason: e.exitReason, extra: e.extra)
        case .publishStatus:
            publishStatus()
        case .forgetVM:
            records[name] = nil
        case .removeVMDirectory:
            try? FileManager.default.removeItem(atPath: paths.vmDirectory(name))
        case .finishUpgrade:
            finishUpgrade(name)
        case let .reply(answer):
            return answer
        }
        return nil
    }

    /// Prepares the VM's run directory, checks that its real-time CPUs and passthrough devices are
    /// free and that the device policy lets it open its device nodes, and starts rtvisor-vmm with the loaded definition. Returns what happened, for the lifecycle.
    func spawnVMM(_ name: String, why: SpawnReason) -> VMEvent {
        guard let r = records[name] else { return .spawnFailed(reason: "no VM named \"\(name)\"") }
        let fm = FileManager.default
        let dir = paths.vmDirectory(name)
        do {
            try fm.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o750])
            // Set-group-ID directory of group rtvisor: the VMM's console socket (mode 0660)
            // inherits the group, so members can attach.
            if let gid = accessGroup, chown(dir, getuid(), gid) == 0 { chmod(dir, 0o2750) }
            try HostFiles.replaceAtomically(paths.definitionCopy(name), with: Array(r.loaded.contents))
        } catch {
            return .spawnFailed(reason: "cannot prepare \(dir): \(error)")
        }
        try? fm.removeItem(atPath: paths.statusFile(name))
        if let rt = r.loaded.definition.realtime, let refusal = admitRealtime(name, rt) { return .spawnFailed(reason: refusal) }
        let wanted = r.loaded.definition.passthrough.map(\.pci)
        if !wanted.isEmpty {
            let running = records.filter { $0.value.pid != nil }.map { (vm: $0.key, devices: $0.value.current.passthrough.map(\.pci)) }
            if let refusal = PassthroughClaims.conflict(vm: name, wants: wanted, running: running, group: { PassthroughClaims.sysfsGroup($0) }) {
                return .spawnFailed(reason: refusal)
            }
        }
        // A device the unit's DevicePolicy denies is refused here, with the drop-in that allows it.
        if let refusal = DeviceAccess.refusal(for: r.loaded.definition) { return .spawnFailed(reason: refusal) }
        let definition = r.loaded.definition
        let limits = CgroupPlacement.Limits(memoryBytes: VMResourceLimits.memoryBytes(guestMiB: definition.memoryMiB),
                                            tasks: VMResourceLimits.tasks(vcpus: definition.vcpus, nets: definition.nets.count),
                                            cpuWeight: definition.daemon.cpuWeight)
        let placed = cgroups.prepare(vm: name, limits: cgroups.inSupervisorLeaf ? limits : nil)
        if let notes = placed?.notes, !notes.isEmpty { logger.warning("VM \(name): cgroup limits: \(notes.joined(separator: "; "))") }
        let cgroup = placed?.directory
        try? FileManager.default.removeItem(atPath: paths.latencyFile(name))
        let latencyProbe = (definition.realtime?.latencyProbeMicroseconds ?? 0) > 0
        // RTVISOR_LOG_FILE: without journald, the VMM's entries join the daemon's log file.
        let environment = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]
            + (getenv("RTVISOR_LOG_FILE").map { ["RTVISOR_LOG_FILE=" + String(cString: $0)] } ?? [])
        var restore: RestoreSource?, incoming: IncomingSource?
        if case let .restoreRequested(source) = why { restore = source }
        if case let .incomingMigration(source) = why { incoming = source }
        // A socket file left by an earlier VMM of this VM must not answer for the new one.
        try? FileManager.default.removeItem(atPath: paths.controlSocket(name))
        // The VMM's notices (guest ready, partition applied) come on a socket pair: the VMM's
        // end is passed after an incoming migration's stream, ours is read by `watch`; the
        // channels' descriptors follow (docs/channels.md).
        let notices = NoticeSocketPair()
        var passing = incoming.map { [$0.socket] } ?? []
        let noticeDescriptor = notices.map { p -> Int32 in passing.append(p.vmmEnd); return Int32(2 + passing.count) }
        let channels: (fds: [Int32], attachments: [ChannelAttachment])
        do { channels = try channelLaunch(name, definition, firstDescriptor: 3 + Int32(passing.count)) } catch {
            notices?.closeBoth()
            return .spawnFailed(reason: error.description)
        }
        let pid: pid_t
        do {
            pid = try Processes.spawnVMM(executable: paths.vmm, environment: environment, cgroup: cgroup, passing: passing + channels.fds) { joinItself in
                var launch = paths.vmmLaunch(name, baseDirectory: r.loaded.directory, cgroup: joinItself ? cgroup : nil, latencyProbe: latencyProbe,
                                             realtime: definition.realtime != nil, restore: restore, incoming: incoming)
                launch.noticeDescriptor = noticeDescriptor
                launch.channels = channels.attachments
                return launch.arguments
            }
        } catch {
            notices?.closeBoth()
            return .spawnFailed(reason: "\(error)")
        }
        if let notices {
            noticeSockets[pid] = notices.keepDaemonEnd()
            guestStartedAt[pid] = .some(nil)
        }
        return .processSpawned(VMProcess(pid: pid, startTime: Processes.startTime(of: pid) ?? 0, definition: r.loaded.definition), cgroup: cgroup)
    }

    func writeStateFile(_ name: String) {
        guard let r = records[name], let p = r.lifecycle.process else { return }
        let state = VMStateFile(pid: p.pid, startTime: p.startTime, definitionFile: r.loaded.file, baseDirectory: r.loaded.directory,
                                startedAt: r.lifecycle.since, restarts: r.lifecycle.restarts, cgroup: r.lifecycle.cgroup)
        do { try state.write(to: paths.stateFile(name)) } catch {
            event(.vmStarted, .warning, "VM \(name): cannot write \(paths.stateFile(name)) (a daemon restart will not re-adopt it): \(error)", vm: name, pid: p.pid)
        }
    }

    /// Waits for the VMM to end on a thread of its own, passing on its notices meanwhile.
    nonisolated func watch(name: String, pid: pid_t, isChild: Bool, notices: Int32? = nil) {
        // One stream, so the VMM's notices and its end reach the supervisor in that order.
        enum Report: Sendable { case notice(VMMNotice), ended(ExitOutcome) }
        let (reports, report) = AsyncStream<Report>.makeStream()
        Task {
            for await r in reports {
                switch r {
                case let .notice(n): await self.vmmNoticed(n, name: name, pid: pid)
                case let .ended(outcome): await self.processEnded(name: name, pid: pid, outcome: outcome)
                }
            }
        }
        let thread = Thread {
            let outcome = Processes.waitForExit(pid: pid, isChild: isChild, notices: notices) { report.yield(.notice($0)) }
            report.yield(.ended(outcome))
            report.finish()
        }
        thread.name = "wait-\(name)"
        thread.start()
    }

    func processEnded(name: String, pid: pid_t, outcome: ExitOutcome) {
        guestReadyAt[pid] = nil
        guestStartedAt[pid] = nil
        feed(name, .processExited(pid: pid, outcome: outcome, statusFile: exitStatusFile(name)))
    }

    /// What the VMM wrote to `exit-status` when it ended, if anything.
    func exitStatusFile(_ name: String) -> VMMExitReport? { VMMExitReport.read(paths.statusFile(name)) }
}
