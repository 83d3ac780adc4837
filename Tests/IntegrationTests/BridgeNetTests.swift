import Foundation
import Testing
import VMMInterface

/// A network namespace with a Linux bridge in it (made with `ip link add … type bridge`: test
/// setup only; the VMM itself uses rtnetlink), for VMs whose `nets` name the bridge. Deleting the
/// namespace removes the bridge and any tap left in it.
struct BridgeNamespace {
    let name: String
    let bridge = "br-plant"
    static let ip = EchoNamespace.ip
    var prefix: [String] { [Self.ip, "netns", "exec", name] }

    init(bridgeMTU: Int) throws {
        name = "rtvbr\(getpid())\(Int.random(in: 0..<10000))"
        guard try EchoNamespace.sh([Self.ip, "netns", "add", name]) == 0 else { throw TestSetupError("ip netns add \(name) failed") }
        // IPv6 router solicitations from the bridge would be extra frames on every port.
        let steps = [["/usr/sbin/sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"],
                     [Self.ip, "link", "add", bridge, "type", "bridge"],
                     [Self.ip, "link", "set", bridge, "mtu", "\(bridgeMTU)", "up"]]
        for step in steps where try EchoNamespace.sh(prefix + step) != 0 {
            delete()
            throw TestSetupError("\(step.joined(separator: " ")) failed in \(name)")
        }
    }

    /// Runs `argv` in the namespace: its standard output, nil when it fails. `ip netns exec`
    /// mounts the namespace's own sysfs, so /sys/class/net shows its interfaces.
    func output(_ argv: [String]) -> String? {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Self.ip)
        p.arguments = Array((prefix + argv).dropFirst())
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        guard (try? p.run()) != nil else { return nil }
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        return p.terminationStatus == 0 ? text.trimmingCharacters(in: .whitespacesAndNewlines) : nil
    }

    /// /sys/class/net/IFACE/ATTRIBUTE (mtu, flags…).
    func attribute(_ iface: String, _ attribute: String) -> String? { output(["/usr/bin/cat", "/sys/class/net/\(iface)/\(attribute)"]) }
    /// The bridge `iface` is a port of.
    func master(of iface: String) -> String? {
        output(["/usr/bin/readlink", "/sys/class/net/\(iface)/master"]).flatMap { $0.split(separator: "/").last.map(String.init) }
    }

    func delete() { _ = try? EchoNamespace.sh([Self.ip, "netns", "del", name]) }
}

/// A reflector guest on `from`'s bridge (with a control socket) and an `--incoming` VMM in `to`
/// waiting for it: the two moves of a bridged VM, a same-host upgrade (one namespace, the tap
/// adopted) and a migration (another namespace: another host with its own bridge, its own tap).
/// An echo guest on the bridge reaches the reflector before the move and after it.
struct BridgedMove {
    static let reflectorMAC = "02:00:00:aa:bd:02"
    let name: String
    /// The reflector's definition, control socket and `--incoming` address, its two VMMs.
    let pair: MigrationTests.Pair
    let echoDefinition: String
    var source: RunningVMM { pair.source }
    var target: RunningVMM { pair.target }

    init(name: String, from: BridgeNamespace, to: BridgeNamespace) throws {
        let inmate = try Env.inmate("virtio-net")
        let dir = try VMM.tempDir()
        self.name = name
        // The bridge has the same name on both sides, as a migration expects.
        let definition = try VMM.writeDefinition(VMM.definition(
            name: name, kernel: inmate, memoryMiB: 16, cmdline: "net.mode=reflect net.frames=64 net.timeout_ms=60000",
            extra: "\"nets\": [{\"bridge\": \"\(from.bridge)\", \"mac\": \"\(Self.reflectorMAC)\"}]"), in: dir)
        echoDefinition = try VMM.writeDefinition(VMM.definition(
            name: "echo", kernel: inmate, memoryMiB: 16, cmdline: "net.frames=32 net.peer=\(Self.reflectorMAC) net.timeout_ms=10000",
            extra: "\"nets\": [{\"bridge\": \"\(from.bridge)\", \"mac\": \"02:00:00:aa:bd:01\"}]"), name: "echo.json", in: dir)
        let control = dir.appendingPathComponent("control.sock").path
        let incoming = "unix:" + dir.appendingPathComponent("incoming.sock").path
        pair = MigrationTests.Pair(
            dir: dir, definition: definition, control: control, incoming: incoming,
            source: try RunningVMM(arguments: ["--config", definition, "--control-socket", control], prefix: from.prefix),
            target: try RunningVMM(arguments: ["--incoming", incoming], prefix: to.prefix))
        #expect(source.waitForConsole(timeout: 60) { $0.contains("virtio-net: reflecting") }, "console: \(source.console)\nstderr: \(source.stderr)")
    }

