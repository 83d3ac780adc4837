import APIModels
import Config
import Daemon
import Testing
import VMMInterface

/// Every event in every situation: the resulting situation and the effects, in words. The
/// switches are exhaustive, so a new situation must be decided for every event.
@Suite("VM lifecycle: every event in every situation")
struct VMLifecycleMatrixTests {
    typealias F = LifecycleFixture
    static let crash = "killed by signal 9: rtvisor-vmm killed by signal 9"
    static let gracefulStop = ["SIGCONT to 100 if stopped", "SIGUSR1 to 100", "SIGTERM to 100 in 30.0 s", "publish status"]
    static let hardStop = ["SIGCONT to 100 if stopped", "SIGTERM to 100", "SIGKILL to 100 in 5.0 s", "publish status"]

    func check(_ vm: TestVM, _ effects: [String], _ situation: Situation, _ expected: [String], sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(vm.situation == situation, sourceLocation: sourceLocation)
        #expect(effects == expected, sourceLocation: sourceLocation)
    }

    /// Handles `event`, then checks the situation it led to and the effects.
    func check(_ vm: inout TestVM, on event: VMEvent, _ situation: Situation, _ expected: [String],
               sourceLocation: SourceLocation = #_sourceLocation) {
        let effects = vm.on(event)
        check(vm, effects, situation, expected, sourceLocation: sourceLocation)
    }

    /// The event changes nothing at all in this situation.
    func unchanged(_ s: Situation, _ event: VMEvent, sourceLocation: SourceLocation = #_sourceLocation) {
        var vm = s.make()
        let before = vm.lifecycle
        #expect(vm.on(event) == [], sourceLocation: sourceLocation)
        #expect(vm.lifecycle == before, sourceLocation: sourceLocation)
    }

    @Test("start", arguments: Situation.allCases)
    func start(_ s: Situation) {
        var vm = s.make()
        let effects = vm.on(.startRequested)
        switch s {
        case .stopped, .failed, .restarting: check(vm, effects, .starting, ["spawn (start requested)"])
        // Idempotent: success with a note, nothing done (rtvisorctl exits 0).
        case .running: check(vm, effects, .running, ["reply start running: already running"])
        case .paused: check(vm, effects, .paused, ["reply start paused: already running, paused (rtvisorctl resume continues it)"])
        case .stopping, .stoppingForReboot, .stoppingForRemoval: check(vm, effects, s, ["refuse conflict: VM web is stopping"])
        // Never seen from outside (a spawn resolves within the same actor turn); refused anyway.
        case .starting: check(vm, effects, .starting, ["refuse conflict: VM web is stopped"])
        }
    }

    @Test("graceful stop", arguments: Situation.allCases)
    func gracefulStop(_ s: Situation) {
        var vm = s.make()
        let effects = vm.on(.stopRequested(force: false))
        switch s {
        case .running, .paused:
            check(vm, effects, .stopping, Self.gracefulStop + ["reply stop stopping: asked the guest to shut down (Ctrl-Alt-Del); hard stop after 30 s"])
        case .stopping, .stoppingForReboot, .stoppingForRemoval:
            check(vm, effects, s, ["reply stop stopping: already stopping"])
        case .restarting: check(vm, effects, .stopped, ["publish status", "reply stop stopped: pending restart cancelled"])
        case .stopped: check(vm, effects, .stopped, ["reply stop stopped: already stopped"])
        case .starting: check(vm, effects, s, ["refuse conflict: VM web is not running (stopped)"])
        case .failed: check(vm, effects, .failed, ["reply stop failed: already stopped"])
        }
    }

    @Test("forced stop", arguments: Situation.allCases)
    func forcedStop(_ s: Situation) {
        var vm = s.make()
        let effects = vm.on(.stopRequested(force: true))
        switch s {
        case .running, .paused: check(vm, effects, .stopping, Self.hardStop + ["reply stop stopping: stopping now (SIGTERM)"])
        // The intent stays: a reboot or removal in progress only gets its SIGTERM sooner.
        case .stopping, .stoppingForReboot, .stoppingForRemoval:
            check(vm, effects, s, ["SIGTERM to 100", "reply stop stopping: already stopping; sent SIGTERM"])
        case .restarting: check(vm, effects, .stopped, ["publish status", "reply stop stopped: pending restart cancelled"])
        case .stopped: check(vm, effects, .stopped, ["reply stop stopped: already stopped"])
        case .starting: check(vm, effects, s, ["refuse conflict: VM web is not running (stopped)"])
        case .failed: check(vm, effects, .failed, ["reply stop failed: already stopped"])
        }
    }

