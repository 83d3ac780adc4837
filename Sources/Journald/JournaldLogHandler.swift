import Logging
import Posix
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A swift-log handler that writes structured entries to journald (native protocol) and falls
/// back to stderr lines with a `<N>` priority prefix (which journald's stdout stream, and
/// systemd's StandardError=journal, turn back into priorities) when there is no journal socket
/// or a send fails.
///
/// Metadata keys become journal fields (`vm_name` → `VM_NAME`), so `journalctl VM_NAME=web`
/// finds every line about that VM. `CODE_FILE`, `CODE_LINE`, `CODE_FUNC` and
/// `SYSLOG_IDENTIFIER` are always set.
public struct JournaldLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    public let label: String
    let identifier: String
    let sink: JournalSink

    public init(label: String, identifier: String, sink: JournalSink) {
        self.label = label; self.identifier = identifier; self.sink = sink
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public static func priority(_ level: Logger.Level) -> JournalPriority {
        switch level {
        case .trace, .debug: .debug
        case .info: .info
        case .notice: .notice
        case .warning: .warning
        case .error: .error
        case .critical: .critical
        }
    }

    public func log(event: LogEvent) {
        var all = metadata
        if let m = event.metadata { all.merge(m) { $1 } }
        let entry = Self.entry(level: event.level, message: "\(event.message)", metadata: all, identifier: identifier,
                               file: event.file, function: event.function, line: event.line)
        sink.write(entry)
    }

    /// The entry for one log call (separate from `log` so tests can check the fields).
    public static func entry(level: Logger.Level, message: String, metadata: Logger.Metadata, identifier: String,
                             file: String, function: String, line: UInt) -> JournalEntry {
        var e = JournalEntry()
        e.append("MESSAGE", message)
        e.append("PRIORITY", String(priority(level).rawValue))
        e.append("SYSLOG_IDENTIFIER", identifier)
        e.append("CODE_FILE", file)
        e.append("CODE_LINE", String(line))
        e.append("CODE_FUNC", function)
        for (k, v) in metadata.sorted(by: { $0.key < $1.key }) { e.append(k, "\(v)") }
        return e
    }
}

/// Where entries go: journald when its socket exists, else stderr with `<N>` prefixes. On a
/// terminal (a foreground run by hand) each entry is also shown as a line for people: time,
/// level, VM, message (`terminalLine`), instead of the field dump.
public final class JournalSink: Sendable {
    private let socket: JournalSocket?
    private let terminal: Bool
    /// Without journald: the file `RTVISOR_LOG_FILE` names (rtvisord sets it for itself, its API
    /// front and its VMMs), opened here, before any jail, so `rtvisorctl logs` has something to
    /// read. -1: none.
    private let logFile: Int32
    private let stderrLock = Mutex(())

    public static let logFileVariable = "RTVISOR_LOG_FILE"

    public init(socket: JournalSocket? = JournalSocket(), terminal: Bool = isatty(STDERR_FILENO) == 1,
                logFile: String? = getenv(JournalSink.logFileVariable).map { String(cString: $0) }) {
        self.socket = socket; self.terminal = terminal
        self.logFile = socket == nil && logFile?.isEmpty == false
            ? open(logFile!, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640) : -1
    }

    deinit { if logFile >= 0 { close(logFile) } }

    public var usesJournal: Bool { socket != nil }

    public func write(_ entry: JournalEntry) {
        if terminal { writeLine(Self.terminalLine(entry, at: wallClock())) }
        if let socket {
            do { try socket.send(entry); return } catch {}
        }
        if !terminal { writeLine(Self.stderrLine(entry)) }
        if logFile >= 0 {
            let bytes = Array((Self.timestamp(wallClock()) + " " + Self.stderrLine(entry)).utf8)
            stderrLock.withLock { _ in try? writeAll(logFile, bytes) }
        }
    }

    /// `2026-12-06T05:13:04.123Z`, the log file's time stamp (UTC: files move between machines).
    public static func timestamp(_ time: (seconds: Int, milliseconds: Int)) -> String {
        var t = tm()
        var seconds = time_t(time.seconds)
        gmtime_r(&seconds, &t)
        func pad(_ n: Int32, _ width: Int) -> String { let s = String(n); return String(repeating: "0", count: max(0, width - s.count)) + s }
        return "\(pad(t.tm_year + 1900, 4))-\(pad(t.tm_mon + 1, 2))-\(pad(t.tm_mday, 2))T\(pad(t.tm_hour, 2)):\(pad(t.tm_min, 2)):\(pad(t.tm_sec, 2)).\(pad(Int32(time.milliseconds), 3))Z"
    }

    /// `12:04:05.123 warning [web] message`: what a terminal shows. The VM's name when the
    /// entry is about one; the event's name (`RTVISOR_EVENT`) is left to the journal.
    public static func terminalLine(_ entry: JournalEntry, at time: (seconds: Int, milliseconds: Int)) -> String {
        let level = switch entry.value(of: "PRIORITY") ?? "6" {
        case "0", "1", "2": "critical"
        case "3": "error"
        case "4": "warning"
        case "5": "notice"
        case "7": "debug"
        default: "info"
        }
        var t = tm()
        var seconds = time_t(time.seconds)
        localtime_r(&seconds, &t)
        func two(_ n: Int32) -> String { n < 10 ? "0\(n)" : "\(n)" }
        let ms = String(time.milliseconds + 1000).dropFirst()
        let vm = entry.value(of: "VM_NAME").map { "[\($0)] " } ?? ""
        let message = (entry.value(of: "MESSAGE") ?? "").replacingNewlines()
        return "\(two(t.tm_hour)):\(two(t.tm_min)):\(two(t.tm_sec)).\(ms) \(level)\(String(repeating: " ", count: 8 - level.count))\(vm)\(message)\n"
    }

    private func wallClock() -> (seconds: Int, milliseconds: Int) {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return (Int(ts.tv_sec), Int(ts.tv_nsec / 1_000_000))
    }

    /// `<6>message VM_NAME=x …`: the fallback format.
    public static func stderrLine(_ entry: JournalEntry) -> String {
        let prio = entry.value(of: "PRIORITY") ?? "6"
        var line = "<\(prio)>" + (entry.value(of: "MESSAGE") ?? "").replacingNewlines()
        let skip: Set<String> = ["MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "CODE_FILE", "CODE_LINE", "CODE_FUNC", "MESSAGE_ID"]
        for f in entry.fields where !skip.contains(f.name) {
            line += " \(f.name)=\(String(decoding: f.value, as: UTF8.self).replacingNewlines())"
        }
        return line + "\n"
    }

    private func writeLine(_ line: String) {
        let bytes = Array(line.utf8)
        stderrLock.withLock { _ in try? writeAll(STDERR_FILENO, bytes) }
    }
}

extension String {
    func replacingNewlines() -> String {
        String(unicodeScalars.map { $0 == "\n" ? " " : Character($0) })
    }
}
