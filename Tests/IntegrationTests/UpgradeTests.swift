import Foundation
import Posix
import SystemPackage
import Testing
import TestSupport
import VMMInterface

/// Same-host upgrade (issue 19, docs/migration.md "Upgrading the VMM"): a running VM moves to a
/// new rtvisor-vmm over a Unix socket with its RAM's memfds and its taps passed as descriptors,
/// nothing copied. The new VMM maps the same pages, so the guest's memory checks go on.
@Suite(.enabled(if: Env.kvmAvailable, Env.noKVMReason), .serialized)
struct UpgradeTests {
    let migration = MigrationTests()

    func handOver(control: String, definition: String, incoming: String) throws -> VMMControl.Reply {
        let stream = try migration.connectIncoming(incoming)
        defer { try? stream.close() }
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: definition)))
        return try ControlClient.connect(control).call(.migrate(MigrationRequest(definitionJSON: bytes, handover: true)), files: [stream])
    }

    @Test func aGuestWritingItsMemoryMovesToANewVMMWithoutACopyAndVerifiesAllOfIt() throws {
        let total = 8192
        let p = try migration.start(steps: total)
        #expect(p.source.waitForConsole(timeout: 60) { self.migration.steps($0).contains(2048) }, "source: \(p.source.console)\n\(p.source.stderr)")
        let reply = try handOver(control: p.control, definition: p.definition, incoming: p.incoming)
        guard case let .migrated(report) = reply else { throw SnapshotTestError("upgrade: \(reply)\nsource: \(p.source.stderr)\ntarget: \(p.target.stderr)") }
        #expect(report.memoryHandedOver == true)
        #expect(report.rounds.isEmpty, "no page was sent: \(report.rounds)")
        // 32 MiB of RAM, of which the guest wrote much: only the state went over the socket.
        #expect(report.totalBytes < 512 << 10, "\(report.totalBytes) bytes")
        #expect(report.downtimeMilliseconds > 0)
        #expect(p.source.waitForExit(timeout: 30) == VMMExitStatus.migrated.code, "source: \(p.source.stderr)")
        #expect(p.target.waitForExit(timeout: 120) == 0, "target: \(p.target.console.suffix(2000))\n\(p.target.stderr)")
        #expect(p.target.console.contains("INMATE memwriter PASS"))
        #expect(!p.target.console.contains("MEMW_START"), "the target must not boot the guest")
        let seen = migration.steps(p.source.console + p.target.console)
        #expect(seen == Array(stride(from: 1024, through: total, by: 1024)), "every check, once, in order: \(seen)")
    }

    /// Descriptors cannot travel over TCP: the source says so and keeps running.
    @Test func aHandoverOverTCPIsRefusedAndTheVMRunsOn() throws {
        let port = 48000 + Int(getpid() % 1000)
        let p = try migration.start(steps: 0, tcpPort: port)
        defer { kill(p.target.process.processIdentifier, SIGKILL) }
        #expect(p.source.waitForConsole(timeout: 60) { $0.contains("MEMW_START") })
        let reply = try handOver(control: p.control, definition: p.definition, incoming: p.incoming)
        guard case let .refused(reason) = reply else { throw SnapshotTestError("expected a refusal: \(reply)") }
        #expect(reason.contains("needs a Unix stream socket"), "\(reason)")
        let before = migration.steps(p.source.console).count
        #expect(p.source.waitForConsole(timeout: 60) { self.migration.steps($0).count > before }, "the source keeps verifying its memory")
    }

    /// A guest exchanging frames through a tap moves mid-exchange: the new VMM takes the open tap
    /// (opening it by name would fail: the old VMM has it) and the exchange completes.
    @Test(.enabled(if: EchoNamespace.unavailableReason == nil, Comment(rawValue: EchoNamespace.unavailableReason ?? "")))
    func aNetworkGuestMovesWithItsTapMidExchange() throws {
        let frames = 1500
        let ns = try EchoNamespace(echoArguments: ["--count", "\(frames)"])
        defer { _ = ns.finish() }
        let dir = try VMM.tempDir()
        let def = VMM.definition(name: "netup", kernel: try Env.inmate("virtio-net"), memoryMiB: 16,
                                 cmdline: "net.frames=\(frames) net.window=1 net.timeout_ms=30000",
                                 extra: "\"nets\": [{\"tap\": \"\(ns.tap)\", \"mac\": \"02:00:00:aa:bb:08\"}]")
        let path = try VMM.writeDefinition(def, in: dir)
        let control = dir.appendingPathComponent("control.sock").path
        let incoming = "unix:" + dir.appendingPathComponent("incoming.sock").path
        let netns = [EchoNamespace.ip, "netns", "exec", ns.name]
        let source = try RunningVMM(arguments: ["--config", path, "--control-socket", control], prefix: netns)
        let target = try RunningVMM(arguments: ["--incoming", incoming], prefix: netns)
        #expect(source.waitForConsole(timeout: 60) { $0.contains("MAC 02:00:00:aa:bb:08") }, "console: \(source.console)\nstderr: \(source.stderr)")
        usleep(300_000)
        let reply = try handOver(control: control, definition: path, incoming: incoming)
        guard case let .migrated(report) = reply else { throw SnapshotTestError("upgrade: \(reply)\nsource: \(source.stderr)\ntarget: \(target.stderr)") }
        #expect(report.memoryHandedOver == true)
        #expect(source.waitForExit(timeout: 30) == VMMExitStatus.migrated.code)
        #expect(!source.console.contains("INMATE virtio-net OK"), "the move must fall inside the exchange: \(source.console)")
        #expect(target.waitForExit(timeout: 120) == 0, "console: \(target.console)\nstderr: \(target.stderr)")
        #expect(target.console.contains("INMATE virtio-net OK: sent \(frames) received \(frames)"), "console: \(target.console)")
        let echo = ns.finish()
        #expect(echo.output.contains("good=\(frames) bad=0 echoed=\(frames)"), "echo: \(echo.output)")
    }

    /// A VM whose tap the VMM made a port of a bridge (docs/networking.md) keeps it across an
    /// upgrade: the new VMM adopts the open tap as it is, still on the bridge, and a second guest
    /// on the bridge reaches it before and after.
    @Test(.enabled(if: EchoNamespace.unavailableReason == nil, Comment(rawValue: EchoNamespace.unavailableReason ?? "")))
    func aGuestOnABridgeKeepsItsPortAcrossAnUpgrade() throws {
        let ns = try BridgeNamespace(bridgeMTU: 1500)
        defer { ns.delete() }
        let move = try BridgedMove(name: "reflup", from: ns, to: ns)
        move.exchange(in: ns)
        let reply = try handOver(control: move.pair.control, definition: move.pair.definition, incoming: move.pair.incoming)
        guard case .migrated = reply else { throw SnapshotTestError("upgrade: \(reply)\nsource: \(move.source.stderr)\ntarget: \(move.target.stderr)") }
        move.finish(in: ns)
    }

    /// A VM restored from a snapshot by mapping its memory file (copy-on-write, no memfd) still
    /// moves: its pages are copied over the socket instead.
    @Test func aVMWhoseMemoryIsAMappedSnapshotIsCopiedInstead() throws {
        let total = 6144
        let p = try migration.start(steps: total)
        #expect(p.source.waitForConsole(timeout: 60) { self.migration.steps($0).contains(1024) })
        let snap = p.dir.appendingPathComponent("snap").path
        let saved = try ControlClient.snapshot(try ControlClient.connect(p.control), into: snap, definition: p.definition, then: .stop)
        guard case .snapshotSaved = saved else { throw SnapshotTestError("snapshot: \(saved)") }
        #expect(p.source.waitForExit(timeout: 30) == VMMExitStatus.savedAndStopped.code)
        let control = p.dir.appendingPathComponent("control2.sock").path
        let mapped = try RunningVMM(arguments: ["--restore", snap, "--restore-memory", "map", "--control-socket", control])
        let reply = try handOver(control: control, definition: p.definition, incoming: p.incoming)
        guard case let .migrated(report) = reply else { throw SnapshotTestError("upgrade: \(reply)\nsource: \(mapped.stderr)\ntarget: \(p.target.stderr)") }
        #expect(report.memoryHandedOver == nil, "copied, not handed over")
        #expect(!report.rounds.isEmpty && report.totalBytes > 1 << 20)
        #expect(mapped.waitForExit(timeout: 30) == VMMExitStatus.migrated.code)
        #expect(p.target.waitForExit(timeout: 120) == 0, "target: \(p.target.console.suffix(2000))\n\(p.target.stderr)")
        #expect(p.target.console.contains("INMATE memwriter PASS"))
        let seen = migration.steps(p.source.console + mapped.console + p.target.console)
        #expect(seen == Array(stride(from: 1024, through: total, by: 1024)), "every check, once, in order: \(seen)")
    }
}
