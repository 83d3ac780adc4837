/// `GET /v1/channels` (docs/channels.md, docs/api.yaml): the shared-memory channels the
/// definitions declare, their peers, and whether rtvisord holds their memory yet.
public struct ChannelList: Codable, Sendable, Equatable {
    public var channels: [ChannelInfo]
    public init(channels: [ChannelInfo]) { self.channels = channels }
}

public struct ChannelInfo: Codable, Sendable, Equatable {
    public var name: String
    public var sizeMiB: Int
    public var vectors: Int
    /// rtvisord created the memory and doorbells (a peer has started since it started); they
    /// stay until rtvisord ends.
    public var allocated: Bool
    public var peers: [ChannelPeer]

    public init(name: String, sizeMiB: Int, vectors: Int, allocated: Bool, peers: [ChannelPeer]) {
        self.name = name; self.sizeMiB = sizeMiB; self.vectors = vectors; self.allocated = allocated; self.peers = peers
    }

    enum CodingKeys: String, CodingKey {
        case name, sizeMiB = "size_mib", vectors, allocated, peers
    }
}

/// One VM defined on a channel, by its peer id (IVPosition).
public struct ChannelPeer: Codable, Sendable, Equatable {
    public var peer: Int
    public var vm: String
    public var state: VMStateName
    public var pid: Int32?
    public init(peer: Int, vm: String, state: VMStateName, pid: Int32?) { self.peer = peer; self.vm = vm; self.state = state; self.pid = pid }
}
