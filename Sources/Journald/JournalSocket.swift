import CDaemonSupport
import Posix
#if canImport(Glibc)
import Glibc
#endif

/// Sends entries to journald's native socket. Datagrams are sent unconnected, so a journald
/// restart is survived; an entry too big for one datagram goes through a sealed memfd (the
/// protocol's large-entry path). Thread-safe: each send is one syscall on a shared fd.
public final class JournalSocket: Sendable {
    public static let defaultPath = "/run/systemd/journal/socket"
    public let path: String
    private let fd: Int32

    /// nil when the socket file does not exist (no journald: callers fall back to stderr).
    public init?(path: String = JournalSocket.defaultPath) {
        var st = stat()
        guard stat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFSOCK else { return nil }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        _ = cdaemon_set_sndbuf(fd, 8 << 20)
        self.fd = fd
        self.path = path
    }

    deinit { close(fd) }

    public enum SendError: Error, Equatable { case errno(Int32) }

    /// Entries above this go through a memfd directly: the datagram limit depends on the
    /// host's net.core.wmem_max, and journald handles big entries best as a sealed file.
    public static let datagramLimit = 128 * 1024

    public func send(_ entry: JournalEntry) throws(SendError) {
        let data = entry.encoded()
        if data.count > Self.datagramLimit { return try sendViaMemfd(data) }
        let n = data.withUnsafeBytes { cdaemon_send_datagram(fd, path, $0.baseAddress, $0.count) }
        if n >= 0 { return }
        let err = errno
        guard err == EMSGSIZE || err == ENOBUFS else { throw .errno(err) }
        try sendViaMemfd(data)
    }

    private func sendViaMemfd(_ data: [UInt8]) throws(SendError) {
        let mfd = cdaemon_memfd("journal-entry")
        guard mfd >= 0 else { throw .errno(errno) }
        defer { close(mfd) }
        do { try writeAll(mfd, data) } catch { throw .errno(error.rawValue) }
        guard cdaemon_seal_all(mfd) == 0 else { throw .errno(errno) }
        guard cdaemon_send_fd(fd, path, mfd) >= 0 else { throw .errno(errno) }
    }
}
