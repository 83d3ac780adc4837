import Posix
#if canImport(Glibc)
import Glibc
#endif

/// Who may use the control API: root, the daemon's own uid, and members of the access group
/// (`rtvisor`), by the peer credentials the kernel attaches to the connection (SO_PEERCRED), not
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
        /// Supplementary groups (from /proc/PID/status); empty when unknown.
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

    /// The supplementary groups of a process, from /proc.
    public static func groups(of pid: pid_t) -> [gid_t] {
        for line in (HostFiles.read("/proc/\(pid)/status") ?? "").split(separator: "\n") where line.hasPrefix("Groups:") {
            return line.dropFirst(7).split(whereSeparator: { $0 == " " || $0 == "\t" }).compactMap { gid_t($0) }
        }
        return []
    }
}
