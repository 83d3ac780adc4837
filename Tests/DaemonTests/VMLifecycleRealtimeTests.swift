import Config
import Daemon
import Testing
import VMMInterface

/// What becomes of a real-time VM's partition when its VMM ends (issue 16). Across a guest reset
/// the VMM leaves it in place (`--keep-realtime-partition-on-reset`) and the lifecycle hands it to
/// the VMM of the reboot: no `release real-time partition` effect, so the host's IRQ affinities and
/// cpusets are not undone and redone. Every other end (a stop, a failure, a reboot asked for by
/// hand, a changed definition, the daemon leaving) still undoes it, as before.
@Suite struct RealtimePartitionLifecycleTests {
    typealias F = LifecycleFixture
    static let release = "release real-time partition"
    static let reset = VMMExitReport(status: VMMExitStatus(code: 3), reason: "guest reset (reboot)")
    static let poweredOff = VMMExitReport(status: VMMExitStatus(code: 0), reason: "guest powered off")
    static let rebootJournal = "journal vm-stopped notice: VM web: guest rebooted, starting it again; its real-time partition stays in place for the next VMM"

    /// Real-time VM "web" (CPUs 2-3), running as PID 100.
    static func running() -> TestVM {
        var vm = TestVM(lifecycle: VMLifecycle(name: "web", definition: F.definition(realtime: true), since: 0))
        vm.on(.startRequested)
        vm.on(.processSpawned(F.process(100, realtime: true), cgroup: nil))
        #expect(vm.situation == .running)
        return vm
    }

    /// After five quick resets the sixth waits (`RebootThrottle`): the VM is `restarting`, with its
    /// partition kept and no VMM. Returns the VM and the pending timer's generation.
    static func waitingToReboot() -> (TestVM, Int) {
        var vm = running()
        var pid: Int32 = 100
        for _ in 0..<5 {
            vm.advance(seconds: 0.01)
            #expect(vm.on(.processExited(pid: pid, outcome: .exited(3), statusFile: reset)).contains("spawn (guest reboot)"))
            pid += 1
            vm.on(.processSpawned(F.process(pid, realtime: true), cgroup: nil))
        }
        vm.advance(seconds: 0.01)
        let effects = vm.effects(of: .processExited(pid: pid, outcome: .exited(3), statusFile: reset))
        #expect(!effects.map(\.description).contains(release))
        let timer = effects.compactMap { effect -> Int? in
            if case let .scheduleRestart(_, generation) = effect { return generation }
            return nil
        }.first
        #expect(vm.situation == .restarting && vm.lifecycle.keptPartition != nil && timer != nil)
        return (vm, timer ?? -1)
    }

    @Test func rtvisordAsksRealtimeVMMsOnlyToLeaveTheirPartitionOnReset() {
        let paths = DaemonPaths(definitions: "/etc/rtvisor/vms", run: "/run/rtvisor", vmm: "/usr/bin/rtvisor-vmm", apiSocket: "/run/rtvisor/api.sock")
        let flag = VMMLaunch.Flag.keepRealtimePartitionOnReset.long
        #expect(paths.vmmLaunch("rt", baseDirectory: "/etc/rtvisor/vms", cgroup: nil, latencyProbe: false, realtime: true).arguments.contains(flag))
        #expect(!paths.vmmLaunch("web", baseDirectory: "/etc/rtvisor/vms", cgroup: nil, latencyProbe: false).arguments.contains(flag))
    }

    @Test func aGuestResetHandsThePartitionToTheNextVMM() {
        var vm = Self.running()
        let exit = vm.on(.processExited(pid: 100, outcome: .exited(3), statusFile: Self.reset))
        #expect(exit == ["remove runtime files", Self.rebootJournal, "spawn (guest reboot)", "publish status"])
        #expect(vm.lifecycle.keptPartition == F.definition(realtime: true))
        let spawned = vm.on(.processSpawned(F.process(101, realtime: true), cgroup: nil))
        #expect(!spawned.contains(Self.release) && spawned.contains("apply housekeeping affinity"))
        // The new VMM holds it now: its own exit decides what becomes of it.
        #expect(vm.lifecycle.keptPartition == nil)
        #expect(vm.on(.stopRequested(force: false)).contains { $0.hasPrefix("reply stop") })
        #expect(vm.on(.processExited(pid: 101, outcome: .exited(0), statusFile: Self.poweredOff)).contains(Self.release))
    }

    @Test func aStopTearsThePartitionDown() {
        var vm = Self.running()
        vm.on(.stopRequested(force: false))
        let exit = vm.on(.processExited(pid: 100, outcome: .exited(0), statusFile: Self.poweredOff))
        #expect(exit.prefix(2) == ["remove runtime files", Self.release])
        #expect(vm.situation == .stopped && vm.lifecycle.keptPartition == nil)
    }

    /// The VMM leaves its partition on every reset; when no next VMM comes, the lifecycle undoes it.
    @Test func aResetDuringARequestedStopOrTheDaemonsShutdownTearsThePartitionDown() {
        for leave in [VMEvent.stopRequested(force: false), .daemonShutdown] {
            var vm = Self.running()
            vm.on(leave)
            let exit = vm.on(.processExited(pid: 100, outcome: .exited(3), statusFile: Self.reset))
            #expect(exit.contains(Self.release) && !exit.contains("spawn (guest reboot)"), "after \(leave): \(exit)")
            #expect(vm.situation == .stopped && vm.lifecycle.keptPartition == nil)
        }
    }

