import CLinux
import Testing
@testable import HostNetwork

/// rtnetlink requests byte for byte (as `ip link` sends them) and replies parsed from bytes.
@Suite("rtnetlink link messages")
struct RouteMessageTests {
    @Test func getLinkAsksForTheInterfaceByName() {
        #expect(RouteMessage.getLink(name: "br0", sequence: 1) == [
            40, 0, 0, 0, 18, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0,       // nlmsghdr: 40 bytes, RTM_GETLINK, NLM_F_REQUEST, seq 1
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,         // ifinfomsg: AF_UNSPEC, index 0
            8, 0, 3, 0, 0x62, 0x72, 0x30, 0,                        // IFLA_IFNAME "br0\0"
        ])
    }

    @Test func setLinkCarriesMTUMasterAndUpWithAnAck() {
        #expect(RouteMessage.setLink(index: 7, mtu: 9000, master: 3, up: true, sequence: 2) == [
            48, 0, 0, 0, 19, 0, 5, 0, 2, 0, 0, 0, 0, 0, 0, 0,       // RTM_SETLINK, NLM_F_REQUEST|NLM_F_ACK, seq 2
            0, 0, 0, 0, 7, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0,         // index 7, flags IFF_UP, change IFF_UP
            8, 0, 4, 0, 0x28, 0x23, 0, 0,                           // IFLA_MTU 9000
            8, 0, 10, 0, 3, 0, 0, 0,                                // IFLA_MASTER 3
        ])
        // Nothing asked: no attributes, flags untouched (change mask 0).
        #expect(RouteMessage.setLink(index: 7, sequence: 3).count == 32)
        #expect(Array(RouteMessage.setLink(index: 7, sequence: 3)[24..<32]) == [0, 0, 0, 0, 0, 0, 0, 0])
    }

    @Test func attributesArePaddedToFourBytes() {
        #expect(RouteMessage.attribute(3, Array("tap0\0".utf8)) == [9, 0, 3, 0, 0x74, 0x61, 0x70, 0x30, 0, 0, 0, 0])
    }

    /// A bridge as the kernel describes it: name, MTU, up, and IFLA_LINKINFO (nested) of kind "bridge".
    static func bridgeReply(sequence: UInt32) -> [UInt8] {
        let kind = RouteMessage.attribute(CLINUX_IFLA_INFO_KIND, Array("bridge\0".utf8))
        let attributes = RouteMessage.attribute(CLINUX_IFLA_IFNAME, Array("br-plant\0".utf8))
            + RouteMessage.attribute(CLINUX_IFLA_MTU, RouteMessage.bytes(UInt32(1500)))
            + RouteMessage.attribute(CLINUX_IFLA_LINKINFO | 0x8000, kind)   // NLA_F_NESTED
        return RouteMessage.message(type: CLINUX_RTM_NEWLINK, flags: 0, sequence: sequence, index: 5, flags: 0x1043, change: 0, attributes: attributes)
    }

    @Test func aNewLinkReplyDescribesTheInterface() {
        #expect(RouteMessage.parse(Self.bridgeReply(sequence: 1), sequence: 1)
                == .link(LinkDescription(index: 5, name: "br-plant", mtu: 1500, kind: "bridge", isUp: true)))
    }

    @Test func errorRepliesCarryTheErrno() {
        let error = RouteMessage.bytes(UInt32(20)) + RouteMessage.bytes(CLINUX_NLMSG_ERROR) + [0, 0] + RouteMessage.bytes(UInt32(4)) + [0, 0, 0, 0]
        #expect(RouteMessage.parse(error + RouteMessage.bytes(Int32(-19)), sequence: 4) == .failed(errno: 19))
        #expect(RouteMessage.parse(error + RouteMessage.bytes(Int32(0)), sequence: 4) == .acknowledged)
    }

    @Test func malformedOrForeignRepliesAreRejected() {
        let reply = Self.bridgeReply(sequence: 1)
        #expect(RouteMessage.parse(reply, sequence: 2) == nil)                      // another request's
        #expect(RouteMessage.parse(Array(reply.prefix(20)), sequence: 1) == nil)    // shorter than it says
        #expect(RouteMessage.parse([1, 2, 3], sequence: 1) == nil)
        // An attribute claiming more than the message holds ends the list, nothing is read past it.
        var cut = reply
        cut[32] = 0xff
        #expect(RouteMessage.parse(cut, sequence: 1) == .link(LinkDescription(index: 5, isUp: true)))
    }
}

/// The kernel's own answers (no privileges needed to look interfaces up).
@Suite("rtnetlink on this host")
struct RouteNetlinkTests {
    @Test func loopbackIsFoundAndAMissingInterfaceIsNil() throws {
        let lo = try #require(try RouteNetlink().link(named: "lo"))
        #expect(lo.name == "lo" && lo.index > 0 && lo.kind == nil && lo.mtu != nil)
        #expect(try RouteNetlink().link(named: "rtv-no-such") == nil)
    }
}
