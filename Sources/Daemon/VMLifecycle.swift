import APIModels
import Config
#if canImport(Glibc)
import Glibc
import VMMInterface
#endif

/// Where a VM is in its life. A VMM process exists exactly in `running`, `paused` and `stopping`.
public enum VMPhase: Equatable, Sendable {
    /// Not running; ended normally (or never started).
    case stopped
    /// Ended unexpectedly (or could not start) and will not be restarted.
    case failed
    /// Ended unexpectedly, or rebooted in a loop; a restart timer of the current generation is pending.
    case restarting
    /// A `spawn` effect is out; its result (`processSpawned`/`spawnFailed`) comes back in the same
    /// actor turn, so nobody outside sees this phase.
    case starting(SpawnReason)
    case running(VMProcess)
    /// The process is stopped with SIGSTOP.
    case paused(VMProcess)
    /// A stop signal was sent; waiting for the process to end.
    case stopping(VMProcess, StopIntent)
}

/// One VM's lifecycle as a pure state machine: `handle` takes an event and the time, changes the
/// state and returns the effects for the supervisor to perform. No I/O, no clocks, so every race
/// (restart vs. stop, reboot vs. exit, stale timers) is a table test.
public struct VMLifecycle: Equatable, Sendable {
    /// SIGTERM → SIGKILL delay of a hard stop.
    public static let killGraceSeconds: Double = 5

    public let name: String
    public internal(set) var phase: VMPhase = .stopped
    /// The loaded definition: what the next VMM runs (a running VMM keeps its own, `process`).
    public private(set) var definition: VMDefinition
    /// The loaded definition's daemon settings (stop timeout; the restart settings live in `tracker`).
    public private(set) var settings: DaemonSettings
    public private(set) var tracker: RestartTracker
    /// Bumped on every spawn, stop and exit: timers and escalations from an earlier generation do nothing.
    public internal(set) var generation = 0
    /// Restarts since the VM was last started by hand (policy restarts, reboots).
    public private(set) var restarts = 0
    public private(set) var lastExit: ExitInfo?
    /// Unix time of the last state change users care about (start, exit, pause, resume).
    public private(set) var since: Double
    /// The cgroup of the latest VMM (kept after it ends: `inspect` shows it).
    public private(set) var cgroup: String?
    /// rtvisord is stopping or restarting: no more restarts, and an exit is just an exit.
    public private(set) var daemonLeaving: Bool
    /// The pending restart (`restarting`) is a throttled guest reboot, not a restart after a failure.
    public private(set) var restartIsReboot = false
    /// The real-time partition the last VMM left in place when its guest reset, for the next VMM
    /// to adopt (`--keep-realtime-partition-on-reset`): the definition it was built for. Set from
    /// that VMM's exit until the next one is spawned (which takes it over), or until a `releaseRealtime`
    /// effect undoes it: a stop, a start by hand, a removal, the daemon leaving, a failed spawn, or a
    /// definition change (the new VMM builds its own). Its CPUs stay reserved meanwhile.
    public private(set) var keptPartition: VMDefinition?
    /// The VMM spawned to resume a snapshot, until it answers on its control socket
    /// (`restoreConfirmed`). If it ends before, it refused the snapshot (wrong memory size,
    /// corrupt state, another host's CPUID…): the VM is left failed with the VMM's reason, never
    /// restarted (a restart would boot it, which nobody asked for).
    public private(set) var restoring: RestoringVMM?
    /// The VMM spawned to take the VM over by live migration, until it serves its control socket
    /// (`incomingConfirmed`; state `incoming`). If it ends before, the migration failed: the VM is
    /// left failed with the VMM's reason and never restarted (the guest runs on the source).
    public private(set) var receiving: IncomingVMM?
    /// The running VMM keeps the guest paused after a migration of unknown outcome (state
    /// `paused`): `resume` goes to its control socket, a stop is a hard one (a paused guest cannot
    /// act on Ctrl-Alt-Del).
    public private(set) var pausedByVMM = false
    /// A same-host upgrade in progress (VMLifecycle+Upgrade.swift). Set by its own file only.
    public internal(set) var upgrading: UpgradingVMM?