    @Test(arguments: [ExitOutcome.signaled(9), .exited(1), .exited(4)])
    func aFailureRestartTearsDownAndRebuilds(_ outcome: ExitOutcome) {
        var vm = Self.running()
        let exit = vm.effects(of: .processExited(pid: 100, outcome: outcome, statusFile: nil))
        #expect(exit.map(\.description).prefix(2) == ["remove runtime files", Self.release])
        #expect(vm.situation == .restarting && vm.lifecycle.keptPartition == nil)
        guard case let .scheduleRestart(ms, generation)? = exit.first(where: { if case .scheduleRestart = $0 { true } else { false } }) else {
            Issue.record("no restart scheduled: \(exit)"); return
        }
        vm.advance(seconds: Double(ms) / 1000)
        #expect(vm.on(.restartTimerFired(generation: generation)) == ["spawn (restart policy \"on-failure\")"])
    }

    @Test func aRebootAskedForByHandTearsDownAndRebuilds() {
        var vm = Self.running()
        vm.on(.rebootRequested)
        let exit = vm.on(.processExited(pid: 100, outcome: .signaled(15), statusFile: nil))
        let released = exit.firstIndex(of: Self.release), spawned = exit.firstIndex(of: "spawn (reboot requested)")
        #expect(released != nil && spawned != nil && released! < spawned!, "\(exit)")
    }

    @Test func aChangedDefinitionGetsANewPartition() {
        var vm = Self.running()
        var changed = F.definition(realtime: true)
        changed.memoryMiB *= 2
        #expect(vm.on(.definitionChanged(changed)) == [])
        let exit = vm.on(.processExited(pid: 100, outcome: .exited(3), statusFile: Self.reset))
        let released = exit.firstIndex(of: Self.release), spawned = exit.firstIndex(of: "spawn (guest reboot)")
        #expect(released != nil && spawned != nil && released! < spawned!, "\(exit)")
        #expect(vm.lifecycle.keptPartition == nil)
    }

    @Test func aChangeOfTheDaemonSettingsOnlyKeepsThePartition() {
        var vm = Self.running()
        var settings = F.settings
        settings.stopTimeoutSeconds = 7
        vm.on(.settingsChanged(settings))
        #expect(vm.on(.processExited(pid: 100, outcome: .exited(3), statusFile: Self.reset)) ==
                ["remove runtime files", Self.rebootJournal, "spawn (guest reboot)", "publish status"])
    }

    @Test func anOrdinaryVMHasNoPartitionToKeepOrRelease() {
        var vm = TestVM()
        vm.on(.startRequested)
        vm.on(.processSpawned(F.process(100), cgroup: nil))
        #expect(vm.on(.processExited(pid: 100, outcome: .exited(3), statusFile: Self.reset)) ==
                ["remove runtime files", "journal vm-stopped notice: VM web: guest rebooted, starting it again", "spawn (guest reboot)", "publish status"])
        #expect(vm.lifecycle.keptPartition == nil)
    }

    @Test func aDelayedRebootKeepsThePartitionForItsVMM() {
        var (vm, timer) = Self.waitingToReboot()
        vm.advance(seconds: 1)
        #expect(vm.on(.restartTimerFired(generation: timer)) == ["spawn (guest reboot)"])
        #expect(!vm.on(.processSpawned(F.process(200, realtime: true), cgroup: nil)).contains(Self.release))
        #expect(vm.lifecycle.keptPartition == nil)
    }

    @Test func aDelayedRebootWhoseVMMCannotStartTearsThePartitionDown() {
        var (vm, timer) = Self.waitingToReboot()
        vm.advance(seconds: 1)
        vm.on(.restartTimerFired(generation: timer))
        #expect(vm.on(.spawnFailed(reason: "cannot start /usr/libexec/rtvisor-vmm: ENOENT")).first == Self.release)
        #expect(vm.lifecycle.keptPartition == nil)
    }

    @Test func aDefinitionChangedDuringTheRebootDelayGetsANewPartition() {
        var (vm, timer) = Self.waitingToReboot()
        var changed = F.definition(realtime: true)
        changed.realtime?.cpus = [1]
        vm.on(.definitionChanged(changed))
        vm.advance(seconds: 1)
        #expect(vm.on(.restartTimerFired(generation: timer)) == [Self.release, "spawn (guest reboot)"])
    }

    enum WayOut: String, CaseIterable, CustomTestStringConvertible {
        case stop, startByHand, rebootByHand, definitionRemoved, daemonShutdown, daemonDetach
        var event: VMEvent {
            switch self {
            case .stop: .stopRequested(force: false)
            case .startByHand: .startRequested
            case .rebootByHand: .rebootRequested
            case .definitionRemoved: .definitionRemoved
            case .daemonShutdown: .daemonShutdown
            case .daemonDetach: .daemonDetach
            }
        }
        var testDescription: String { rawValue }
    }

    /// Between two VMMs only the reboot's own VMM may take the partition; whatever else happens
    /// meanwhile undoes it (a start by hand builds a new one).
    @Test(arguments: WayOut.allCases)
    func anythingButTheDelayedRebootTearsTheKeptPartitionDown(_ way: WayOut) {
        var (vm, timer) = Self.waitingToReboot()
        let effects = vm.on(way.event)
        #expect(effects.filter { $0 == Self.release }.count == 1, "\(effects)")
        #expect(vm.lifecycle.keptPartition == nil)
        if way == .startByHand || way == .rebootByHand {
            #expect(effects.firstIndex(of: Self.release)! < effects.firstIndex(of: "spawn (start requested)") ?? -1)
        }
        // The delay's timer, should it still fire, neither spawns nor releases again.
        #expect(!vm.on(.restartTimerFired(generation: timer)).contains(Self.release))
    }
}
