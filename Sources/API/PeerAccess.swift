import Posix
#if canImport(Glibc)
import Glibc
#endif

/// Who may use the control API: root, the daemon's own uid, and members of the access group
/// (`rtvisor`), by the peer credentials the kernel attaches to the connection (SO_PEERCRED and
/// SO_PEERGROUPS, taken at connect(): not a pid to look up later, which may be gone or reused), not
/// by the socket file's mode alone (a misconfigured mode or a leaked fd must not open it up).
public struct PeerAccess: Sendable, Equatable {
    public var daemonUID: uid_t
    public var groupID: gid_t?

    public init(daemonUID: uid_t = geteuid(), groupName: String?) {
        self.daemonUID = daemonUID
        groupID = groupName.flatMap { getgrnam($0) }.map { $0.pointee.gr_gid }
    }
    public init(daemonUID: uid_t, groupID: gid_t?) { self.daemonUID = daemonUID; self.groupID = groupID }

    public struct Peer: Sendable, Equatable {
        public var pid: pid_t, uid: uid_t, gid: gid_t
        /// Supplementary groups (SO_PEERGROUPS on the connection); empty when unknown.
        public var groups: [gid_t]
        public init(pid: pid_t, uid: uid_t, gid: gid_t, groups: [gid_t]) { self.pid = pid; self.uid = uid; self.gid = gid; self.groups = groups }
    }

    public func allows(_ p: Peer) -> Bool {
        if p.uid == 0 || p.uid == daemonUID { return true }
        guard let groupID else { return false }
        return p.gid == groupID || p.groups.contains(groupID)
    }

    public func refusal(_ p: Peer) -> String {
        "uid \(p.uid) (pid \(p.pid)) may not use rtvisord's API: only root and members of the \(groupID.map { "access group (gid \($0))" } ?? "access group, which does not exist on this host,") may"
    }

    /// SO_PEERGROUPS (Linux 4.13) is read through NIO's fixed-size socket options, which
    /// zero the buffer and drop the length the kernel returns: room for this many groups; a peer
    /// with more gets ERANGE and counts as having none (refused unless its uid or primary gid
    /// admits it).
    public typealias GroupBuffer = InlineArray<1024, gid_t>
    /// A zero-byte option value: SO_PEERGROUPS into it succeeds only for a peer without
    /// supplementary groups (ERANGE otherwise), which tells "no groups" from "group 0".
    public struct NoGroups { public init() {} }

    /// The groups in SO_PEERGROUPS' answer: the kernel returns them sorted (`groups_sort`), so a
    /// 0 can only be a group at index 0 of a non-empty list, and every other 0 is the buffer's
    /// zero fill.
    public static func groups(in buffer: GroupBuffer, nonEmpty: Bool) -> [gid_t] {
        guard nonEmpty else { return [] }
        var out: [gid_t] = buffer[0] == 0 ? [0] : []
        for i in buffer.indices where buffer[i] != 0 { out.append(buffer[i]) }
        return out
    }
}