    public init(name: String, definition: VMDefinition, since: Double, daemonLeaving: Bool = false) {
        self.name = name
        self.definition = definition
        settings = definition.daemon
        tracker = RestartTracker(settings: definition.daemon.restart)
        self.since = since
        self.daemonLeaving = daemonLeaving
    }

    public var process: VMProcess? {
        switch phase {
        case let .running(p), let .paused(p), let .stopping(p, _): p
        case .stopped, .failed, .restarting, .starting: nil
        }
    }

    /// The state the API and the journal show.
    public var stateName: VMStateName {
        switch phase {
        case .stopped, .starting: lastExit?.status == VMMExitStatus.migrated.code ? .migrated : .stopped
        case .failed: .failed
        case .restarting: .restarting
        case .running: receiving != nil ? .incoming : pausedByVMM ? .paused : .running
        case .paused: .paused
        case .stopping: .stopping
        }
    }

    public mutating func handle(_ event: VMEvent, at now: LifecycleTime) -> [VMEffect] {
        switch event {
        case let .autostart(addedByReload):
            guard phase == .stopped else { return [] }
            return beginSpawn(addedByReload ? .addedByReload : .autostart)
        case .startRequested: return start()
        case let .restoreRequested(source): return spawnResuming(.restoreRequested(source))
        case let .restoreConfirmed(pid):
            guard let r = restoring, r.pid == pid, process?.pid == pid else { return [] }
            restoring = nil
            return [.journal(.init(.vmRestored, .notice, "VM \(name) resumed from snapshot \(r.source.directory) (rtvisor-vmm PID \(pid))",
                                   pid: pid, state: stateName, extra: ["SNAPSHOT_DIRECTORY": r.source.directory]))]
        case let .incomingRequested(source): return spawnResuming(.incomingMigration(source))
        case let .incomingConfirmed(pid):
            guard let r = receiving, r.pid == pid, process?.pid == pid else { return [] }
            receiving = nil
            since = now.wall
            return [.publishStatus]
        case let .migrationOutcomeUnknown(pid):
            guard case let .running(p) = phase, p.pid == pid else { return [] }
            pausedByVMM = true
            since = now.wall
            return [.publishStatus]
        case let .vmmResumed(pid):
            guard case let .running(p) = phase, p.pid == pid, pausedByVMM else { return refuse(.conflict("VM \(name) is \(stateName.rawValue), not paused")) }
            pausedByVMM = false
            since = now.wall
            return [.journal(.init(.vmResumed, .notice, "VM \(name) resumed (its VMM had kept it paused)", pid: pid, state: .running)),
                    .publishStatus, reply("resume", "resumed")]
        case let .upgradeStarted(pid, target): return upgradeStarted(pid: pid, target: target)
        case let .upgradeConfirmed(targetPID): return upgradeConfirmed(targetPID)
        case let .upgradeAbandoned(targetPID):
            if upgrading?.target.pid == targetPID { upgrading = nil }
            return []
        case let .stopRequested(force): return stop(force: force || pausedByVMM)
        case .rebootRequested: return reboot(hard: pausedByVMM)
        case .resetRequested: return reboot(hard: true)
        case .pauseRequested:
            guard case let .running(p) = phase, receiving == nil, !pausedByVMM else {
                return refuse(.conflict("VM \(name) is \(stateName.rawValue), not running"))
            }
            return [.freeze(pid: p.pid)]
        case .resumeRequested:
            guard case let .paused(p) = phase else { return refuse(.conflict("VM \(name) is \(stateName.rawValue), not paused")) }
            return [.thaw(pid: p.pid)]
        case let .settingsChanged(new):
            definition.daemon = new
            settings = new
            tracker.settings = new.restart
            return []
        case let .definitionChanged(new):
            definition = new
            settings = new.daemon
            tracker.settings = new.daemon.restart
            return []
        case .definitionRemoved: return definitionRemoved()
        case .shutdownRequested: return shutdown()
        case .daemonShutdown:
            daemonLeaving = true
            if let p = process { return beginStop(p, force: false, intent: .stop) }
            if phase == .restarting { phase = .stopped; generation += 1 }
            return releaseKeptPartition()
        case .daemonDetach:
            // A reboot waiting out its delay does not happen any more, nor does the next rtvisord
            // know of it: the partition kept for it is undone.
            daemonLeaving = true
            return releaseKeptPartition()

        case let .processSpawned(process, cgroup): return spawned(process, cgroup: cgroup, now: now)
        case let .spawnFailed(reason): return spawnFailed(reason, now: now)
        case let .frozen(pid):
            guard case let .running(p) = phase, p.pid == pid else { return [] }
            phase = .paused(p)
            since = now.wall
            return [.journal(.init(.vmPaused, .notice, "VM \(name) paused (rtvisor-vmm PID \(pid) stopped with SIGSTOP)", pid: pid, state: .paused)),
                    .publishStatus, reply("pause", "paused")]
        case let .freezeFailed(pid, error):
            guard case let .running(p) = phase, p.pid == pid else { return [] }
            return refuse(.failed("SIGSTOP to PID \(pid) failed: \(error)"))
        case let .thawed(pid):
            guard case let .paused(p) = phase, p.pid == pid else { return [] }
            phase = .running(p)
            since = now.wall
            return [.journal(.init(.vmResumed, .notice, "VM \(name) resumed", pid: pid, state: .running)), .publishStatus, reply("resume", "resumed")]
        case let .thawFailed(pid, error):
            guard case let .paused(p) = phase, p.pid == pid else { return [] }
            return refuse(.failed("SIGCONT to PID \(pid) failed: \(error)"))

        case let .processExited(pid, outcome, statusFile):
            // An exit report of an earlier process (or of none) changes nothing.
            guard let p = process, p.pid == pid else { return [] }
            if let adopted = upgradeTakesOver(from: p, outcome: Self.explain(outcome, statusFile: statusFile).0) { return adopted }
            return ended(p, intent: intent, outcome: outcome, statusFile: statusFile, now: now)
        case let .restartTimerFired(timerGeneration):
            guard timerGeneration == generation, phase == .restarting, !daemonLeaving else { return [] }
            return beginSpawn(restartIsReboot ? .guestReboot : .restartPolicy(tracker.settings.policy))
        case let .escalationDue(pid, escalationGeneration, signal):
            // Only the stop that scheduled it (same process, same generation) escalates.
            guard case let .stopping(p, _) = phase, p.pid == pid, escalationGeneration == generation else { return [] }
            var effects: [VMEffect] = [
                .journal(.init(.vmStopped, .warning, "VM \(name) did not stop in time: sending \(signal) to PID \(pid)", pid: pid, state: .stopping)),
                .signal(pid: pid, signal),
            ]
            if signal == .terminate {
                effects.append(.scheduleEscalation(pid: pid, generation: generation, afterSeconds: Self.killGraceSeconds, signal: .kill))
            }
            return effects
        case let .adopted(found):
            // Only at daemon start, before anything else happened to the VM.
            guard phase == .stopped else { return [] }
            restarts = found.restarts
            cgroup = found.cgroup
            since = found.startedAt
            // Its uptime so far counts for the reboot throttle.
            tracker.started(at: now.monotonic - max(0, now.wall - found.startedAt))
            phase = found.frozen ? .paused(found.process) : .running(found.process)
            let pid = found.process.pid
            return [.journal(.init(.vmAdopted, .notice, "VM \(name) re-adopted: rtvisor-vmm PID \(pid) kept running across the daemon restart",
                                   pid: pid, state: stateName)),
                    .watch(pid: pid, isChild: false)]
        case let .foundEnded(found, statusFile):
            // It ended while no rtvisord was watching: the restart policy decides now.
            guard phase == .stopped else { return [] }
            restarts = found.restarts
            cgroup = found.cgroup
            return ended(found.process, intent: nil, outcome: .unknown, statusFile: statusFile, now: now)
        }
    }

