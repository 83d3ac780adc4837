import APIModels
import Config
import Daemon
import Testing
import VMMInterface

/// The races and policies that used to be testable only end to end, as event sequences.
@Suite("VM lifecycle: races and restart policy")
struct VMLifecycleScenarioTests {
    typealias F = LifecycleFixture
    static let poweredOff = VMMExitReport(status: VMMExitStatus(code: 0), reason: "guest powered off")

    @Test func rebootWhileStoppingIsRefusedAndTheStopStands() {
        var vm = Situation.stopping.make()
        #expect(vm.on(.rebootRequested) == ["refuse conflict: VM web is stopping"])
        let effects = vm.on(.processExited(pid: 100, outcome: .exited(0), statusFile: Self.poweredOff))
        #expect(effects.contains("journal vm-stopped notice: VM web stopped on request: exit status 0: guest powered off"))
        #expect(!effects.contains { $0.hasPrefix("spawn") })
        #expect(vm.situation == .stopped)
    }

    @Test func vmmExitDuringDaemonRestartIsNotRestarted() {
        var vm = Situation.running.make()
        vm.on(.daemonDetach)
        let effects = vm.on(.processExited(pid: 100, outcome: .signaled(9), statusFile: nil))
        #expect(effects == ["remove runtime files",
                            "journal vm-stopped notice: VM web ended during daemon shutdown: killed by signal 9: rtvisor-vmm killed by signal 9",
                            "publish status"])
        #expect(vm.situation == .stopped)
        // The policy was not asked: no restart counted.
        #expect(vm.lifecycle.tracker.recent.isEmpty && vm.lifecycle.restarts == 0)
    }

    @Test func restartTimerAfterDaemonDetachDoesNothing() {
        var vm = Situation.restarting.make()
        let generation = vm.generation
        vm.on(.daemonDetach)
        #expect(vm.on(.restartTimerFired(generation: generation)) == [])
        #expect(vm.situation == .restarting)
    }

    @Test func stopDuringRestartBackoffCancelsTheRestart() {
        var vm = Situation.running.make()
        let crash = vm.effects(of: .processExited(pid: 100, outcome: .exited(1), statusFile: VMMExitReport(status: VMMExitStatus(code: 1), reason: "KVM_RUN failed")))
        guard let timer = crash.compactMap({ if case let .scheduleRestart(_, g) = $0 { g } else { nil } }).first else {
            Issue.record("no restart scheduled: \(crash)"); return
        }
        #expect(vm.on(.stopRequested(force: false)) == ["publish status", "reply stop stopped: pending restart cancelled"])
        #expect(vm.on(.restartTimerFired(generation: timer)) == [])
        #expect(vm.situation == .stopped)
    }

    @Test func reloadRemovingARunningVMStopsItGracefullyThenForgetsIt() {
        var vm = Situation.running.make()
        let stop = vm.effects(of: .definitionRemoved)
        #expect(stop.contains(.signal(pid: 100, .ctrlAltDel)))
        #expect(stop.contains(.scheduleEscalation(pid: 100, generation: vm.generation, afterSeconds: 30, signal: .terminate)))
        // The guest ignores Ctrl-Alt-Del: SIGTERM, then SIGKILL.
        #expect(vm.on(.escalationDue(pid: 100, generation: vm.generation, signal: .terminate)).contains("SIGTERM to 100"))
        #expect(vm.on(.escalationDue(pid: 100, generation: vm.generation, signal: .kill)).contains("SIGKILL to 100"))
        let end = vm.on(.processExited(pid: 100, outcome: .signaled(9), statusFile: nil))
        #expect(end == ["remove runtime files", "forget VM", "remove VM directory",
                        "journal vm-stopped notice: VM web stopped and removed (its definition is gone): killed by signal 9: rtvisor-vmm killed by signal 9",
                        "publish status"])
    }

    @Test func staleTimersAndEscalationsFromAnOlderGenerationDoNothing() {
        var vm = Situation.running.make()
        let effects = vm.effects(of: .stopRequested(force: false))
        guard case let .scheduleEscalation(_, stopGeneration, _, _)? = effects.first(where: { if case .scheduleEscalation = $0 { true } else { false } }) else {
            Issue.record("no escalation scheduled: \(effects)"); return
        }
        vm.on(.processExited(pid: 100, outcome: .exited(0), statusFile: Self.poweredOff))
        vm.on(.startRequested)
        // The new VMM got the same PID (pid reuse): the old stop's escalation must not hit it.
        vm.on(.processSpawned(F.process(100), cgroup: nil))
        #expect(vm.on(.escalationDue(pid: 100, generation: stopGeneration, signal: .terminate)) == [])
        #expect(vm.on(.escalationDue(pid: 100, generation: stopGeneration, signal: .kill)) == [])
        #expect(vm.situation == .running)

        // A restart timer outlived by a start by hand.
        var restarting = Situation.restarting.make()
        let timer = restarting.generation
        restarting.on(.startRequested)
        restarting.on(.processSpawned(F.process(200), cgroup: nil))
        #expect(restarting.on(.restartTimerFired(generation: timer)) == [])
        #expect(restarting.lifecycle.process?.pid == 200)
    }

    @Test func exitOfAPreviousVMMIsIgnored() {
        var vm = Situation.stoppingForReboot.make()
        vm.on(.processExited(pid: 100, outcome: .signaled(15), statusFile: nil))
        vm.on(.processSpawned(F.process(200), cgroup: nil))
        // A late second report about PID 100 must not end VMM 200.
        #expect(vm.on(.processExited(pid: 100, outcome: .signaled(15), statusFile: nil)) == [])
        #expect(vm.lifecycle.process?.pid == 200 && vm.situation == .running)
    }

    /// A running VM whose restart policy a reload changed to `policy`.
    static func running(under policy: RestartPolicyKind) -> TestVM {
        var vm = Situation.running.make()
        var settings = F.settings
        settings.restart.policy = policy
        vm.on(.settingsChanged(settings))
        return vm
    }

    @Test(arguments: [RestartPolicyKind.no, .onFailure, .always])
    func guestResetRestartsAtOnceUnderEveryPolicy(_ policy: RestartPolicyKind) {
        var vm = Self.running(under: policy)
        let effects = vm.on(.processExited(pid: 100, outcome: .exited(3), statusFile: Self.reset))
        #expect(effects == ["remove runtime files", "journal vm-stopped notice: VM web: guest rebooted, starting it again", "spawn (guest reboot)", "publish status"])
        #expect(vm.lifecycle.restarts == 1)
        // A reset is not a failure: the restart window stays empty.
        #expect(vm.lifecycle.tracker.recent.isEmpty)
        #expect(vm.on(.processSpawned(F.process(101), cgroup: nil)).contains("journal vm-started notice: VM web started (guest reboot): rtvisor-vmm PID 101"))
    }

    static let reset = VMMExitReport(status: VMMExitStatus(code: 3), reason: "guest reset")

    /// The guest resets `count` times, each run `uptime` seconds long; every exit's effects. A
    /// delayed restart's timer fires after its delay.
    static func resetLoop(_ vm: inout TestVM, pid: inout Int32, count: Int, uptime: Double) -> [[String]] {
        var all: [[String]] = []
        for _ in 0..<count {
            vm.advance(seconds: uptime)
            let effects = vm.effects(of: .processExited(pid: pid, outcome: .exited(3), statusFile: reset))
            all.append(effects.map(\.description))
            if case let .scheduleRestart(ms, generation)? = effects.first(where: { if case .scheduleRestart = $0 { true } else { false } }) {
                #expect(vm.situation == .restarting)
                vm.advance(seconds: Double(ms) / 1000)
                #expect(vm.on(.restartTimerFired(generation: generation)) == ["spawn (guest reboot)"])
            }
            pid += 1
            #expect(vm.on(.processSpawned(F.process(pid), cgroup: nil)).contains("journal vm-started notice: VM web started (guest reboot): rtvisor-vmm PID \(pid)"))
        }
        return all
    }

    @Test(arguments: [RestartPolicyKind.no, .onFailure, .always])
    func guestResetLoopIsDelayedAfterTheBurstUnderEveryPolicy(_ policy: RestartPolicyKind) {
        var vm = Self.running(under: policy)
        var pid: Int32 = 100
        let burst = Self.resetLoop(&vm, pid: &pid, count: 5, uptime: 0.01)
        #expect(burst.allSatisfy { $0 == ["remove runtime files", "journal vm-stopped notice: VM web: guest rebooted, starting it again",
                                           "spawn (guest reboot)", "publish status"] })
        let delayed = Self.resetLoop(&vm, pid: &pid, count: 3, uptime: 0.01)
        let why = "guest reboot loop: more than 5 reboots within 60 s and not 60 s up since"
        #expect(delayed[0] == ["remove runtime files",
                               "journal vm-restart-scheduled warning: VM web: guest rebooted, starting it again in 1000 ms (\(why); delayed reboot 1, delays double up to 60000 ms)",
                               "restart in 1000 ms", "publish status"])
        #expect(delayed[1].contains("restart in 2000 ms") && delayed[2].contains("restart in 4000 ms"))
        // Reboots, not failures: counted as restarts, never against the restart limit (2).
        #expect(vm.lifecycle.restarts == 8 && vm.lifecycle.tracker.recent.isEmpty && vm.situation == .running)
    }

    @Test func delayedRebootEntryCarriesTheDelayAndThePID() {
        var vm = Situation.running.make()
        var pid: Int32 = 100
        _ = Self.resetLoop(&vm, pid: &pid, count: 5, uptime: 0.01)
        let effects = vm.effects(of: .processExited(pid: pid, outcome: .exited(3), statusFile: Self.reset))
        #expect(effects.contains(.journal(VMJournalEntry(
            .vmRestartScheduled, .warning,
            "VM web: guest rebooted, starting it again in 1000 ms (guest reboot loop: more than 5 reboots within 60 s and not 60 s up since; delayed reboot 1, delays double up to 60000 ms)",
            pid: pid, state: .restarting, exitReason: "guest reset", extra: ["RESTART_DELAY_MS": "1000"]))))
        #expect(vm.lifecycle.stateName == .restarting)
    }

    @Test func occasionalGuestRebootsRestartAtOnce() {
        var vm = Situation.running.make()
        var pid: Int32 = 100
        // A reboot every 20 s for ten minutes: three a minute, never a loop.
        let exits = Self.resetLoop(&vm, pid: &pid, count: 30, uptime: 20)
        #expect(exits.allSatisfy { $0.contains("spawn (guest reboot)") && !$0.contains { $0.hasPrefix("restart in") } })
    }

    @Test func aGuestThatStaysUpAMinuteRebootsAtOnceAgain() {
        var vm = Situation.running.make()
        var pid: Int32 = 100
        let loop = Self.resetLoop(&vm, pid: &pid, count: 7, uptime: 0.01)
        #expect(loop[6].contains("restart in 2000 ms"))
        // Up 61 s, then two quick reboots: at once (the history is forgotten, the burst is free).
        let after = Self.resetLoop(&vm, pid: &pid, count: 1, uptime: 61) + Self.resetLoop(&vm, pid: &pid, count: 2, uptime: 0.01)
        #expect(after.allSatisfy { $0.contains("spawn (guest reboot)") })
    }

    @Test func stopDuringARebootDelayCancelsIt() {
        var vm = Situation.running.make()
        var pid: Int32 = 100
        _ = Self.resetLoop(&vm, pid: &pid, count: 5, uptime: 0.01)
        let effects = vm.effects(of: .processExited(pid: pid, outcome: .exited(3), statusFile: Self.reset))
        guard case let .scheduleRestart(_, timer)? = effects.first(where: { if case .scheduleRestart = $0 { true } else { false } }) else {
            Issue.record("no delayed reboot: \(effects)"); return
        }
        #expect(vm.on(.stopRequested(force: false)) == ["publish status", "reply stop stopped: pending restart cancelled"])
        #expect(vm.on(.restartTimerFired(generation: timer)) == [])
        // A start by hand forgets the loop: the next reset is at once.
        vm.on(.startRequested)
        vm.on(.processSpawned(F.process(300), cgroup: nil))
        #expect(vm.on(.processExited(pid: 300, outcome: .exited(3), statusFile: Self.reset)).contains("spawn (guest reboot)"))
    }

    @Test func policyGivesUpAfterTheLimitAndAStartByHandForgetsIt() {
        var vm = Situation.running.make()
        var pid: Int32 = 100
        func crashAndRestart() {
            vm.on(.processExited(pid: pid, outcome: .signaled(11), statusFile: nil))
            #expect(vm.situation == .restarting)
            vm.on(.restartTimerFired(generation: vm.generation))
            pid += 1
            vm.on(.processSpawned(F.process(pid), cgroup: nil))
            vm.advance(seconds: 1)
        }
        crashAndRestart()
        crashAndRestart()
        let last = vm.on(.processExited(pid: pid, outcome: .signaled(11), statusFile: nil))
        #expect(last == ["remove runtime files",
                         "journal vm-restart-limit error: VM web failed and will not be restarted: killed by signal 11; restart limit reached (2 in 60 s)",
                         "publish status"])
        #expect(vm.situation == .failed && vm.lifecycle.restarts == 2)
        vm.on(.startRequested)
        #expect(vm.lifecycle.tracker.recent.isEmpty)
    }

    @Test func backoffDoublesBetweenRestarts() {
        var vm = Situation.running.make()
        let first = vm.effects(of: .processExited(pid: 100, outcome: .exited(1), statusFile: nil))
        #expect(first.contains(.scheduleRestart(afterMs: 100, generation: vm.generation)))
        vm.on(.restartTimerFired(generation: vm.generation))
        vm.on(.processSpawned(F.process(101), cgroup: nil))
        let second = vm.effects(of: .processExited(pid: 101, outcome: .exited(1), statusFile: nil))
        #expect(second.contains(.scheduleRestart(afterMs: 200, generation: vm.generation)))
    }

    @Test func powerOffUnderOnFailureStaysStopped() {
        var vm = Situation.running.make()
        #expect(vm.on(.processExited(pid: 100, outcome: .exited(0), statusFile: Self.poweredOff)) ==
                ["remove runtime files", "journal vm-stopped notice: VM web stopped: exit status 0: guest powered off (guest powered off)", "publish status"])
        #expect(vm.situation == .stopped)
        #expect(vm.lifecycle.lastExit == ExitInfo(status: 0, signal: nil, reason: "guest powered off", at: vm.clock.wall))
    }

    @Test func failureUnderPolicyNoLeavesTheVMFailed() {
        var vm = Self.running(under: .no)
        #expect(vm.on(.processExited(pid: 100, outcome: .exited(1), statusFile: VMMExitReport(status: VMMExitStatus(code: 1), reason: "KVM_RUN failed"))) ==
                ["remove runtime files", "journal vm-failed error: VM web failed: exit status 1: KVM_RUN failed (exit status 1; restart policy \"no\")", "publish status"])
        #expect(vm.situation == .failed)
    }

    @Test func seccompKillNamesTheSyscall() {
        var vm = Situation.running.make()
        let report = VMMExitReport(status: VMMExitStatus(code: 159), reason: "seccomp: thread vcpu0 made forbidden syscall 41 (socket)")
        let effects = vm.effects(of: .processExited(pid: 100, outcome: .signaled(31), statusFile: report))
        let reason = "rtvisor-vmm killed by signal 31 (SIGSYS): seccomp: thread vcpu0 made forbidden syscall 41 (socket)"
        #expect(vm.lifecycle.lastExit == ExitInfo(status: nil, signal: 31, reason: reason, at: vm.clock.wall))
        #expect(effects.contains(.journal(VMJournalEntry(.vmFailed, .error, "VM web ended unexpectedly: killed by signal 31: \(reason)",
                                                          pid: 100, state: .restarting, exitReason: reason))))
    }

    @Test func restartScheduledEntryCarriesTheDelayButNoPID() {
        var vm = Situation.running.make()
        let effects = vm.effects(of: .processExited(pid: 100, outcome: .signaled(9), statusFile: nil))
        #expect(effects.contains(.journal(VMJournalEntry(
            .vmRestartScheduled, .notice, "VM web restarts in 100 ms (killed by signal 9; restart 1 of at most 2 in 60 s, policy \"on-failure\")",
            state: .restarting, exitReason: "rtvisor-vmm killed by signal 9", extra: ["RESTART_DELAY_MS": "100"]))))
    }

    @Test func startedEntryNamesTheCgroup() {
        var vm = Situation.starting.make()
        let effects = vm.effects(of: .processSpawned(F.process(100), cgroup: nil))
        #expect(effects.contains(.journal(VMJournalEntry(.vmStarted, .notice, "VM web started (start requested): rtvisor-vmm PID 100",
                                                          pid: 100, state: .running, extra: ["VM_CGROUP": ""]))))
    }

    @Test func realTimeVMConfinesHousekeepingAtStartAndReleasesItsPartitionAtExit() {
        var vm = Situation.starting.make()
        #expect(vm.on(.processSpawned(F.process(100, realtime: true), cgroup: nil)).contains("apply housekeeping affinity"))
        let exit = vm.on(.processExited(pid: 100, outcome: .signaled(9), statusFile: nil))
        #expect(Array(exit.prefix(2)) == ["remove runtime files", "release real-time partition"])
    }

    @Test func rebootKeepsRestartsCountingAndStartsWithTheNewGeneration() {
        var vm = Situation.stoppingForReboot.make()
        let stopGeneration = vm.generation
        vm.on(.processExited(pid: 100, outcome: .signaled(15), statusFile: nil))
        #expect(vm.lifecycle.restarts == 1)
        #expect(vm.on(.processSpawned(F.process(101), cgroup: nil)).first == "write state file")
        #expect(vm.generation > stopGeneration)
    }

    @Test func daemonShutdownTurnsARebootInProgressIntoAStop() {
        var vm = Situation.stoppingForReboot.make()
        vm.on(.daemonShutdown)
        #expect(vm.situation == .stopping)
        let effects = vm.on(.processExited(pid: 100, outcome: .exited(0), statusFile: Self.poweredOff))
        #expect(effects.contains("journal vm-stopped notice: VM web stopped on request: exit status 0: guest powered off"))
    }

    @Test func aGuestShutdownKeepsTheRestartPolicyForVMsStartedAgain() {
        var vm = Situation.stoppingForReboot.make()
        vm.on(.shutdownRequested)
        // The reset's VMM ends and the VM stays stopped, as shut down.
        #expect(vm.on(.processExited(pid: 100, outcome: .exited(0), statusFile: Self.poweredOff)).contains(
            "journal vm-stopped notice: VM web stopped on request: exit status 0: guest powered off"))
        #expect(vm.situation == .stopped)
        // Started again by hand, a crash is restarted per policy (unlike after a daemon shutdown).
        vm.on(.startRequested)
        vm.on(.processSpawned(F.process(200), cgroup: nil))
        vm.on(.processExited(pid: 200, outcome: .signaled(9), statusFile: nil))
        #expect(vm.situation == .restarting)
    }

    @Test func anExitAfterDaemonShutdownIsLoggedAsSuch() {
        var vm = Situation.restarting.make()
        vm.on(.daemonShutdown)
        #expect(vm.situation == .stopped)
        // A VM started by hand during the shutdown is not restarted when it ends.
        vm.on(.startRequested)
        vm.on(.processSpawned(F.process(200), cgroup: nil))
        #expect(vm.on(.processExited(pid: 200, outcome: .signaled(9), statusFile: nil)).contains(
            "journal vm-stopped notice: VM web ended during daemon shutdown: killed by signal 9: rtvisor-vmm killed by signal 9"))
    }

    @Test func adoptedFrozenVMMIsPausedAndAStopWakesItFirst() {
        var vm = TestVM()
        vm.on(.adopted(AdoptedVMM(process: F.process(300), startedAt: 5, restarts: 0, cgroup: nil, frozen: true)))
        #expect(vm.situation == .paused)
        #expect(vm.on(.stopRequested(force: true)).prefix(2) == ["SIGCONT to 300 if stopped", "SIGTERM to 300"])
    }

    @Test func unwatchedVMMThatLeftAStatusFileIsJudgedByIt() {
        var vm = TestVM()
        let found = AdoptedVMM(process: F.process(300), startedAt: 5, restarts: 2, cgroup: nil, frozen: false)
        #expect(vm.on(.foundEnded(found, statusFile: Self.poweredOff)) ==
                ["remove runtime files", "journal vm-stopped notice: VM web stopped: exit status 0: guest powered off (guest powered off)", "publish status"])
        #expect(vm.lifecycle.lastExit?.status == 0 && vm.lifecycle.restarts == 2)
    }

    @Test func settingsChangeAppliesToTheNextStop() {
        var vm = Situation.running.make()
        var settings = F.settings
        settings.stopTimeoutSeconds = 7
        vm.on(.settingsChanged(settings))
        #expect(vm.on(.stopRequested(force: false)).contains("reply stop stopping: asked the guest to shut down (Ctrl-Alt-Del); hard stop after 7 s"))
    }
}
