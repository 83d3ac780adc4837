import CDaemonSupport
import Logging
import NIOCore
import Posix
#if canImport(Glibc)
import Glibc
#endif

/// rtvisord's side of the read-only listeners (docs/metrics.md): it binds them as root and
/// passes them to the API front, which serves them with `MetricsRouter`.
public enum MetricsListeners {
    /// Connections waiting to be accepted (scrapers and browsers, a few at a time).
    static let backlog: Int32 = 64

    /// metrics.sock (mode 0666: connecting to a unix socket takes write permission) and, when
    /// rtvisord.json enables it, the TCP listener (an address literal and a port); in
    /// `APIFrontSupervisor`'s order.
    public static func bind(socketPath: String, tcp: (address: String, port: Int)?, logger: Logger) throws -> [Int32] {
        let unix = try HTTPServer.bindListeningSocket(socketPath, groupName: nil, mode: 0o666, logger: logger)
        guard let tcp else { return [unix] }
        let fd = cdaemon_listen_tcp_backlog(tcp.address, String(tcp.port), backlog)
        guard fd >= 0 else {
            let code = errno
            close(unix)
            throw IOError(errnoCode: code, reason: "metrics TCP listener on \(endpoint(tcp)) (rtvisord.json $.metrics.tcp)")
        }
        return [unix, fd]
    }

    /// `127.0.0.1:9595`, `[::1]:9595`.
    public static func endpoint(_ tcp: (address: String, port: Int)) -> String {
        tcp.address.contains(":") ? "[\(tcp.address)]:\(tcp.port)" : "\(tcp.address):\(tcp.port)"
    }
}
