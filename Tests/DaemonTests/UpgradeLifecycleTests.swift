import APIModels
import Daemon
import Testing
import VMMInterface

/// A same-host upgrade in the lifecycle (docs/migration.md, "Upgrading the VMM"): the VM stays
/// running while a new VMM takes it over, and exactly one VMM is its process at any time.
@Suite struct UpgradeLifecycleTests {
    static let migrated = ExitOutcome.exited(VMMExitStatus.migrated.code)
    static let report = VMMExitReport(status: .migrated, reason: "migrated to another VMM")

    @Test func theNewVMMBecomesTheProcessWhenTheOldOneEndsMigrated() {
        var vm = Situation.running.make()
        #expect(vm.on(.upgradeStarted(pid: 100, target: LifecycleFixture.process(200))) == [])
        #expect(vm.lifecycle.stateName == .running && vm.lifecycle.process?.pid == 100, "running under the old VMM meanwhile")
        let effects = vm.on(.processExited(pid: 100, outcome: Self.migrated, statusFile: Self.report))
        #expect(effects == ["finish upgrade to 200", "write state file", "watch 200",
                            "journal vm-upgraded notice: VM web moved to a new rtvisor-vmm: PID 100 → 200, the guest ran on", "publish status"])
        #expect(vm.situation == .running && vm.lifecycle.process?.pid == 200 && vm.lifecycle.lastExit == nil)
        // The new VMM's own exit is an ordinary one from now on.
        let after = vm.on(.processExited(pid: 200, outcome: .exited(0), statusFile: nil))
        #expect(vm.situation == .stopped && after.contains("remove runtime files"), "\(after)")
    }

    /// A VMM re-adopted after a daemon restart is not rtvisord's child: its exit status is known
    /// only from its exit report.
    @Test func aReadoptedOldVMMHandsOverByItsExitReport() {
        var vm = Situation.running.make()
        vm.on(.upgradeStarted(pid: 100, target: LifecycleFixture.process(200)))
        let effects = vm.on(.processExited(pid: 100, outcome: .unknown, statusFile: Self.report))
        #expect(effects.first == "finish upgrade to 200" && vm.lifecycle.process?.pid == 200, "\(effects)")
    }

    @Test func anOldVMMThatDiesOtherwiseEndsTheVMAsUsualAndTheUpgradeWithIt() {
        var vm = Situation.running.make()
        vm.on(.upgradeStarted(pid: 100, target: LifecycleFixture.process(200)))
        let effects = vm.on(.processExited(pid: 100, outcome: .signaled(9), statusFile: nil))
        #expect(!effects.contains("watch 200") && vm.lifecycle.process?.pid != 200, "\(effects)")
        #expect(vm.lifecycle.upgrading == nil)
    }

    @Test func aConfirmedTargetTakesOverWhateverTheOldVMMsExit() {
        var vm = Situation.running.make()
        vm.on(.upgradeStarted(pid: 100, target: LifecycleFixture.process(200)))
        #expect(vm.on(.upgradeConfirmed(targetPID: 999)) == [], "another process's confirmation changes nothing")
        #expect(vm.on(.upgradeConfirmed(targetPID: 200)) == ["SIGKILL to 100"], "the old VMM, paused with an unknown outcome, is ended")
        let effects = vm.on(.processExited(pid: 100, outcome: .signaled(9), statusFile: nil))
        #expect(effects.first == "finish upgrade to 200" && vm.lifecycle.process?.pid == 200, "\(effects)")
    }

    @Test func anAbandonedUpgradeLeavesTheOldVMMInCharge() {
        var vm = Situation.running.make()
        vm.on(.upgradeStarted(pid: 100, target: LifecycleFixture.process(200)))
        #expect(vm.on(.upgradeAbandoned(targetPID: 200)) == [])
        #expect(vm.lifecycle.upgrading == nil)
        let effects = vm.on(.processExited(pid: 100, outcome: Self.migrated, statusFile: Self.report))
        #expect(vm.lifecycle.stateName == .migrated && !effects.contains("watch 200"), "\(effects)")
    }

    @Test func onlyARunningVMWithoutAnotherUpgradeCanBeUpgraded() {
        for situation in Situation.allCases where situation != .running {
            var vm = situation.make()
            let effects = vm.on(.upgradeStarted(pid: 100, target: LifecycleFixture.process(200)))
            #expect(effects.first?.hasPrefix("refuse conflict: VM web is") == true, "\(situation): \(effects)")
        }
        var vm = Situation.running.make()
        vm.on(.upgradeStarted(pid: 100, target: LifecycleFixture.process(200)))
        #expect(vm.on(.upgradeStarted(pid: 100, target: LifecycleFixture.process(300))).first == "refuse conflict: VM web is running and being upgraded: it cannot be upgraded now")
    }
}

/// The new VMM of an upgrade takes the stream on fd 3 and keeps its sockets and exit report
/// apart from the old VMM's until it runs the guest.
@Suite struct UpgradeLaunchTests {
    @Test func theNewVMMHasItsOwnSocketsAndReportUntilItTakesOver() {
        let paths = DaemonPaths(definitions: "/etc/rtvisor/vms", run: "/run/rtvisor", vmm: "/usr/bin/rtvisor-vmm", apiSocket: "/run/rtvisor/api.sock")
        let launch = paths.vmmLaunch("web", baseDirectory: "/etc/rtvisor/vms", cgroup: nil, latencyProbe: false, upgrade: true)
        #expect(launch.incoming == "fd:3" && launch.incomingConfig == nil)
        #expect(launch.controlSocket == "/run/rtvisor/vms/web/control.sock.upgrade")
        #expect(launch.consoleSocket == "/run/rtvisor/vms/web/console.sock.upgrade")
        #expect(launch.statusFile == "/run/rtvisor/vms/web/exit-status.upgrade")
        #expect(paths.upgradeFiles("web").map(paths.upgradePath) == [launch.controlSocket, launch.consoleSocket, launch.statusFile])
        #expect(launch.definition == paths.definitionCopy("web"), "the definition the old VMM runs")
    }
}
