import CDaemonSupport
import Logging
import NIOCore
import Posix
#if canImport(Glibc)
import Glibc
#endif

/// rtvisord's side of the read-only listeners (docs/metrics.md): it binds them as root and
/// passes them to the API front, which serves them with `MetricsRouter`, in this order.
public enum MetricsListeners {
    /// Connections waiting to be accepted (scrapers and browsers, a few at a time).
    static let backlog: Int32 = 64

    /// metrics.sock: mode 0666 (connecting to a unix socket takes write permission).
    public static func bindSocket(_ path: String, logger: Logger) throws -> Int32 {
        try HTTPServer.bindListeningSocket(path, groupName: nil, mode: 0o666, logger: logger)
    }

    /// The TCP listener rtvisord.json enables (an address literal and a port).
    public static func bindTCP(address: String, port: Int) throws -> Int32 {
        let fd = cdaemon_listen_tcp_backlog(address, String(port), backlog)
        guard fd >= 0 else {
            let code = errno
            // RestrictAddressFamilies= of the shipped unit: the drop-in that lifts it.
            let hint = code == EAFNOSUPPORT ? "; rtvisord.service allows Unix sockets only: the metrics-tcp drop-in allows TCP (docs/metrics.md)" : ""
            throw IOError(errnoCode: code, reason: "metrics TCP listener on \(endpoint((address, port))) (rtvisord.json $.metrics.tcp)\(hint)")
        }
        return fd
    }

    /// `127.0.0.1:9595`, `[::1]:9595`.
    public static func endpoint(_ tcp: (address: String, port: Int)) -> String {
        tcp.address.contains(":") ? "[\(tcp.address)]:\(tcp.port)" : "\(tcp.address):\(tcp.port)"
    }
}