    /// `reboot` asks the guest (like a graceful stop), `reset` stops the VMM at once; both start a
    /// new VMM when the old one has ended, and both start a VM that is not running.
    @Test("reboot (graceful) and reset (hard)", arguments: Situation.allCases, [false, true])
    func reboot(_ s: Situation, hard: Bool) {
        var vm = s.make()
        let effects = vm.on(hard ? .resetRequested : .rebootRequested)
        switch s {
        case .running, .paused:
            check(vm, effects, .stoppingForReboot, hard
                  ? Self.hardStop + ["reply reset stopping: resetting: the VMM is stopped and started again with the current definition"]
                  : Self.gracefulStop + ["reply reboot stopping: asked the guest to shut down (Ctrl-Alt-Del); started again with the current definition once it has (hard stop after 30 s)"])
        case .stopping, .stoppingForReboot, .stoppingForRemoval: check(vm, effects, s, ["refuse conflict: VM web is stopping"])
        // Nothing to reboot: a start (whose reply comes with the spawn's result).
        case .stopped, .failed, .restarting: check(vm, effects, .starting, ["spawn (start requested)"])
        case .starting: check(vm, effects, .starting, ["refuse conflict: VM web is stopped"])
        }
    }

    @Test func aGracefulRebootStartsTheVMAgainOnceTheGuestHasPoweredOff() {
        var vm = Situation.running.make()
        vm.on(.rebootRequested)
        let off = VMMExitReport(status: VMMExitStatus(code: 0), reason: "guest powered off")
        let effects = vm.on(.processExited(pid: 100, outcome: .exited(0), statusFile: off))
        #expect(effects.contains("journal vm-stopped notice: VM web rebooting on request: exit status 0: guest powered off"), "\(effects)")
        #expect(effects.contains("spawn (reboot requested)"))
    }

    @Test("pause and its result", arguments: Situation.allCases)
    func pause(_ s: Situation) {
        var vm = s.make()
        let effects = vm.on(.pauseRequested)
        guard s == .running else {
            let state = vm.lifecycle.stateName.rawValue
            check(vm, effects, s, ["refuse conflict: VM web is \(state), not running"])
            unchanged(s, .frozen(pid: 100))
            unchanged(s, .freezeFailed(pid: 100, error: "Operation not permitted"))
            return
        }
        check(vm, effects, .running, ["freeze 100"])
        var failed = vm
        check(&failed, on: .freezeFailed(pid: 100, error: "Operation not permitted"), .running,
              ["refuse failed: SIGSTOP to PID 100 failed: Operation not permitted"])
        check(&vm, on: .frozen(pid: 100), .paused,
              ["journal vm-paused notice: VM web paused (rtvisor-vmm PID 100 stopped with SIGSTOP)", "publish status", "reply pause paused: paused"])
        #expect(vm.lifecycle.since == vm.clock.wall)
    }

    @Test("resume and its result", arguments: Situation.allCases)
    func resume(_ s: Situation) {
        var vm = s.make()
        let effects = vm.on(.resumeRequested)
        guard s == .paused else {
            let state = vm.lifecycle.stateName.rawValue
            check(vm, effects, s, ["refuse conflict: VM web is \(state), not paused"])
            unchanged(s, .thawed(pid: 100))
            unchanged(s, .thawFailed(pid: 100, error: "No such process"))
            return
        }
        check(vm, effects, .paused, ["thaw 100"])
        var failed = vm
        check(&failed, on: .thawFailed(pid: 100, error: "No such process"), .paused, ["refuse failed: SIGCONT to PID 100 failed: No such process"])
        check(&vm, on: .thawed(pid: 100), .running, ["journal vm-resumed notice: VM web resumed", "publish status", "reply resume running: resumed"])
    }

    @Test("spawn results count only while starting", arguments: Situation.allCases)
    func spawnResults(_ s: Situation) {
        let spawned = VMEvent.processSpawned(F.process(200), cgroup: "/sys/fs/cgroup/rtvisord.service/vm-web")
        let failed = VMEvent.spawnFailed(reason: "cannot start /usr/libexec/rtvisor-vmm: ENOENT")
        guard s == .starting else {
            unchanged(s, spawned)
            unchanged(s, failed)
            return
        }
        var vm = s.make()
        check(&vm, on: spawned, .running,
              ["write state file", "journal vm-started notice: VM web started (start requested): rtvisor-vmm PID 200", "watch 200", "publish status",
               "reply start running: started, PID 200"])
        #expect(vm.lifecycle.process?.pid == 200 && vm.lifecycle.cgroup == "/sys/fs/cgroup/rtvisord.service/vm-web")
        vm = s.make()
        check(&vm, on: failed, .failed,
              ["journal vm-failed error: VM web could not be started: cannot start /usr/libexec/rtvisor-vmm: ENOENT", "publish status",
               "refuse failed: cannot start /usr/libexec/rtvisor-vmm: ENOENT"])
        #expect(vm.lifecycle.lastExit == ExitInfo(status: nil, signal: nil, reason: "cannot start /usr/libexec/rtvisor-vmm: ENOENT", at: vm.clock.wall))
    }

