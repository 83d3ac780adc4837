import APIModels
import Config
import Daemon
import Foundation
import Logging
import Posix
import SystemPackage
import Testing
import TestSupport
import VMMInterface

/// Live migration in the daemon (docs/migration.md, "With rtvisord"): exit status 9, the
/// incoming VM's lifecycle, a migration of unknown outcome, the definition's rename and disk map.
@Suite struct MigrationLifecycleTests {
    static let migrated = ExitOutcome.exited(VMMExitStatus.migrated.code)
    static let source = IncomingSource(socket: 7, configFile: "/run/rtvisor/vms/web/incoming-config.json", sourceHost: "hosta")

    @Test func migratedIsADeliberateStopUnderEveryPolicy() {
        for policy in RestartPolicyKind.allCases {
            var t = RestartTracker(settings: RestartSettings(policy: policy, limit: 1, windowSeconds: 60, backoffMs: 100, backoffMaxMs: 1000))
            for i in 0..<3 { #expect(t.decide(Self.migrated, now: Double(i)) == .stay(reason: "migrated: it runs on the target"), "\(policy)") }
            #expect(t.recent.isEmpty, "not counted against the restart limit")
        }
        #expect(Self.migrated.isDeliberateStop && Self.migrated.isMigrated && !ExitOutcome.exited(8).isMigrated)
    }

    /// Policy always: a VMM that exits 9 leaves the VM `migrated`, not restarted, not failed.
    @Test func aMigratedVMStaysStoppedAndShowsMigrated() {
        var vm = Situation.running.make()
        var always = LifecycleFixture.definition()
        always.daemon.restart.policy = .always
        vm.on(.definitionChanged(always))
        let effects = vm.on(.processExited(pid: 100, outcome: Self.migrated, statusFile: VMMExitReport(status: .migrated, reason: "migrated to another VMM")))
        #expect(vm.situation == .stopped && vm.lifecycle.stateName == .migrated)
        #expect(!effects.contains { $0.hasPrefix("spawn") || $0.hasPrefix("restart in") }, "\(effects)")
        #expect(effects.contains("journal vm-stopped notice: VM web stopped: exit status 9: migrated to another VMM (migrated: it runs on the target)"), "\(effects)")
        // A start by hand boots it again (stateName follows the last exit).
        #expect(vm.on(.startRequested) == ["spawn (start requested)"])
    }

    @Test func anIncomingVMIsIncomingUntilItsVMMServesThenRunning() {
        var vm = Situation.stopped.make()
        #expect(vm.on(.incomingRequested(Self.source)) == ["spawn (incoming migration from hosta)"])
        let effects = vm.on(.processSpawned(LifecycleFixture.process(100), cgroup: nil))
        #expect(effects.last == "reply receive incoming: receiving from hosta, PID 100", "\(effects)")
        #expect(vm.lifecycle.stateName == .incoming && vm.lifecycle.receiving == IncomingVMM(pid: 100, sourceHost: "hosta"))
        // Not paused, not snapshotted meanwhile: it does not run yet.
        #expect(vm.on(.pauseRequested).first?.hasPrefix("refuse conflict: VM web is incoming") == true)
        #expect(vm.on(.incomingConfirmed(pid: 99)) == [])
        #expect(vm.on(.incomingConfirmed(pid: 100)) == ["publish status"])
        #expect(vm.lifecycle.stateName == .running && vm.lifecycle.receiving == nil)
        // From then on an ordinary VM: a crash is restarted.
        #expect(vm.on(.processExited(pid: 100, outcome: .signaled(9), statusFile: nil)).contains("restart in 100 ms"))
    }

    /// The VMM gave up (the stream broke, the state did not load): failed with its reason, never
    /// restarted (the guest runs on at the source).
    @Test func anIncomingVMMThatEndsFirstLeavesTheVMFailed() {
        var vm = Situation.stopped.make()
        var always = LifecycleFixture.definition()
        always.daemon.restart.policy = .always
        vm.on(.definitionChanged(always))
        vm.on(.incomingRequested(Self.source))
        vm.on(.processSpawned(LifecycleFixture.process(100), cgroup: nil))
        let reason = "incoming migration abandoned: the stream ended inside a frame header (0 of 5 bytes)"
        let effects = vm.on(.processExited(pid: 100, outcome: .exited(1), statusFile: VMMExitReport(status: .vmmError, reason: reason)))
        #expect(vm.situation == .failed && vm.lifecycle.lastExit?.reason == reason)
        #expect(!effects.contains { $0.hasPrefix("spawn") || $0.hasPrefix("restart in") }, "\(effects)")
        #expect(effects.contains("journal vm-failed error: VM web could not be received from hosta: exit status 1: \(reason)"), "\(effects)")
        // A running VM is not received over.
        var running = Situation.running.make()
        #expect(running.on(.incomingRequested(Self.source)) == ["refuse conflict: VM web is running"])
    }

    /// After a migration of unknown outcome the VMM keeps the guest paused: shown paused, a stop
    /// is hard at once, and `vmmResumed` (resume through the control socket) runs it again.
    @Test func aMigrationOfUnknownOutcomeLeavesTheVMPausedUntilResumed() {
        var vm = Situation.running.make()
        #expect(vm.on(.migrationOutcomeUnknown(pid: 99)) == [])
        #expect(vm.on(.migrationOutcomeUnknown(pid: 100)) == ["publish status"])
        #expect(vm.lifecycle.stateName == .paused && vm.lifecycle.pausedByVMM)
        #expect(vm.on(.pauseRequested).first?.hasPrefix("refuse conflict") == true)
        #expect(vm.on(.vmmResumed(pid: 100)) == ["journal vm-resumed notice: VM web resumed (its VMM had kept it paused)", "publish status",
                                                  "reply resume running: resumed"])
        #expect(vm.lifecycle.stateName == .running && !vm.lifecycle.pausedByVMM)
        var again = Situation.running.make()
        again.on(.migrationOutcomeUnknown(pid: 100))
        #expect(again.on(.stopRequested(force: false)).contains("SIGTERM to 100"), "a paused guest cannot act on Ctrl-Alt-Del")
    }

    @Test func anIncomingVMMGetsTheStreamAndTheConfig() {
        let paths = DaemonPaths(definitions: "/etc/rtvisor/vms", run: "/run/rtvisor", vmm: "/usr/bin/rtvisor-vmm", apiSocket: "/run/rtvisor/api.sock")
        let launch = paths.vmmLaunch("web", baseDirectory: "/etc/rtvisor/vms", cgroup: nil, latencyProbe: false, incoming: Self.source)
        #expect(Array(launch.arguments.suffix(6)) == ["--control-socket", "/run/rtvisor/vms/web/control.sock", "--incoming", "fd:3",
                                                      "--incoming-config", Self.source.configFile])
        #expect(paths.incomingConfig("web") == "/run/rtvisor/vms/web/incoming-config.json")
        #expect((try? VMMLaunch.parse(launch.arguments)) == launch)
    }

    @Test func theIncomingDefinitionIsRenamedAndItsDisksMapped() throws {
        var json = try DefinitionJSON(Array("""
            {"name": "memw", "kernel": "/k", "memory_mib": 32, "autostart": true, "disks": [{"path": "/a/root.img"}, {"path": "/a/data.img", "read_only": true}, {"path": "/b/x.img"}]}
            """.utf8), file: "the definition from hosta")
        json.rename(to: "moved")
        #expect(json.mapDiskPaths(["/a/root.img": "/srv/root.img", "/a/data.img": "/srv/data.img", "/nowhere": "/n"]) == [0, 1])
        let d = try json.validated(base: "/", checkFiles: false)
        #expect(d.name == "moved" && d.disks.map(\.path) == ["/srv/root.img", "/srv/data.img", "/b/x.img"] && d.disks[1].readOnly)
        #expect(d.daemon.autostart, "the other fields are the source's")
        #expect(json.mapDiskPaths([:]) == [])
        #expect(DefinitionJSON.diskMapProblem(["/a": "/b"]) == nil)
        #expect(DefinitionJSON.diskMapProblem(["a.img": "/b"]) == "disk_map: \"a.img\" = \"/b\": both paths must be absolute")
        #expect(DefinitionJSON.diskMapProblem(["/a": "b"]) != nil)
    }
}

