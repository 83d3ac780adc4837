import APIModels
import Config
import Daemon
import Foundation
import Logging
import Testing
import TestSupport
import VMMInterface

/// Exit status 8 (`savedAndStopped`: `rtvisorctl snapshot --stop`) and VMs started to resume a
/// snapshot, in the pure lifecycle.
@Suite struct SnapshotLifecycleTests {
    static let saved = ExitOutcome.exited(VMMExitStatus.savedAndStopped.code)

    @Test func savedAndStoppedIsADeliberateStopUnderEveryPolicy() {
        for policy in RestartPolicyKind.allCases {
            var t = RestartTracker(settings: RestartSettings(policy: policy, limit: 1, windowSeconds: 60, backoffMs: 100, backoffMaxMs: 1000))
            for i in 0..<3 { #expect(t.decide(Self.saved, now: Double(i)) == .stay(reason: "saved to a snapshot and stopped on request"), "\(policy)") }
            // Not counted against the restart limit either.
            #expect(t.recent.isEmpty)
        }
        #expect(Self.saved.isDeliberateStop && !Self.saved.isPowerOff && !ExitOutcome.exited(1).isDeliberateStop)
    }

    /// A running VM (policy on-failure) whose VMM exits 8: stopped, not failed, not restarted.
    @Test func aVMSavedAndStoppedStaysStopped() {
        var vm = Situation.running.make()
        let effects = vm.on(.processExited(pid: 100, outcome: Self.saved, statusFile: VMMExitReport(status: .savedAndStopped, reason: "saved to a snapshot and stopped")))
        #expect(vm.situation == .stopped)
        #expect(vm.lifecycle.stateName == .stopped)
        #expect(!effects.contains { $0.hasPrefix("spawn") || $0.hasPrefix("restart in") }, "\(effects)")
        #expect(effects.contains("journal vm-stopped notice: VM web stopped: exit status 8: saved to a snapshot and stopped (saved to a snapshot and stopped on request)"),
                "\(effects)")
    }

    static let source = RestoreSource(directory: "/var/lib/rtvisor/snapshots/web/20261206T021500Z")

    @Test func aRestoreSpawnsAVMMThatResumesTheSnapshot() {
        var vm = Situation.stopped.make()
        #expect(vm.on(.restoreRequested(Self.source)) == ["spawn (restoring snapshot \(Self.source.directory))"])
        let effects = vm.on(.processSpawned(LifecycleFixture.process(100), cgroup: nil))
        #expect(effects.last == "reply restore running: restoring from \(Self.source.directory), PID 100")
        #expect(vm.lifecycle.restoring == RestoringVMM(pid: 100, source: Self.source))
        #expect(vm.on(.restoreConfirmed(pid: 99)) == [])
        #expect(vm.on(.restoreConfirmed(pid: 100)) == ["journal vm-restored notice: VM web resumed from snapshot \(Self.source.directory) (rtvisor-vmm PID 100)"])
        #expect(vm.lifecycle.restoring == nil)
        // Once resumed, it is an ordinary running VM: a crash is restarted (a normal boot).
        let crash = vm.on(.processExited(pid: 100, outcome: .signaled(9), statusFile: nil))
        #expect(crash.contains("restart in 100 ms"), "\(crash)")
    }

    /// The VMM refused the snapshot (it ends before serving its control socket): the VM is
    /// failed with the VMM's reason and never restarted, even under `always`.
    @Test func aRefusedRestoreIsNotRestarted() {
        var vm = Situation.stopped.make()
        var always = LifecycleFixture.definition()
        always.daemon.restart.policy = .always
        vm.on(.definitionChanged(always))
        vm.on(.restoreRequested(Self.source))
        vm.on(.processSpawned(LifecycleFixture.process(100), cgroup: nil))
        let reason = "snapshot \(Self.source.directory): /x/state: checksum mismatch (stored 0x1, computed 0x2): the file is corrupted"
        let effects = vm.on(.processExited(pid: 100, outcome: .exited(1), statusFile: VMMExitReport(status: .vmmError, reason: reason)))
        #expect(vm.situation == .failed)
        #expect(vm.lifecycle.lastExit?.reason == reason)
        #expect(!effects.contains { $0.hasPrefix("spawn") || $0.hasPrefix("restart in") }, "\(effects)")
        #expect(effects.contains("journal vm-failed error: VM web could not be restored from \(Self.source.directory): exit status 1: \(reason)"))
    }