    @Test("the VMM crashes", arguments: Situation.allCases)
    func processExited(_ s: Situation) {
        var vm = s.make()
        let effects = vm.on(.processExited(pid: 100, outcome: .signaled(9), statusFile: nil))
        switch s {
        case .running, .paused:
            check(vm, effects, .restarting,
                  ["remove runtime files", "journal vm-failed error: VM web ended unexpectedly: \(Self.crash)",
                   "journal vm-restart-scheduled notice: VM web restarts in 100 ms (killed by signal 9; restart 1 of at most 2 in 60 s, policy \"on-failure\")",
                   "restart in 100 ms", "publish status"])
        case .stopping:
            check(vm, effects, .stopped, ["remove runtime files", "journal vm-stopped notice: VM web stopped on request: \(Self.crash)", "publish status"])
        case .stoppingForReboot:
            check(vm, effects, .starting,
                  ["remove runtime files", "journal vm-stopped notice: VM web rebooting on request: \(Self.crash)", "spawn (reboot requested)", "publish status"])
        case .stoppingForRemoval:
            check(vm, effects, .stopped,
                  ["remove runtime files", "forget VM", "remove VM directory",
                   "journal vm-stopped notice: VM web stopped and removed (its definition is gone): \(Self.crash)", "publish status"])
        // No process: nothing can have exited.
        case .stopped, .failed, .restarting, .starting: check(vm, effects, s, [])
        }
    }

    @Test("an exit report for a PID that is not the current VMM's is ignored", arguments: Situation.allCases)
    func foreignExit(_ s: Situation) {
        unchanged(s, .processExited(pid: 99, outcome: .exited(0), statusFile: VMMExitReport(status: VMMExitStatus(code: 0), reason: "guest powered off")))
    }

    @Test("the restart timer", arguments: Situation.allCases)
    func restartTimer(_ s: Situation) {
        var vm = s.make()
        // A timer of an earlier generation never does anything.
        unchanged(s, .restartTimerFired(generation: vm.generation - 1))
        let effects = vm.on(.restartTimerFired(generation: vm.generation))
        switch s {
        case .restarting: check(vm, effects, .starting, ["spawn (restart policy \"on-failure\")"])
        default: check(vm, effects, s, [])
        }
    }

    @Test("the stop escalation", arguments: Situation.allCases)
    func escalation(_ s: Situation) {
        var vm = s.make()
        unchanged(s, .escalationDue(pid: 100, generation: vm.generation - 1, signal: .terminate))
        unchanged(s, .escalationDue(pid: 99, generation: vm.generation, signal: .terminate))
        var kill = vm
        let effects = vm.on(.escalationDue(pid: 100, generation: vm.generation, signal: .terminate))
        let killEffects = kill.on(.escalationDue(pid: 100, generation: kill.generation, signal: .kill))
        if s.isStopping {
            check(vm, effects, s, ["journal vm-stopped warning: VM web did not stop in time: sending SIGTERM to PID 100", "SIGTERM to 100", "SIGKILL to 100 in 5.0 s"])
            check(kill, killEffects, s, ["journal vm-stopped warning: VM web did not stop in time: sending SIGKILL to PID 100", "SIGKILL to 100"])
        } else {
            check(vm, effects, s, [])
            check(kill, killEffects, s, [])
        }
    }

    @Test("reload removes the definition", arguments: Situation.allCases)
    func definitionRemoved(_ s: Situation) {
        var vm = s.make()
        let effects = vm.on(.definitionRemoved)
        switch s {
        // A graceful stop, then the VM is forgotten when the VMM has ended. A stop in progress
        // starts over as a removal.
        case .running, .paused, .stopping, .stoppingForReboot, .stoppingForRemoval:
            check(vm, effects, .stoppingForRemoval, Self.gracefulStop)
        case .stopped, .failed, .restarting, .starting:
            check(vm, effects, .stopped, ["forget VM", "remove VM directory", "journal vm-stopped notice: VM web removed (its definition is gone)"])
        }
    }

    @Test("the daemon stops", arguments: Situation.allCases)
    func daemonShutdown(_ s: Situation) {
        var vm = s.make()
        let effects = vm.on(.daemonShutdown)
        #expect(vm.lifecycle.daemonLeaving)
        switch s {
        // Every guest is asked to shut down; a reboot or removal in progress becomes a stop.
        case .running, .paused, .stopping, .stoppingForReboot, .stoppingForRemoval: check(vm, effects, .stopping, Self.gracefulStop)
        case .restarting: check(vm, effects, .stopped, [])
        case .stopped, .failed, .starting: check(vm, effects, s, [])
        }
    }