/// rtvisord's target side with a fake VMM (a shell script): the source is this test, speaking
/// the stream's first frames over the unix socket the Supervisor listens on.
@Suite(.serialized) struct SupervisorIncomingTests {
    struct Fixture {
        let supervisor: Supervisor
        let definitions: String
        let base: String
        let kernel: String
    }

    /// The fake VMM writes what it was given to descriptor 3 (the stream: the "source" reads it),
    /// then gives up as rtvisor-vmm does when a stream breaks.
    func make() async throws -> Fixture {
        let base = try makeTemporaryDirectory("rtvd-in")
        let definitions = base + "/vms"
        try FileManager.default.createDirectory(atPath: definitions, withIntermediateDirectories: true)
        let kernel = try makeKernel(in: base)
        try write(definitionJSON(name: "twocpu", kernel: kernel, memory: 32, extra: "\"vcpus\": 2"), to: definitions + "/twocpu.json")
        let script = base + "/fake-vmm"
        try write("""
            #!/bin/sh
            status=""; incoming=""; config=""
            while [ $# -gt 0 ]; do
              case "$1" in --status-file) status="$2";; --incoming) incoming="$2";; --incoming-config) config="$2";; esac
              shift
            done
            if [ -n "$incoming" ]; then
              echo "fake-vmm $incoming $(head -c 40 "$config")" >&3
              echo "1 incoming migration abandoned: fake" > "$status"
              exit 1
            fi
            exec sleep 3600
            """, to: script)
        chmod(script, 0o755)
        let paths = DaemonPaths(definitions: definitions, run: base + "/run", vmm: script, apiSocket: base + "/run/api.sock", state: base + "/state")
        let supervisor = Supervisor(paths: paths, logger: Logger(label: "incoming-test") { _ in SwiftLogNoOpLogHandler() },
                                    cgroups: CgroupPlacement(procSelfCgroup: nil), version: "test") { _ in }
        await supervisor.bootstrap()
        return Fixture(supervisor: supervisor, definitions: definitions, base: base, kernel: kernel)
    }

