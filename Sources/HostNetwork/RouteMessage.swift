import CLinux

/// rtnetlink link messages as bytes (netlink is host byte order: little-endian here), built and
/// parsed in Swift so their layout is tested without a kernel; only the socket is C's
/// (`clinux_netlink_route_exchange`).
public enum RouteMessage {
    /// struct nlmsghdr: length, type, flags, sequence, port.
    static let headerSize = 16
    /// struct ifinfomsg: family, pad, type, index, flags, change.
    static let linkHeaderSize = 16

    /// RTM_GETLINK for the interface `name` (IFLA_IFNAME): the kernel answers with one
    /// RTM_NEWLINK describing it, or an error (ENODEV when there is none).
    public static func getLink(name: String, sequence: UInt32) -> [UInt8] {
        message(type: CLINUX_RTM_GETLINK, flags: CLINUX_NLM_F_REQUEST, sequence: sequence, index: 0, flags: 0, change: 0,
                attributes: attribute(CLINUX_IFLA_IFNAME, Array(name.utf8) + [0]))
    }

    /// RTM_SETLINK on interface `index`: its MTU, its master (a bridge's index) and IFF_UP, each
    /// only when given; acknowledged (NLM_F_ACK), so the answer is an error message with 0 or -errno.
    /// The kernel applies the MTU before the master and the flags last (do_setlink), so the port
    /// joins the bridge with its final MTU and comes up on it.
    public static func setLink(index: Int32, mtu: UInt32? = nil, master: Int32? = nil, up: Bool = false, sequence: UInt32) -> [UInt8] {
        var attributes: [UInt8] = []
        if let mtu { attributes += attribute(CLINUX_IFLA_MTU, bytes(mtu)) }
        if let master { attributes += attribute(CLINUX_IFLA_MASTER, bytes(UInt32(bitPattern: master))) }
        return message(type: CLINUX_RTM_SETLINK, flags: CLINUX_NLM_F_REQUEST | CLINUX_NLM_F_ACK, sequence: sequence, index: index,
                       flags: up ? CLINUX_IFF_UP : 0, change: up ? CLINUX_IFF_UP : 0, attributes: attributes)
    }

    /// What the kernel answered to one request.
    public enum Reply: Equatable, Sendable {
        /// NLMSG_ERROR with 0: the request was applied.
        case acknowledged
        /// NLMSG_ERROR with -errno.
        case failed(errno: Int32)
        case link(LinkDescription)
    }

    /// The reply to request `sequence`; nil for bytes that are not a whole netlink message of a
    /// known kind answering it.
    public static func parse(_ reply: [UInt8], sequence: UInt32) -> Reply? {
        guard reply.count >= headerSize, let length = Int(exactly: u32(reply, 0)), length >= headerSize, length <= reply.count,
              u32(reply, 8) == sequence else { return nil }
        let type = u16(reply, 4)
        if type == CLINUX_NLMSG_ERROR {
            guard length >= headerSize + 4 else { return nil }
            let code = Int32(bitPattern: u32(reply, headerSize))
            return code == 0 ? .acknowledged : .failed(errno: -code)
        }
        guard type == CLINUX_RTM_NEWLINK, length >= headerSize + linkHeaderSize else { return nil }
        var link = LinkDescription(index: Int32(bitPattern: u32(reply, headerSize + 4)), isUp: u32(reply, headerSize + 8) & CLINUX_IFF_UP != 0)
        for (type, value) in attributes(reply, from: headerSize + linkHeaderSize, to: length) {
            switch type {
            case CLINUX_IFLA_IFNAME: link.name = string(value)
            case CLINUX_IFLA_MTU where value.count >= 4: link.mtu = u32(value, 0)
            case CLINUX_IFLA_MASTER where value.count >= 4: link.master = Int32(bitPattern: u32(value, 0))
            case CLINUX_IFLA_LINKINFO:
                for (inner, data) in attributes(value, from: 0, to: value.count) where inner == CLINUX_IFLA_INFO_KIND { link.kind = string(data) }
            default: break
            }
        }
        return .link(link)
    }

    // MARK: encoding

    static func message(type: UInt16, flags messageFlags: UInt16, sequence: UInt32, index: Int32, flags: UInt32, change: UInt32,
                        attributes: [UInt8]) -> [UInt8] {
        let length = UInt32(headerSize + linkHeaderSize + attributes.count)
        // ifinfomsg: AF_UNSPEC, pad, ARPHRD 0, index, flags, change mask.
        return bytes(length) + bytes(type) + bytes(messageFlags) + bytes(sequence) + bytes(UInt32(0))
            + [0, 0] + bytes(UInt16(0)) + bytes(UInt32(bitPattern: index)) + bytes(flags) + bytes(change) + attributes
    }

    /// struct rtattr (length, type) and the value, padded to 4 bytes (RTA_ALIGN).
    static func attribute(_ type: UInt16, _ value: [UInt8]) -> [UInt8] {
        let length = 4 + value.count
        return bytes(UInt16(length)) + bytes(type) + value + [UInt8](repeating: 0, count: (4 - length % 4) % 4)
    }

    static func bytes<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
        (0..<T.bitWidth / 8).map { UInt8(truncatingIfNeeded: value >> ($0 * 8)) }
    }

    // MARK: decoding (every length checked against the message)

    static func u16(_ b: [UInt8], _ at: Int) -> UInt16 { UInt16(b[at]) | UInt16(b[at + 1]) << 8 }
    static func u32(_ b: [UInt8], _ at: Int) -> UInt32 { UInt32(u16(b, at)) | UInt32(u16(b, at + 2)) << 16 }

    /// The attributes in b[from..<to], stopping at the first malformed one.
    static func attributes(_ b: [UInt8], from: Int, to end: Int) -> [(UInt16, [UInt8])] {
        var out: [(UInt16, [UInt8])] = []
        var at = from
        while at + 4 <= end {
            let length = Int(u16(b, at))
            guard length >= 4, at + length <= end else { break }
            // NLA_TYPE_MASK: the top two bits flag nested and byte-order attributes.
            out.append((u16(b, at + 2) & 0x3fff, Array(b[(at + 4)..<(at + length)])))
            at += (length + 3) & ~3
        }
        return out
    }

    static func string(_ value: [UInt8]) -> String {
        String(decoding: value.prefix { $0 != 0 }, as: UTF8.self)
    }
}

/// One interface as RTM_NEWLINK describes it.
public struct LinkDescription: Equatable, Sendable {
    public var index: Int32
    public var name = ""
    public var mtu: UInt32? = nil
    /// IFLA_INFO_KIND: "bridge", "tun", "veth"…; nil for a plain device (a NIC, lo).
    public var kind: String? = nil
    /// The bridge (or bond) it is a port of.
    public var master: Int32? = nil
    public var isUp = false

    public init(index: Int32, name: String = "", mtu: UInt32? = nil, kind: String? = nil, master: Int32? = nil, isUp: Bool = false) {
        self.index = index; self.name = name; self.mtu = mtu; self.kind = kind; self.master = master; self.isUp = isUp
    }
}
