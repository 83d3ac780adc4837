/// One shared-memory channel a VM is attached to (`channels[]`, docs/channels.md): an
/// ivshmem-compatible PCI device whose BAR2 is memory shared with the channel's other peers, and
/// whose doorbell interrupts a peer's MSI-X vector. Every VM on the channel declares it with the
/// same name, size and vector count, and its own peer id.
public struct ChannelSettings: Equatable, Sendable {
    public var name: String
    public var sizeMiB: Int
    /// This VM's IVPosition on the channel, 0..<maxPeers.
    public var peer: Int
    /// MSI-X vectors (doorbell targets) of each peer.
    public var vectors: Int

    public static let keys: Set<String> = ["name", "size_mib", "peer", "vectors"]
    /// Peer ids per channel: the daemon keeps one eventfd per (peer, vector) for all of them, so
    /// a peer defined later can be rung without restarting the others.
    public static let maxPeers = 16
    public static let maxVectors = 8
    /// BAR2 must be a power of two; 1 GiB keeps it inside the 32-bit PCI window's reach.
    public static let sizeRange = 1...1024

    public init(name: String, sizeMiB: Int, peer: Int, vectors: Int = 1) {
        self.name = name; self.sizeMiB = sizeMiB; self.peer = peer; self.vectors = vectors
    }

    public var sizeBytes: UInt64 { UInt64(sizeMiB) << 20 }
}

extension Validator {
    mutating func channels(_ value: JSONValue?) -> [ChannelSettings] {
        guard let value else { return [] }
        guard case let .array(items) = value else { fail("$.channels", "must be an array of channel objects, got \(value.kindDescription)"); return [] }
        var channels: [ChannelSettings] = []
        var names: [String: Int] = [:]
        for (i, item) in items.enumerated() {
            let at = "$.channels[\(i)]"
            guard case let .object(o) = item else { fail(at, "must be an object, got \(item.kindDescription)"); continue }
            for key in o.keys.sorted() where !ChannelSettings.keys.contains(key) {
                fail("\(at).\(key)", "unknown key" + suggestion(key, ChannelSettings.keys))
            }
            let name = channelName(o["name"], at: "\(at).name")
            let size = channelInteger(o, "size_mib", at: at, range: ChannelSettings.sizeRange, required: true)
            if let size, size & (size - 1) != 0 {
                fail("\(at).size_mib", "must be a power of two (BAR2 is naturally aligned), got \(size)")
            }
            let peer = channelInteger(o, "peer", at: at, range: 0...(ChannelSettings.maxPeers - 1), required: true)
            let vectors = channelInteger(o, "vectors", at: at, range: 1...ChannelSettings.maxVectors, required: false) ?? 1
            guard let name, let size, size & (size - 1) == 0, let peer else { continue }
            if let first = names[name] { fail("\(at).name", "channel \"\(name)\" is already attached by $.channels[\(first)]"); continue }
            names[name] = i
            channels.append(ChannelSettings(name: name, sizeMiB: size, peer: peer, vectors: vectors))
        }
        return channels
    }

    private mutating func channelName(_ value: JSONValue?, at: String) -> String? {
        guard let value else { fail(at, "is required"); return nil }
        guard case let .string(s) = value, !s.isEmpty, s.count <= 64,
              s.unicodeScalars.allSatisfy({ ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) || $0 == "-" || $0 == "_" }) else {
            fail(at, "must be 1–64 characters of letters, digits, '-' and '_', got \(value.kindDescription)")
            return nil
        }
        return s
    }

    private mutating func channelInteger(_ o: [String: JSONValue], _ key: String, at: String, range: ClosedRange<Int>, required: Bool) -> Int? {
        guard let v = o[key] else { if required { fail("\(at).\(key)", "is required") }; return nil }
        guard case let .integer(i) = v, let n = Int(exactly: i), range.contains(n) else {
            fail("\(at).\(key)", "must be an integer from \(range.lowerBound) to \(range.upperBound), got \(v.kindDescription)")
            return nil
        }
        return n
    }
}

/// The checks across definitions that one definition cannot make alone: two VMs claiming the same
/// peer id on a channel, or declaring it with a different size or vector count. Definitions are
/// taken in order; the later one of a conflicting pair is the one reported.
public enum ChannelClaims {
    public struct Claim: Sendable {
        public var file: String
        public var vm: String
        public var channels: [ChannelSettings]
        public init(file: String, vm: String, channels: [ChannelSettings]) { self.file = file; self.vm = vm; self.channels = channels }
    }

    /// Issues of `claims[i]`, by index, against the claims before it that were not refused.
    public static func conflicts(_ claims: [Claim]) -> [Int: [DefinitionIssue]] {
        var accepted: [(vm: String, file: String, settings: ChannelSettings)] = []
        var issues: [Int: [DefinitionIssue]] = [:]
        for (index, claim) in claims.enumerated() {
            var mine: [DefinitionIssue] = []
            for (i, channel) in claim.channels.enumerated() {
                let at = "$.channels[\(i)]"
                let others = accepted.filter { $0.settings.name == channel.name && $0.vm != claim.vm }
                if let owner = others.first(where: { $0.settings.peer == channel.peer }) {
                    mine.append(DefinitionIssue(file: claim.file, path: "\(at).peer", reason: "peer \(channel.peer) of channel \"\(channel.name)\" is already claimed by VM \"\(owner.vm)\" (\(owner.file))"))
                }
                // The accepted peers agree with each other, so the first speaks for all.
                guard let other = others.first else { continue }
                if other.settings.sizeMiB != channel.sizeMiB {
                    mine.append(DefinitionIssue(file: claim.file, path: "\(at).size_mib", reason: "channel \"\(channel.name)\" is \(other.settings.sizeMiB) MiB in VM \"\(other.vm)\" (\(other.file)), here \(channel.sizeMiB)"))
                }
                if other.settings.vectors != channel.vectors {
                    mine.append(DefinitionIssue(file: claim.file, path: "\(at).vectors", reason: "channel \"\(channel.name)\" has \(other.settings.vectors) vectors in VM \"\(other.vm)\" (\(other.file)), here \(channel.vectors)"))
                }
            }
            if mine.isEmpty {
                accepted += claim.channels.map { (claim.vm, claim.file, $0) }
            } else {
                issues[index] = mine
            }
        }
        return issues
    }
}