    /// 32 frames from an echo guest on `ns`'s bridge, every one answered by the reflector.
    func exchange(in ns: BridgeNamespace) {
        do {
            let r = try VMM.run(config: echoDefinition, timeout: 60, prefix: ns.prefix)
            #expect(r.console.contains("INMATE virtio-net OK: sent 32 received 32"), "console: \(r.console)\nstderr: \(r.stderr)")
        } catch { Issue.record("echo guest: \(error)") }
    }

    /// Once moved: the source ended as migrated, the reflector's tap is a port of `ns`'s bridge,
    /// and it answers a second exchange there before it ends.
    func finish(in ns: BridgeNamespace) {
        #expect(source.waitForExit(timeout: 30) == VMMExitStatus.migrated.code, "source: \(source.stderr)")
        #expect(ns.master(of: "rtv-\(name)-0") == ns.bridge, "the tap is not on the bridge: \(target.stderr)")
        exchange(in: ns)
        #expect(target.waitForExit(timeout: 60) == 0, "console: \(target.console)\nstderr: \(target.stderr)")
        #expect(target.console.contains("INMATE virtio-net OK: reflected 64"), "console: \(target.console)")
    }
}

/// Issue 21: VMs on a host bridge. Two net inmates on one bridge exchange frames through their
/// virtio-net devices (one echoes, the other reflects as scripts/net-echo.py would); the taps are
/// the VMMs' own (created, made ports, brought up, gone with the VMM); a bridge that is missing
/// or is not one stops the VM before it starts, naming the field.
@Suite(.enabled(if: Env.kvmAvailable, Env.noKVMReason),
       .enabled(if: EchoNamespace.unavailableReason == nil, Comment(rawValue: EchoNamespace.unavailableReason ?? "")))
struct BridgeNetTests {
    static let reflectorMAC = "02:00:00:aa:bc:02"

