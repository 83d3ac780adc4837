#if canImport(Glibc)
import Glibc
#endif

/// A process named so that pid reuse cannot fool it: its pid and its start time (field 22 of
/// /proc/PID/stat, clock ticks since boot).
public struct ProcessIdentity: Equatable, Sendable, CustomStringConvertible {
    public let pid: pid_t
    public let startTime: UInt64
    public init(pid: pid_t, startTime: UInt64) { self.pid = pid; self.startTime = startTime }

    /// The calling process.
    public static func current() -> ProcessIdentity? { of(getpid()) }

    /// The process now running as `pid`, if any.
    public static func of(_ pid: pid_t, procRoot: String = "/proc") -> ProcessIdentity? {
        guard let f = statFields(pid, procRoot: procRoot), f.count > 19, let start = UInt64(f[19]) else { return nil }
        return ProcessIdentity(pid: pid, startTime: start)
    }

    /// The process state letter of `pid` (R, S, D, T = stopped, Z = zombie, …).
    public static func stateLetter(of pid: pid_t, procRoot: String = "/proc") -> Character? {
        statFields(pid, procRoot: procRoot)?.first?.first
    }

    /// Still the same process, and not a zombie (`kill(pid, 0)` succeeds on zombies).
    public func isRunning(procRoot: String = "/proc") -> Bool {
        guard let f = Self.statFields(pid, procRoot: procRoot), f.count > 19 else { return false }
        return UInt64(f[19]) == startTime && f[0] != "Z" && f[0] != "X"
    }

    /// "PID START", the form `parse` reads back.
    public var description: String { "\(pid) \(startTime)" }

    public static func parse(_ text: String) -> ProcessIdentity? {
        let f = text.split(whereSeparator: { $0 == " " || $0 == "\n" })
        guard f.count == 2, let pid = pid_t(f[0]), let start = UInt64(f[1]) else { return nil }
        return ProcessIdentity(pid: pid, startTime: start)
    }

    /// The fields after "pid (comm) " of /proc/PID/stat: state is [0], start time [19].
    static func statFields(_ pid: pid_t, procRoot: String) -> [Substring]? {
        guard let s = HostFiles.read("\(procRoot)/\(pid)/stat"), let close = s.lastIndex(of: ")") else { return nil }
        return s[s.index(after: close)...].split(separator: " ")
    }
}