    /// Connects as the source and sends hello and the configuration; returns the stream.
    func send(_ f: Fixture, to path: String, vcpus: Int = 1, name: String = "memw") throws -> MigrationChannel {
        guard let fd = connectToUnixSocket(path) else { throw ControlError.failed("cannot connect to \(path)") }
        let channel = MigrationChannel(socket: FileDescriptor(rawValue: fd))
        let definition = Array(definitionJSON(name: name, kernel: f.kernel, memory: 32, extra: "\"vcpus\": \(vcpus)").utf8)
        let header = SnapshotHeader(vm: name, createdAt: 0, vcpus: vcpus, memoryBytes: 32 << 20, cpuTemplate: "host", cpuidDigest: "x",
                                    definitionDigest: "y", diskBytes: [])
        try channel.send(.hello(version: MigrationMessage.version, rtvisorVersion: "test"))
        try channel.send(.config(MigrationConfig(definitionJSON: definition, header: header, sourceHost: "hosta")))
        return channel
    }

    func waitForEnd(_ s: Supervisor, _ id: String) async throws -> IncomingMigration {
        for _ in 0..<200 {
            let m = try await s.incomingMigration(id)
            if m.phase == .failed || m.phase == .running { return m }
            try await Task.sleep(for: .milliseconds(50))
        }
        return try await s.incomingMigration(id)
    }