    private var intent: StopIntent? {
        if case let .stopping(_, intent) = phase { return intent }
        return nil
    }

    // MARK: requests

    private mutating func start() -> [VMEffect] {
        switch phase {
        // Idempotent, like systemctl start: the VM is where it was asked to be (exit 0, a note).
        case .running:
            return [reply("start", "already running")]
        case .paused:
            return [reply("start", "already running, paused (rtvisorctl resume continues it)")]
        case .stopping, .starting:
            return refuse(.conflict("VM \(name) is \(stateName.rawValue)"))
        case .stopped, .failed, .restarting:
            // A start by hand forgets earlier failures, and outdates a pending restart timer.
            tracker.reset()
            generation += 1
            return beginSpawn(.startRequested)
        }
    }

    /// Like a start by hand, but the VMM resumes `source` (the definition in force is the one the
    /// restore or clone installed).
    /// A restore, or (`incomingMigration`) a VMM taking the VM over from a migration stream: a
    /// spawn for a VM that runs no VMM, with a fresh restart history.
    private mutating func spawnResuming(_ reason: SpawnReason) -> [VMEffect] {
        switch phase {
        case .running, .paused, .stopping, .starting, .restarting:
            return refuse(.conflict("VM \(name) is \(stateName.rawValue)"))
        case .stopped, .failed:
            tracker.reset()
            generation += 1
            return beginSpawn(reason)
        }
    }