    @Test func aRunningVMIsNotRestoredOver() {
        for s in [Situation.running, .paused, .stopping, .restarting] {
            var vm = s.make()
            #expect(vm.on(.restoreRequested(Self.source)).first?.hasPrefix("refuse conflict: VM web is ") == true, "\(s)")
        }
        var failed = Situation.failed.make()
        #expect(failed.on(.restoreRequested(Self.source)).first?.hasPrefix("spawn") == true)
    }

    @Test func everyVMMGetsAControlSocketAndARestoreGetsItsSnapshot() {
        let paths = DaemonPaths(definitions: "/etc/rtvisor/vms", run: "/run/rtvisor", vmm: "/usr/bin/rtvisor-vmm", apiSocket: "/run/rtvisor/api.sock")
        let plain = paths.vmmLaunch("web", baseDirectory: "/etc/rtvisor/vms", cgroup: nil, latencyProbe: false)
        #expect(plain.controlSocket == "/run/rtvisor/vms/web/control.sock" && plain.restore == nil)
        let restored = paths.vmmLaunch("web", baseDirectory: "/etc/rtvisor/vms", cgroup: nil, latencyProbe: false,
                                       restore: RestoreSource(directory: "/s", memory: .map))
        #expect(Array(restored.arguments.suffix(6)) == ["--restore", "/s", "--restore-memory", "map", "--control-socket", "/run/rtvisor/vms/web/control.sock"])
        #expect(paths.snapshots == "/var/lib/rtvisor/snapshots" && paths.clones == "/var/lib/rtvisor/clones")
    }
}

/// The Supervisor restoring with a fake VMM (a shell script) that refuses every snapshot the
/// way rtvisor-vmm does: its reason in the exit-status file, exit status 1.
@Suite struct SupervisorRestoreTests {
    struct Fixture {
        let supervisor: Supervisor
        let definitions: String
        let base: String
    }

    func make() throws -> Fixture {
        let base = try makeTemporaryDirectory("rtvisord-restore")
        let definitions = base + "/vms"
        try FileManager.default.createDirectory(atPath: definitions, withIntermediateDirectories: true)
        let kernel = try makeKernel(in: base)
        try write(definitionJSON(name: "busy", kernel: kernel, memory: 16), to: definitions + "/busy.json")
        try write(definitionJSON(name: "bigger", kernel: kernel, memory: 64), to: definitions + "/bigger.json")
        let script = base + "/fake-vmm"
        try write("""
            #!/bin/sh
            status=""; restore=""
            while [ $# -gt 0 ]; do
              case "$1" in --status-file) status="$2";; --restore) restore="$2";; esac
              shift
            done
            if [ -n "$restore" ]; then
              echo "1 snapshot $restore: saved on a host whose CPUID differs from this one's (fake)" > "$status"
              exit 1
            fi
            exec sleep 3600
            """, to: script)
        chmod(script, 0o755)
        let paths = DaemonPaths(definitions: definitions, run: base + "/run", vmm: script, apiSocket: base + "/run/api.sock", state: base + "/state")
        let supervisor = Supervisor(paths: paths, logger: Logger(label: "restore-test") { _ in SwiftLogNoOpLogHandler() },
                                    cgroups: CgroupPlacement(procSelfCgroup: nil), version: "test") { _ in }
        return Fixture(supervisor: supervisor, definitions: definitions, base: base)
    }

    func restoreError(_ s: Supervisor, _ request: RestoreRequest) async -> ControlError? {
        do { _ = try await s.restore(request); return nil } catch { return error }
    }

