#if canImport(Glibc)
import Glibc
#endif

/// sd_notify(3) without libsystemd: newline-separated `KEY=VALUE` lines in one datagram to the
/// unix socket named by `$NOTIFY_SOCKET` ('@' = abstract namespace). Without `$NOTIFY_SOCKET`
/// (not started by systemd) every call is a no-op.
public final class SystemdNotifier: Sendable {
    public let socketPath: String?
    /// `$WATCHDOG_USEC`, when set for this process (`$WATCHDOG_PID` absent or ours).
    public let watchdogMicroseconds: UInt64?
    private let fd: Int32

    public init(environment: [String: String]) {
        let path = environment["NOTIFY_SOCKET"].flatMap { $0.isEmpty ? nil : $0 }
        socketPath = path
        watchdogMicroseconds = Self.watchdogInterval(environment: environment, pid: getpid())
        fd = path == nil ? -1 : socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    }

    deinit { if fd >= 0 { close(fd) } }

    /// sd_watchdog_enabled(3)'s rules: WATCHDOG_USEC must be a positive integer and, when
    /// WATCHDOG_PID is set, it must name this process.
    public static func watchdogInterval(environment: [String: String], pid: pid_t) -> UInt64? {
        guard let s = environment["WATCHDOG_USEC"], let usec = UInt64(s), usec > 0 else { return nil }
        if let p = environment["WATCHDOG_PID"], Int32(p) != pid { return nil }
        return usec
    }

    /// How often to send WATCHDOG=1: half the interval, as sd_watchdog_enabled(3) recommends.
    public var watchdogPingIntervalNanoseconds: UInt64? { watchdogMicroseconds.map { $0 * 1000 / 2 } }

    public enum State: Sendable, Equatable {
        case ready, reloading, stopping, watchdog
        case status(String)
        case mainPID(pid_t)

        public var line: String {
            switch self {
            case .ready: "READY=1"
            case .reloading: "RELOADING=1"
            case .stopping: "STOPPING=1"
            case .watchdog: "WATCHDOG=1"
            // A STATUS value is one line: newlines would start a new assignment.
            case let .status(s): "STATUS=" + String(s.map { $0 == "\n" ? " " : $0 })
            case let .mainPID(p): "MAINPID=\(p)"
            }
        }
    }

    public static func message(_ states: [State]) -> String { states.map(\.line).joined(separator: "\n") + "\n" }

    /// Returns false when not under systemd or the send failed.
    @discardableResult
    public func notify(_ states: State...) -> Bool {
        guard let socketPath, fd >= 0 else { return false }
        let msg = Array(Self.message(states).utf8)
        return sendDatagram(fd: fd, path: socketPath, msg) >= 0
    }
}

func sendDatagram(fd: Int32, path: String, _ data: [UInt8]) -> Int {
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    var bytes = Array(path.utf8)
    let abstract = bytes.first == UInt8(ascii: "@")
    if abstract { bytes[0] = 0 }
    let cap = MemoryLayout.size(ofValue: addr.sun_path) - 1
    if bytes.count > cap { return -1 }
    withUnsafeMutableBytes(of: &addr.sun_path) { raw in
        for (i, b) in bytes.enumerated() { raw[i] = b }
    }
    let len = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + (abstract ? 0 : 1))
    return data.withUnsafeBytes { buf in
        withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                sendto(fd, buf.baseAddress, buf.count, Int32(MSG_NOSIGNAL), $0, len)
            }
        }
    }
}