    private mutating func stop(force: Bool) -> [VMEffect] {
        switch phase {
        case let .running(p), let .paused(p):
            let message = force ? "stopping now (SIGTERM)"
                : "asked the guest to shut down (Ctrl-Alt-Del); hard stop after \(settings.stopTimeoutSeconds) s"
            return beginStop(p, force: force, intent: .stop) + [reply("stop", message, state: .stopping)]
        case let .stopping(p, _):
            // Keeps the intent: a reboot or removal in progress stays one.
            let effects: [VMEffect] = force ? [.signal(pid: p.pid, .terminate)] : []
            return effects + [reply("stop", force ? "already stopping; sent SIGTERM" : "already stopping", state: .stopping)]
        case .restarting:
            phase = .stopped
            generation += 1
            return releaseKeptPartition() + [.publishStatus, reply("stop", "pending restart cancelled", state: .stopped)]
        case .stopped, .failed:
            // Idempotent, like systemctl stop: nothing runs, which is what was asked.
            return [reply("stop", "already stopped")]
        case .starting:
            return refuse(.conflict("VM \(name) is not running (\(stateName.rawValue))"))
        }
    }

    /// Part of shutting every guest down: a graceful stop, except that a reset in progress ends
    /// as a stop (at host shutdown a VM must not come back), and a VM that is not running is
    /// left alone without an error (the request is for all of them).
    private mutating func shutdown() -> [VMEffect] {
        switch phase {
        case let .running(p), let .paused(p):
            return beginStop(p, force: false, intent: .stop)
                + [reply("shutdown", "asked the guest to shut down (Ctrl-Alt-Del); hard stop after \(settings.stopTimeoutSeconds) s", state: .stopping)]
        case let .stopping(p, intent):
            // A reset's SIGTERM is already out: the VMM ends soon, and then stays stopped.
            if intent == .reboot { phase = .stopping(p, .stop) }
            return [reply("shutdown", intent == .reboot ? "was being reset: stays stopped" : "already stopping", state: .stopping)]
        case .restarting:
            phase = .stopped
            generation += 1
            return [.publishStatus, reply("shutdown", "pending restart cancelled", state: .stopped)]
        case .stopped, .failed, .starting:
            return []
        }
    }

