/// A tap made a port of a host bridge (`"nets": [{"bridge": …}]`), or given its MTU: the rules,
/// over any `LinkControl`.
public enum BridgePort {
    /// Which definition field a failure is about (`$.nets[i].FIELD: reason`).
    public enum Field: String, Sendable { case bridge, mtu, tap }

    public struct Failure: Error, Equatable, CustomStringConvertible {
        public let field: Field
        public let reason: String
        public var description: String { "\(field.rawValue): \(reason)" }
    }

    /// What was applied, for the VMM's log.
    public struct Applied: Equatable, Sendable {
        public var bridge: String?
        public var mtu: UInt32?
    }

    /// Sets the tap `tap`'s MTU (`mtu`, else the bridge's, so that joining does not lower the
    /// bridge's) and, with a `bridge`, makes it a port of that bridge and brings it up. The bridge
    /// must exist and be one; an `mtu` above the bridge's is refused (frames that size would be
    /// dropped at the bridge's other ports).
    public static func attach(tap: String, bridge: String?, mtu: UInt32?, links: some LinkControl) throws(Failure) -> Applied {
        guard bridge != nil || mtu != nil else { return Applied() }
        var master: Int32? = nil
        var portMTU = mtu
        if let bridge {
            let found: LinkDescription?
            do { found = try links.link(named: bridge) } catch { throw Failure(field: .bridge, reason: "\(bridge): \(error)") }
            guard let found else { throw Failure(field: .bridge, reason: "\(bridge): no such bridge") }
            guard found.kind == "bridge" else {
                throw Failure(field: .bridge, reason: "\(bridge) is not a bridge (\(found.kind.map { "a \($0) interface" } ?? "a network device"))")
            }
            if let mtu, let bridgeMTU = found.mtu, mtu > bridgeMTU {
                throw Failure(field: .mtu, reason: "\(mtu) exceeds the MTU of bridge \(bridge) (\(bridgeMTU)); raise the bridge's first")
            }
            portMTU = mtu ?? found.mtu
            master = found.index
        }
        let field: Field = bridge != nil ? .bridge : .mtu
        let port: LinkDescription?
        do { port = try links.link(named: tap) } catch { throw Failure(field: field, reason: "tap \(tap): \(error)") }
        guard let port else { throw Failure(field: .tap, reason: "\(tap): the tap is gone") }
        do { try links.setLink(index: port.index, mtu: portMTU, master: master, up: bridge != nil) } catch {
            throw Failure(field: field, reason: "tap \(tap)\(bridge.map { " on bridge \($0)" } ?? ""): \(error)")
        }
        return Applied(bridge: bridge, mtu: portMTU)
    }
}
