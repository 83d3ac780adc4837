/// How a VMM reaches one shared-memory channel of its definition (docs/channels.md): the memory
/// as a descriptor rtvisord passes at spawn (a sealed memfd) or as a file a person names (two
/// hand-started VMMs sharing `/dev/shm/NAME`), and the doorbells as inherited eventfds.
/// One `--channel` argument each: `NAME,fd=N[,doorbells=M]` or `NAME,file=PATH`.
public struct ChannelAttachment: Codable, Equatable, Sendable {
    public enum Memory: Codable, Equatable, Sendable, CustomStringConvertible {
        case descriptor(Int32)
        case file(String)

        public var description: String {
            switch self {
            case let .descriptor(fd): "inherited descriptor \(fd)"
            case let .file(path): path
            }
        }
    }

    public var name: String
    public var memory: Memory
    /// The first of the channel's doorbell eventfds, consecutive descriptors from here: peer p's
    /// vector v is `doorbells + p * vectors + v`, for every peer id the channel allows. nil: no
    /// doorbells (a file-backed channel); the Doorbell register then does nothing.
    public var doorbells: Int32?

    public init(name: String, memory: Memory, doorbells: Int32? = nil) {
        self.name = name; self.memory = memory; self.doorbells = doorbells
    }

    /// The doorbell eventfd of `peer`'s `vector`, for a channel with `vectors` per peer.
    public func doorbell(peer: Int, vector: Int, vectors: Int) -> Int32? {
        doorbells.map { $0 + Int32(peer * vectors + vector) }
    }

    public var encoded: String {
        switch memory {
        case let .descriptor(fd): "\(name),fd=\(fd)" + (doorbells.map { ",doorbells=\($0)" } ?? "")
        case let .file(path): "\(name),file=\(path)" + (doorbells.map { ",doorbells=\($0)" } ?? "")
        }
    }

    /// Parses `encoded`; nil when it is not one.
    public init?(encoded: String) {
        var fields = encoded.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        guard fields.count >= 2, !fields[0].isEmpty else { return nil }
        name = fields.removeFirst()
        var memory: Memory?
        doorbells = nil
        for field in fields {
            guard let eq = field.firstIndex(of: "=") else { return nil }
            let key = field[..<eq], value = String(field[field.index(after: eq)...])
            switch key {
            case "fd": guard memory == nil, let fd = Int32(value), fd >= 0 else { return nil }; memory = .descriptor(fd)
            case "file": guard memory == nil, value.hasPrefix("/") else { return nil }; memory = .file(value)
            case "doorbells": guard doorbells == nil, let fd = Int32(value), fd >= 0 else { return nil }; doorbells = fd
            default: return nil
            }
        }
        guard let memory else { return nil }
        self.memory = memory
    }
}