    /// `reboot` asks the guest, like `stop` (Ctrl-Alt-Del, a hard stop after the stop timeout), and
    /// starts a new VMM once it has ended; `reset` (hard) stops the VMM at once (SIGTERM). Either
    /// way the new VMM runs the current definition, so a pending change applies.
    private mutating func reboot(hard: Bool) -> [VMEffect] {
        let action = hard ? "reset" : "reboot"
        switch phase {
        case let .running(p), let .paused(p):
            let message = hard ? "resetting: the VMM is stopped and started again with the current definition"
                : "asked the guest to shut down (Ctrl-Alt-Del); started again with the current definition once it has (hard stop after \(settings.stopTimeoutSeconds) s)"
            return beginStop(p, force: hard, intent: .reboot) + [reply(action, message, state: .stopping)]
        case .stopping:
            return refuse(.conflict("VM \(name) is stopping"))
        case .stopped, .failed, .restarting, .starting:
            // Nothing to reboot: a reboot of a VM that is not running is a start.
            return start()
        }
    }

    private mutating func definitionRemoved() -> [VMEffect] {
        if let p = process { return beginStop(p, force: false, intent: .remove) }
        phase = .stopped
        generation += 1
        return releaseKeptPartition() + [.forgetVM, .removeVMDirectory,
                .journal(.init(.vmStopped, .notice, "VM \(name) removed (its definition is gone)", state: .stopped))]
    }

    // MARK: process start and end

    /// A partition kept across a guest reset goes to the VMM spawned for that reboot, unless the
    /// definition changed meanwhile; any other start builds its own.
    private mutating func beginSpawn(_ reason: SpawnReason) -> [VMEffect] {
        var effects: [VMEffect] = []
        if let kept = keptPartition, reason != .guestReboot || LoadedDefinition.machineDiffers(kept, definition) {
            effects = releaseKeptPartition()
        }
        phase = .starting(reason)
        return effects + [.spawn(reason)]
    }

    /// Undoes the partition kept for the next VMM, if there is one.
    private mutating func releaseKeptPartition() -> [VMEffect] {
        guard keptPartition != nil else { return [] }
        keptPartition = nil
        return [.releaseRealtime]
    }

    private mutating func spawned(_ p: VMProcess, cgroup: String?, now: LifecycleTime) -> [VMEffect] {
        guard case let .starting(reason) = phase else { return [] }
        phase = .running(p)
        // The new VMM adopts a kept partition; from now on its exit decides what becomes of it.
        keptPartition = nil
        generation += 1
        since = now.wall
        self.cgroup = cgroup
        tracker.started(at: now.monotonic)
        var effects: [VMEffect] = [
            .writeStateFile,
            .journal(.init(.vmStarted, .notice, "VM \(name) started (\(reason)): rtvisor-vmm PID \(p.pid)", pid: p.pid, state: .running,
                           extra: ["VM_CGROUP": cgroup ?? ""])),
            .watch(pid: p.pid, isChild: true),
        ]
        if p.definition.realtime != nil { effects.append(.applyHousekeepingAffinity) }
        effects.append(.publishStatus)
        if reason == .startRequested { effects.append(reply("start", "started, PID \(p.pid)")) }
        if case let .restoreRequested(source) = reason {
            restoring = RestoringVMM(pid: p.pid, source: source)
            effects.append(reply("restore", "restoring from \(source.directory), PID \(p.pid)"))
        }
        if case let .incomingMigration(source) = reason {
            receiving = IncomingVMM(pid: p.pid, sourceHost: source.sourceHost)
            effects.append(reply("receive", "receiving from \(source.sourceHost), PID \(p.pid)", state: .incoming))
        }
        return effects
    }

    private mutating func spawnFailed(_ reason: String, now: LifecycleTime) -> [VMEffect] {
        guard case let .starting(why) = phase else { return [] }
        phase = .failed
        lastExit = ExitInfo(status: nil, signal: nil, reason: reason, at: now.wall)
        var effects: [VMEffect] = releaseKeptPartition() + [
            .journal(.init(.vmFailed, .error, "VM \(name) could not be started: \(reason)", state: .failed, exitReason: reason)),
            .publishStatus,
        ]
        if why.isRequest { effects.append(.reply(.failure(.failed(reason)))) }
        return effects
    }

