import CLinux
import Posix
#if canImport(Glibc)
import Glibc
#endif

/// A failed rtnetlink request: which one and the kernel's errno.
public struct LinkError: Error, Equatable, CustomStringConvertible {
    public let operation: String
    public let errno: Int32
    public init(operation: String, errno: Int32) { self.operation = operation; self.errno = errno }
    public var description: String {
        "\(operation): \(errnoMessage(errno))" + (errno == EPERM ? " (needs CAP_NET_ADMIN in the interface's network namespace)" : "")
    }
}

/// The host's interfaces as far as a VM's taps need them: look one up, set a port's MTU, master
/// and IFF_UP. A protocol so `BridgePort`'s rules are tested without a kernel.
public protocol LinkControl: Sendable {
    /// The interface `name`; nil when there is none (ENODEV).
    func link(named name: String) throws(LinkError) -> LinkDescription?
    func setLink(index: Int32, mtu: UInt32?, master: Int32?, up: Bool) throws(LinkError)
}

/// `LinkControl` over rtnetlink (NETLINK_ROUTE), in the caller's network namespace. One socket per
/// request: a VMM makes a handful of them while it builds its NICs, before its jail and filters.
public struct RouteNetlink: LinkControl {
    /// RTM_NEWLINK for a bridge with its IFLA_LINKINFO data is ~2 KiB; room for much more.
    static let replyCapacity = 32 * 1024

    public init() {}

    public func link(named name: String) throws(LinkError) -> LinkDescription? {
        switch try exchange(RouteMessage.getLink(name: name, sequence: 1), sequence: 1, operation: "RTM_GETLINK \(name)") {
        case .link(let link): return link
        case .failed(errno: ENODEV): return nil
        case .failed(let code): throw LinkError(operation: "RTM_GETLINK \(name)", errno: code)
        case .acknowledged: throw LinkError(operation: "RTM_GETLINK \(name)", errno: EPROTO)
        }
    }

    public func setLink(index: Int32, mtu: UInt32?, master: Int32?, up: Bool) throws(LinkError) {
        let operation = "RTM_SETLINK index \(index)"
        switch try exchange(RouteMessage.setLink(index: index, mtu: mtu, master: master, up: up, sequence: 2), sequence: 2, operation: operation) {
        case .acknowledged: return
        case .failed(let code): throw LinkError(operation: operation, errno: code)
        case .link: throw LinkError(operation: operation, errno: EPROTO)
        }
    }

    private func exchange(_ request: [UInt8], sequence: UInt32, operation: String) throws(LinkError) -> RouteMessage.Reply {
        var reply = [UInt8](repeating: 0, count: Self.replyCapacity)
        let n = clinux_netlink_route_exchange(request, UInt(request.count), &reply, UInt(reply.count))
        guard n >= 0 else { throw LinkError(operation: operation, errno: errno) }
        guard let parsed = RouteMessage.parse(Array(reply.prefix(n)), sequence: sequence) else { throw LinkError(operation: operation, errno: EPROTO) }
        return parsed
    }
}
