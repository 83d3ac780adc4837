import Posix
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Starting and stopping VMs from the dashboard (docs/metrics.md), off unless rtvisord.json names
/// a group (`metrics.dashboard_actions_group`). Authentication is a bearer token: rtvisord makes
/// a new random one at each start and writes it to `RUN/dashboard-token`, mode 0640, owner root,
/// group that group, so only root and the group's members can read it; the dashboard sends it
/// as `Authorization: Bearer …`. The front gets it in its environment (readable by its own uid
/// and root only), never on a command line, which every local user can read.
public enum DashboardActions {
    public static let environmentVariable = "RTVISOR_DASHBOARD_TOKEN"
    /// Set to 1 in the front's environment when rtvisord.json's `metrics.dashboard_console` is on.
    public static let consoleEnvironmentVariable = "RTVISOR_DASHBOARD_CONSOLE"
    public static let tokenFile = "dashboard-token"

    /// A fresh token: 32 random bytes as hex.
    public static func newToken() -> String {
        var generator = SystemRandomNumberGenerator()
        return (0..<32).map { _ in
            let byte = UInt8.random(in: 0...255, using: &generator)
            return (byte < 16 ? "0" : "") + String(byte, radix: 16)
        }.joined()
    }

    /// Writes `token` for `group` to `RUNDIR/dashboard-token`: created 0600 under another name,
    /// given to root:group and 0640, then renamed into place, so no moment shows it to others.
    public static func writeToken(_ token: String, runDirectory: String, group: String) throws(TokenError) {
        guard let entry = getgrnam(group) else { throw TokenError("group \(group) (rtvisord.json $.metrics.dashboard_actions_group) does not exist") }
        let gid = entry.pointee.gr_gid
        let path = runDirectory + "/" + tokenFile, temporary = path + ".new"
        unlink(temporary)
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw TokenError("\(temporary): \(errnoMessage())") }
        defer { close(fd) }
        do {
            guard fchown(fd, 0, gid) == 0 || fchown(fd, geteuid(), gid) == 0 else { throw Errno(rawValue: errno) }
            guard fchmod(fd, 0o640) == 0 else { throw Errno(rawValue: errno) }
            try writeAll(fd, Array((token + "\n").utf8))
            guard rename(temporary, path) == 0 else { throw Errno(rawValue: errno) }
        } catch {
            unlink(temporary)
            throw TokenError("\(path): \(error)")
        }
    }

    /// Whether an `Authorization` header carries `token` (compared in constant time).
    public static func authorizes(_ header: String?, token: String) -> Bool {
        guard let header, header.hasPrefix("Bearer ") else { return false }
        let given = Array(header.dropFirst("Bearer ".count).utf8), expected = Array(token.utf8)
        guard given.count == expected.count else { return false }
        return zip(given, expected).reduce(UInt8(0)) { $0 | ($1.0 ^ $1.1) } == 0
    }

    public struct TokenError: Error, CustomStringConvertible {
        public let description: String
        init(_ description: String) { self.description = description }
    }
}