    @Test func theVMMsRefusalReachesTheCallerAndNothingIsLeft() async throws {
        let f = try make()
        await f.supervisor.bootstrap()
        let made = try SnapshotFixture.make(in: f.base, name: "web")
        let error = await restoreError(f.supervisor, RestoreRequest(directory: made.directory, name: "copy"))
        #expect(error == .failed("VM copy could not be restored from \(made.directory): snapshot \(made.directory): saved on a host whose CPUID differs from this one's (fake)"))
        // The definition installed for it is gone again, and so is the VM.
        #expect(!FileManager.default.fileExists(atPath: f.definitions + "/copy.json"))
        #expect(await f.supervisor.list().vms.map(\.name) == ["bigger", "busy"])
    }

    @Test func namesInUseAndOtherMachinesAreRefusedBeforeAnythingStarts() async throws {
        let f = try make()
        await f.supervisor.bootstrap()
        _ = try await f.supervisor.start("busy")
        let made = try SnapshotFixture.make(in: f.base, name: "web")
        #expect(await restoreError(f.supervisor, RestoreRequest(directory: made.directory, name: "busy"))
            == .conflict("VM busy is running: stop it first, or restore under another name (--name)"))
        #expect(await restoreError(f.supervisor, RestoreRequest(directory: made.directory, name: "bigger"))
            == .conflict("VM bigger is defined in \(f.definitions)/bigger.json with 1 vCPUs and 64 MiB, the snapshot's VM has 1 vCPUs and 16 MiB: restore it under another name (--name)"))
        #expect(await restoreError(f.supervisor, RestoreRequest(directory: made.directory + "x")) == .notFound("no snapshot at \(made.directory)x: No such file or directory"))
        #expect(await restoreError(f.supervisor, RestoreRequest(directory: "relative/dir"))
            == .conflict("directory must be an absolute path, got \"relative/dir\""))
        // A corrupt state file: refused by the daemon itself, before any VMM.
        let state = SnapshotLayout.state(in: made.directory)
        let size = try #require(try FileManager.default.attributesOfItem(atPath: state)[.size] as? Int)
        try SnapshotFixture.flipByte(state, at: size - 6)
        guard case let .conflict(message)? = await restoreError(f.supervisor, RestoreRequest(directory: made.directory, name: "copy")) else {
            Issue.record("a corrupt snapshot was not refused"); return
        }
        #expect(message.contains("checksum mismatch"))
        #expect(!FileManager.default.fileExists(atPath: f.definitions + "/copy.json"))
        #expect(await f.supervisor.list().vms.map(\.name) == ["bigger", "busy"])
        _ = try await f.supervisor.stop("busy", force: true)
    }

    @Test func snapshotsNeedARunningVMAndAreListedFromTheStateDirectory() async throws {
        let f = try make()
        await f.supervisor.bootstrap()
        do { _ = try await f.supervisor.snapshot("busy", SnapshotOptions()); Issue.record("a stopped VM was snapshotted") } catch {
            #expect(error == .conflict("VM busy is stopped, not running"))
        }
        do { _ = try await f.supervisor.snapshot("ghost", SnapshotOptions()); Issue.record("no such VM") } catch {
            #expect(error == .notFound("no VM named \"ghost\""))
        }
        // The fake VMM serves no control socket: the failure is named and nothing is left.
        _ = try await f.supervisor.start("busy")
        do { _ = try await f.supervisor.snapshot("busy", SnapshotOptions(to: f.base + "/snap-busy")); Issue.record("snapshot without a control socket") } catch {
            guard case let .failed(message) = error else { Issue.record("\(error)"); return }
            #expect(message.hasPrefix("VM busy: snapshot failed: cannot connect to the VMM's control socket \(f.base)/run/vms/busy/control.sock"), "\(message)")
        }
        #expect(!FileManager.default.fileExists(atPath: f.base + "/snap-busy"))
        _ = try await f.supervisor.stop("busy", force: true)
        #expect(try await f.supervisor.snapshots(vm: nil) == SnapshotList(root: f.base + "/state/snapshots", snapshots: []))
    }
}