    /// Graceful: SIGUSR1 (Ctrl-Alt-Del), SIGTERM after the stop timeout, SIGKILL `killGraceSeconds`
    /// later. Forced: SIGTERM at once, SIGKILL `killGraceSeconds` later.
    private mutating func beginStop(_ p: VMProcess, force: Bool, intent: StopIntent) -> [VMEffect] {
        phase = .stopping(p, intent)
        generation += 1
        var effects: [VMEffect] = [.wakeIfStopped(pid: p.pid)]
        if force {
            effects += [.signal(pid: p.pid, .terminate),
                        .scheduleEscalation(pid: p.pid, generation: generation, afterSeconds: Self.killGraceSeconds, signal: .kill)]
        } else {
            effects += [.signal(pid: p.pid, .ctrlAltDel),
                        .scheduleEscalation(pid: p.pid, generation: generation, afterSeconds: Double(settings.stopTimeoutSeconds), signal: .terminate)]
        }
        return effects + [.publishStatus]
    }

    /// The process ended: record why, then stay stopped, forget the VM, reboot, restart per policy or give up.
    private mutating func ended(_ p: VMProcess, intent: StopIntent?, outcome rawOutcome: ExitOutcome, statusFile: VMMExitReport?,
                                now: LifecycleTime) -> [VMEffect] {
        let (outcome, reason) = Self.explain(rawOutcome, statusFile: statusFile)
        var status: Int32? = nil, signal: Int32? = nil
        switch outcome {
        case let .exited(s): status = s
        case let .signaled(s): signal = s
        case .unknown: break
        }
        lastExit = ExitInfo(status: status, signal: signal, reason: reason, at: now.wall)
        since = now.wall
        generation += 1
        phase = .stopped
        let pid = p.pid
        let exitText = "\(outcome): \(reason)"
        var effects: [VMEffect] = [.removeRuntimeFiles]
        let refusedRestore = restoring.flatMap { $0.pid == p.pid ? $0.source : nil }
        restoring = nil
        let failedIncoming = receiving.flatMap { $0.pid == p.pid ? $0.sourceHost : nil }
        receiving = nil
        pausedByVMM = false
        upgrading = nil
        // A real-time VMM whose guest reset left its partition in place (rtvisord starts it with
        // --keep-realtime-partition-on-reset): it is kept for the VMM this reboot starts. In every
        // other case the partition is undone here: a VMM that stopped undid it already (this
        // finds nothing), one that died (kill -9, crash) could not, and a reset during a requested
        // stop or the daemon's shutdown starts no next VMM.
        let handsOver = p.definition.realtime != nil && outcome.isGuestReboot && intent == nil && !daemonLeaving
        if handsOver { keptPartition = p.definition } else if p.definition.realtime != nil { effects.append(.releaseRealtime) }
        let keptNote = handsOver ? "; its real-time partition stays in place for the next VMM" : ""

        switch intent {
        case .remove:
            effects += [.forgetVM, .removeVMDirectory,
                        .journal(.init(.vmStopped, .notice, "VM \(name) stopped and removed (its definition is gone): \(exitText)",
                                       pid: pid, state: .stopped, exitReason: reason))]
        case .stop:
            effects.append(.journal(.init(.vmStopped, .notice, "VM \(name) stopped on request: \(exitText)", pid: pid, state: .stopped, exitReason: reason)))
        case .reboot:
            restarts += 1
            effects.append(.journal(.init(.vmStopped, .notice, "VM \(name) rebooting on request: \(exitText)", pid: pid, state: .running, exitReason: reason)))
            effects += beginSpawn(.rebootRequested)
        case nil where refusedRestore != nil:
            // The snapshot was never resumed: nothing ran that a restart could bring back.
            phase = .failed
            effects.append(.journal(.init(.vmFailed, .error, "VM \(name) could not be restored from \(refusedRestore!.directory): \(exitText)",
                                          pid: pid, state: .failed, exitReason: reason)))
        case nil where failedIncoming != nil:
            // The guest never ran here (it runs on, or resumes on, the source): nothing to restart.
            phase = .failed
            effects.append(.journal(.init(.vmFailed, .error, "VM \(name) could not be received from \(failedIncoming!): \(exitText)",
                                          pid: pid, state: .failed, exitReason: reason)))
        case nil where daemonLeaving:
            effects.append(.journal(.init(.vmStopped, .notice, "VM \(name) ended during daemon shutdown: \(exitText)", pid: pid, state: .stopped,
                                          exitReason: reason)))
        case nil:
            switch tracker.decide(outcome, now: now.monotonic) {
            case let .restart(delayMs, why):
                restarts += 1
                restartIsReboot = outcome.isGuestReboot
                if outcome.isGuestReboot && delayMs == 0 {
                    effects.append(.journal(.init(.vmStopped, .notice, "VM \(name): guest rebooted, starting it again\(keptNote)", pid: pid, state: .running,
                                                  exitReason: reason)))
                    effects += beginSpawn(.guestReboot)
                } else if outcome.isGuestReboot {
                    phase = .restarting
                    effects += [
                        .journal(.init(.vmRestartScheduled, .warning, "VM \(name): guest rebooted, starting it again in \(delayMs) ms (\(why))\(keptNote)",
                                       pid: pid, state: .restarting, exitReason: reason, extra: ["RESTART_DELAY_MS": String(delayMs)])),
                        .scheduleRestart(afterMs: delayMs, generation: generation),
                    ]
                } else {
                    phase = .restarting
                    effects += [
                        .journal(.init(.vmFailed, .error, "VM \(name) ended unexpectedly: \(exitText)", pid: pid, state: .restarting, exitReason: reason)),
                        .journal(.init(.vmRestartScheduled, .notice, "VM \(name) restarts in \(delayMs) ms (\(why))", state: .restarting,
                                       exitReason: reason, extra: ["RESTART_DELAY_MS": String(delayMs)])),
                        .scheduleRestart(afterMs: delayMs, generation: generation),
                    ]
                }
            case let .stay(why):
                let failed = !outcome.isDeliberateStop
                phase = failed ? .failed : .stopped
                effects.append(.journal(.init(failed ? .vmFailed : .vmStopped, failed ? .error : .notice,
                                              "VM \(name) \(failed ? "failed" : "stopped"): \(exitText) (\(why))",
                                              pid: pid, state: stateName, exitReason: reason)))
            case let .giveUp(why):
                phase = .failed
                effects.append(.journal(.init(.vmRestartLimit, .error, "VM \(name) failed and will not be restarted: \(why)", pid: pid, state: .failed,
                                              exitReason: reason)))
            }
        }
        return effects + [.publishStatus]
    }

    /// The outcome as far as it is known (an unwatched VMM's status file tells how it exited) and
    /// the reason shown to users.
    static func explain(_ raw: ExitOutcome, statusFile: VMMExitReport?) -> (ExitOutcome, String) {
        var outcome = raw
        if outcome == .unknown, let s = statusFile { outcome = .exited(s.status.code) }
        var reason = statusFile?.reason ?? outcome.description
        if outcome == .unknown { reason = "ended while rtvisord was not its parent, without an exit status (killed)" }
        if case let .signaled(sig) = outcome {
            reason = "rtvisor-vmm killed by signal \(sig)"
            // A seccomp violation: the VMM's SIGSYS handler wrote which thread made which syscall.
            if let s = statusFile, s.reason.hasPrefix(VMMExitReport.seccompPrefix) { reason += " (SIGSYS): " + s.reason }
        }
        return (outcome, reason)
    }

    // MARK: replies

    private func reply(_ action: String, _ message: String, state: VMStateName? = nil) -> VMEffect {
        .reply(.success(ActionResult(name: name, action: action, state: state ?? stateName, message: message)))
    }

    func refuse(_ error: ControlError) -> [VMEffect] { [.reply(.failure(error))] }
}