    @Test("every guest is shut down on request (rtvisor-guests.service stopping)", arguments: Situation.allCases)
    func shutdownRequested(_ s: Situation) {
        var vm = s.make()
        let effects = vm.on(.shutdownRequested)
        // The daemon stays: a VM started again afterwards keeps its restart policy.
        #expect(!vm.lifecycle.daemonLeaving)
        switch s {
        case .running, .paused:
            check(vm, effects, .stopping, Self.gracefulStop + ["reply shutdown stopping: asked the guest to shut down (Ctrl-Alt-Del); hard stop after 30 s"])
        case .stopping, .stoppingForRemoval: check(vm, effects, s, ["reply shutdown stopping: already stopping"])
        // A reset in progress (its SIGTERM already sent) ends as a stop: no VM comes back.
        case .stoppingForReboot: check(vm, effects, .stopping, ["reply shutdown stopping: was being reset: stays stopped"])
        case .restarting: check(vm, effects, .stopped, ["publish status", "reply shutdown stopped: pending restart cancelled"])
        // Not running: nothing to do, and no error (the request is for every VM).
        case .stopped, .failed, .starting: check(vm, effects, s, [])
        }
    }

    @Test("the daemon restarts (detaches)", arguments: Situation.allCases)
    func daemonDetach(_ s: Situation) {
        var vm = s.make()
        let before = vm.lifecycle
        #expect(vm.on(.daemonDetach) == [])
        #expect(vm.lifecycle.daemonLeaving && vm.lifecycle.phase == before.phase && vm.generation == before.generation)
    }

    @Test("autostart", arguments: Situation.allCases, [false, true])
    func autostart(_ s: Situation, addedByReload: Bool) {
        guard s == .stopped else { unchanged(s, .autostart(addedByReload: addedByReload)); return }
        var vm = s.make()
        check(&vm, on: .autostart(addedByReload: addedByReload), .starting,
              [addedByReload ? "spawn (added by reload, autostart)" : "spawn (autostart)"])
        // Unlike a start by hand, autostart keeps the restart history and the generation.
        #expect(vm.generation == 0)
    }

    @Test("reload changes the daemon settings", arguments: Situation.allCases)
    func settingsChanged(_ s: Situation) {
        var vm = s.make()
        let before = vm.lifecycle
        var new = F.settings
        new.stopTimeoutSeconds = 10
        new.restart.policy = .always
        #expect(vm.on(.settingsChanged(new)) == [])
        #expect(vm.lifecycle.phase == before.phase && vm.lifecycle.settings == new && vm.lifecycle.tracker.settings == new.restart)
        // The restart history survives a settings change.
        #expect(vm.lifecycle.tracker.recent == before.tracker.recent)
    }

    @Test("re-adoption at daemon start", arguments: Situation.allCases)
    func adopted(_ s: Situation) {
        let found = AdoptedVMM(process: F.process(300), startedAt: 1_600_000_000, restarts: 4, cgroup: "/sys/fs/cgroup/x/vm-web", frozen: false)
        let ended = VMEvent.foundEnded(found, statusFile: nil)
        guard s == .stopped else {
            unchanged(s, .adopted(found))
            unchanged(s, ended)
            return
        }
        var vm = s.make()
        check(&vm, on: .adopted(found), .running,
              ["journal vm-adopted notice: VM web re-adopted: rtvisor-vmm PID 300 kept running across the daemon restart", "watch 300 (not a child)"])
        #expect(vm.lifecycle.restarts == 4 && vm.lifecycle.since == 1_600_000_000 && vm.lifecycle.cgroup == "/sys/fs/cgroup/x/vm-web")
        vm = s.make()
        check(&vm, on: ended, .restarting,
              ["remove runtime files",
               "journal vm-failed error: VM web ended unexpectedly: ended, status unknown: ended while rtvisord was not its parent, without an exit status (killed)",
               "journal vm-restart-scheduled notice: VM web restarts in 100 ms (ended, status unknown; restart 1 of at most 2 in 60 s, policy \"on-failure\")",
               "restart in 100 ms", "publish status"])
        #expect(vm.lifecycle.restarts == 5)
    }

    @Test("a VMM process exists exactly while running, paused or stopping", arguments: Situation.allCases)
    func processInvariant(_ s: Situation) {
        let vm = s.make()
        #expect((vm.lifecycle.process != nil) == s.hasProcess)
        #expect((vm.lifecycle.process != nil) == [.running, .paused, .stopping].contains(vm.lifecycle.stateName))
    }
}