    func net(_ ns: BridgeNamespace, mac: String, mtu: Int? = nil) -> String {
        "\"nets\": [{\"bridge\": \"\(ns.bridge)\", \"mac\": \"\(mac)\"\(mtu.map { ", \"mtu\": \($0)" } ?? "")}]"
    }

    @Test func twoGuestsOnOneBridgeExchangeFrames() throws {
        let ns = try BridgeNamespace(bridgeMTU: 9000)
        defer { ns.delete() }
        let frames = 64
        let inmate = try Env.inmate("virtio-net")
        let reflector = try RunningVMM(arguments: ["--config", try VMM.writeDefinition(VMM.definition(
            name: "refl", kernel: inmate, cmdline: "net.mode=reflect net.frames=\(frames) net.timeout_ms=30000",
            extra: net(ns, mac: Self.reflectorMAC, mtu: 1500)))], prefix: ns.prefix)
        #expect(reflector.waitForConsole(timeout: 30) { $0.contains("virtio-net: reflecting") },
                "console: \(reflector.console)\nstderr: \(reflector.stderr)")
        // The VMM's own tap (no "tap" in the definition): a port of the bridge, up, with its MTU.
        #expect(ns.master(of: "rtv-refl-0") == ns.bridge)
        #expect(ns.attribute("rtv-refl-0", "mtu") == "1500")
        #expect(ns.attribute("rtv-refl-0", "flags").flatMap { Int($0.dropFirst(2), radix: 16) }.map { $0 & 1 } == 1, "IFF_UP")

        let def = VMM.definition(name: "echo", kernel: inmate, cmdline: "net.frames=\(frames) net.peer=\(Self.reflectorMAC) net.timeout_ms=10000",
                                 extra: net(ns, mac: "02:00:00:aa:bc:01"))
        let echo = try VMM.run(config: try VMM.writeDefinition(def), timeout: 60, prefix: ns.prefix)
        let reflected = reflector.waitForExit(timeout: 30)
        #expect(echo.status == 0, "console: \(echo.console)\nstderr: \(echo.stderr)")
        #expect(echo.console.contains("INMATE virtio-net OK: sent \(frames) received \(frames)"))
        // Without "mtu" the tap takes the bridge's, and the guest is told nothing.
        #expect(echo.stderr.contains("net0: tap rtv-echo-0 on bridge \(ns.bridge), MTU 9000"), "\(echo.stderr)")
        #expect(!echo.console.contains("virtio-net: MTU"))
        #expect(reflected == 0, "console: \(reflector.console)\nstderr: \(reflector.stderr)")
        #expect(reflector.console.contains("virtio-net: MTU 1500"))
        #expect(reflector.console.contains("INMATE virtio-net OK: reflected \(frames)"))
        // The taps were the VMMs' (not persistent): gone with them, and off the bridge.
        #expect(ns.attribute("rtv-refl-0", "mtu") == nil)
        #expect(ns.attribute("rtv-echo-0", "mtu") == nil)
    }

    @Test func aBridgeThatIsMissingOrIsNotOneStopsTheVMWithTheField() throws {
        let ns = try BridgeNamespace(bridgeMTU: 1500)
        defer { ns.delete() }
        let inmate = try Env.inmate("virtio-net")
        let cases: [(nets: String, error: String)] = [
            ("[{\"bridge\": \"br-missing\"}]", "$.nets[0].bridge: br-missing: no such bridge"),
            ("[{\"bridge\": \"lo\"}]", "$.nets[0].bridge: lo is not a bridge (a network device)"),
            ("[{\"bridge\": \"\(ns.bridge)\", \"mtu\": 9000}]", "$.nets[0].mtu: 9000 exceeds the MTU of bridge \(ns.bridge) (1500); raise the bridge's first"),
        ]
        for (nets, error) in cases {
            let def = VMM.definition(name: "nobr", kernel: inmate, extra: "\"nets\": \(nets)")
            let r = try VMM.run(config: try VMM.writeDefinition(def), timeout: 30, prefix: ns.prefix)
            #expect(r.status == 1, "\(nets): \(r.stderr)")
            #expect(r.stderr.contains(error), "\(nets): \(r.stderr)")
            #expect(!r.console.contains("virtio-net:"), "the guest ran: \(r.console)")
            #expect(ns.attribute("rtv-nobr-0", "mtu") == nil, "the tap outlived its VMM")
        }
    }

    /// Under rtvisord (in the host's namespace): the VM fails to start, and its last exit (what
    /// `rtvisorctl list`/`show` and the journal report) is the VMM's reason, naming the field.
    @Test func underTheDaemonAMissingBridgeIsTheStartsError() throws {
        let bridge = "rtv-nobr\(getpid() % 100_000)"
        let def = VMM.definition(name: "nobridge", kernel: try Env.inmate("idle"), memoryMiB: 16, cmdline: "idle.heartbeat=0",
                                 extra: "\"nets\": [{\"bridge\": \"\(bridge)\"}]")
        let d = try SnapshotDaemonTests.Daemon(definitions: [("nobridge", def)])
        defer { d.stop() }
        #expect(DaemonProcessTests.waitFor(10, "daemon answers") { d.state("nobridge") == "stopped" })
        // --wait waits for the guest to run, which it never does: the VMM ends in its set-up.
        let (status, out) = d.ctl(["start", "nobridge", "--wait", "--timeout", "30"])
        #expect(status == 1 && out.contains("nobridge did not get running: failed"), "\(out)")
        #expect(DaemonProcessTests.waitFor(30, "the start failed") { d.state("nobridge") == "failed" }, "\(d.log)")
        let exit = d.vm("nobridge")?["last_exit"] as? [String: Any]
        #expect(exit?["status"] as? Int == 1)
        #expect((exit?["reason"] as? String)?.contains("$.nets[0].bridge: \(bridge): no such bridge") == true, "\(exit ?? [:])\n\(d.log)")
    }

    /// A migration to another host (another network namespace with its own bridge of the same
    /// name): the target VMM creates its own tap there and puts it on that bridge.
    @Test func aGuestOnABridgeMigratesOntoTheOtherHostsBridge() throws {
        let hostA = try BridgeNamespace(bridgeMTU: 1500)
        defer { hostA.delete() }
        let hostB = try BridgeNamespace(bridgeMTU: 1500)
        defer { hostB.delete() }
        let move = try BridgedMove(name: "reflmig", from: hostA, to: hostB)
        move.exchange(in: hostA)
        let stream = try MigrationTests().connectIncoming(move.pair.incoming)
        defer { try? stream.close() }
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: move.pair.definition)))
        let reply = try ControlClient.connect(move.pair.control).call(.migrate(MigrationRequest(definitionJSON: bytes)), files: [stream])
        guard case .migrated = reply else { throw SnapshotTestError("migrate: \(reply)\nsource: \(move.source.stderr)\ntarget: \(move.target.stderr)") }
        move.finish(in: hostB)
        #expect(hostA.attribute("rtv-reflmig-0", "mtu") == nil, "the source's tap outlived it")
    }
}