    /// The stream reaches the VMM as fd 3 with its config file; when the VMM gives up, the VM is
    /// failed with its reason and the installed definition is taken back.
    @Test func theVMMGetsTheStreamAndItsFailureTakesTheDefinitionBack() async throws {
        let f = try await make()
        let listen = f.base + "/in.sock"
        let started = try await f.supervisor.receiveMigration(IncomingRequest(listen: "unix:" + listen, name: "moved"))
        #expect(started.phase == .listening && started.id == "1" && started.name == "moved")
        let channel = try send(f, to: listen)
        // Off the pool: the supervisor needs a pool thread to hand the stream on and close its copy.
        let stream = channel.socket.rawValue
        let seen = try await offThePool { Result { try readToEnd(stream) } }.get()
        #expect(String(decoding: seen, as: UTF8.self).hasPrefix("fake-vmm fd:3 {"), "\(String(decoding: seen, as: UTF8.self))")
        let ended = try await waitForEnd(f.supervisor, "1")
        #expect(ended.phase == .failed && ended.sourceHost == "hosta" && ended.name == "moved", "\(ended)")
        #expect(ended.error == "VM moved could not be received from hosta: incoming migration abandoned: fake", "\(ended)")
        #expect(!FileManager.default.fileExists(atPath: f.definitions + "/moved.json"))
        #expect(await f.supervisor.list().vms.map(\.name) == ["twocpu"])
        #expect(!FileManager.default.fileExists(atPath: listen), "one connection only: the socket file is gone")
    }

    /// A definition of that name with other vCPUs: the source is told why before anything starts.
    @Test func aNameTakenByAnotherMachineIsRefusedToTheSource() async throws {
        let f = try await make()
        let listen = f.base + "/in.sock"
        _ = try await f.supervisor.receiveMigration(IncomingRequest(listen: "unix:" + listen, name: "twocpu"))
        let channel = try send(f, to: listen)
        let stream = channel.socket.rawValue
        let answer = try await offThePool { Result { try MigrationChannel(socket: FileDescriptor(rawValue: stream)).receive() } }.get()
        #expect(answer == .refused("VM twocpu is defined in \(f.definitions)/twocpu.json with 2 vCPUs and 32 MiB, the incoming VM has 1 vCPUs and 32 MiB: receive it under another name (--name)"))
        let ended = try await waitForEnd(f.supervisor, "1")
        #expect(ended.phase == .failed)
        #expect(try String(contentsOfFile: f.definitions + "/twocpu.json", encoding: .utf8).contains("\"vcpus\": 2"))
        // Not a migration stream at all: refused too.
        let other = f.base + "/other.sock"
        _ = try await f.supervisor.receiveMigration(IncomingRequest(listen: "unix:" + other))
        let fd = try #require(connectToUnixSocket(other))
        let junk = MigrationChannel(socket: FileDescriptor(rawValue: fd))
        try junk.send(.go)
        let junkAnswer = try await offThePool { Result { try MigrationChannel(socket: FileDescriptor(rawValue: fd)).receive() } }.get()
        guard case let .refused(reason) = junkAnswer else { Issue.record("no refusal"); return }
        #expect(reason == "not a migration stream: it began with go, not hello")
        #expect(try await waitForEnd(f.supervisor, "2").error == reason)
        // Checked at once: a bad name, a file that is not a socket (listening would replace it).
        await #expect(throws: ControlError.conflict("listen: \(f.definitions)/twocpu.json exists and is not a socket (rtvisord would replace it)")) {
            _ = try await f.supervisor.receiveMigration(IncomingRequest(listen: "unix:" + f.definitions + "/twocpu.json"))
        }
        await #expect(throws: ControlError.conflict("name \"a b\" is not a VM name (1–64 letters, digits, '-' and '_')")) {
            _ = try await f.supervisor.receiveMigration(IncomingRequest(listen: "unix:" + f.base + "/x.sock", name: "a b"))
        }
    }
}
