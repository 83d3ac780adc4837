import Synchronization
import Testing
@testable import HostNetwork

/// Interfaces in a table; records what is set.
final class FakeLinks: LinkControl {
    let links: [LinkDescription]
    let failure: Int32?
    let sets = Mutex<[String]>([])
    init(_ links: [LinkDescription], failSetWith failure: Int32? = nil) { self.links = links; self.failure = failure }
    func link(named name: String) throws(LinkError) -> LinkDescription? { links.first { $0.name == name } }
    func setLink(index: Int32, mtu: UInt32?, master: Int32?, up: Bool) throws(LinkError) {
        if let failure { throw LinkError(operation: "RTM_SETLINK index \(index)", errno: failure) }
        sets.withLock { $0.append("\(index) mtu=\(mtu.map(String.init) ?? "-") master=\(master.map(String.init) ?? "-") up=\(up)") }
    }
}

@Suite("A tap joins its bridge")
struct BridgePortTests {
    static let bridge = LinkDescription(index: 3, name: "br-plant", mtu: 9000, kind: "bridge", isUp: true)
    static let tap = LinkDescription(index: 9, name: "rtv-plc-0", mtu: 1500, kind: "tun")

    @Test func theTapBecomesAnUpPortWithTheBridgesMTU() throws {
        let links = FakeLinks([Self.bridge, Self.tap])
        let applied = try BridgePort.attach(tap: "rtv-plc-0", bridge: "br-plant", mtu: nil, links: links)
        #expect(applied == BridgePort.Applied(bridge: "br-plant", mtu: 9000))
        #expect(links.sets.withLock { $0 } == ["9 mtu=9000 master=3 up=true"])
    }

    @Test func anMTUOfItsOwnUpToTheBridges() throws {
        let links = FakeLinks([Self.bridge, Self.tap])
        _ = try BridgePort.attach(tap: "rtv-plc-0", bridge: "br-plant", mtu: 1400, links: links)
        #expect(links.sets.withLock { $0 } == ["9 mtu=1400 master=3 up=true"])
        #expect(throws: BridgePort.Failure(field: .mtu, reason: "9001 exceeds the MTU of bridge br-plant (9000); raise the bridge's first")) {
            try BridgePort.attach(tap: "rtv-plc-0", bridge: "br-plant", mtu: 9001, links: links)
        }
    }

    @Test func aMissingBridgeOrOneThatIsNotIsNamed() {
        let links = FakeLinks([Self.tap, LinkDescription(index: 2, name: "eth0", mtu: 1500)])
        #expect(throws: BridgePort.Failure(field: .bridge, reason: "br-plant: no such bridge")) {
            try BridgePort.attach(tap: "rtv-plc-0", bridge: "br-plant", mtu: nil, links: links)
        }
        #expect(throws: BridgePort.Failure(field: .bridge, reason: "eth0 is not a bridge (a network device)")) {
            try BridgePort.attach(tap: "rtv-plc-0", bridge: "eth0", mtu: nil, links: links)
        }
        #expect(throws: BridgePort.Failure(field: .bridge, reason: "rtv-plc-0 is not a bridge (a tun interface)")) {
            try BridgePort.attach(tap: "other", bridge: "rtv-plc-0", mtu: nil, links: links)
        }
        #expect(links.sets.withLock { $0 }.isEmpty)
    }

    @Test func aKernelRefusalNamesTheTapAndTheErrno() {
        let links = FakeLinks([Self.bridge, Self.tap], failSetWith: 1)
        #expect(throws: BridgePort.Failure(field: .bridge, reason: "tap rtv-plc-0 on bridge br-plant: RTM_SETLINK index 9: Operation not permitted (needs CAP_NET_ADMIN in the interface's network namespace)")) {
            try BridgePort.attach(tap: "rtv-plc-0", bridge: "br-plant", mtu: nil, links: links)
        }
    }

    @Test func withoutABridgeOnlyTheMTUIsSetAndTheTapStaysAsItIs() throws {
        let links = FakeLinks([Self.tap])
        #expect(try BridgePort.attach(tap: "rtv-plc-0", bridge: nil, mtu: nil, links: links) == BridgePort.Applied())
        #expect(links.sets.withLock { $0 }.isEmpty)
        #expect(try BridgePort.attach(tap: "rtv-plc-0", bridge: nil, mtu: 1280, links: links) == BridgePort.Applied(mtu: 1280))
        #expect(links.sets.withLock { $0 } == ["9 mtu=1280 master=- up=false"])
    }
}
