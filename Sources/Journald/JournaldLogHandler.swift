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

/// Where entries go: journald when its socket exists, else stderr with `<N>` prefixes.
public final class JournalSink: Sendable {
    private let socket: JournalSocket?
    private let stderrLock = Mutex(())

    public init(socket: JournalSocket? = JournalSocket()) { self.socket = socket }

    public var usesJournal: Bool { socket != nil }

    public func write(_ entry: JournalEntry) {
        if let socket {
            do { try socket.send(entry); return } catch {}
        }
        writeStderr(entry)
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

    private func writeStderr(_ entry: JournalEntry) {
        let bytes = Array(Self.stderrLine(entry).utf8)
        stderrLock.withLock { _ in try? writeAll(STDERR_FILENO, bytes) }
    }
}

extension String {
    func replacingNewlines() -> String {
        String(unicodeScalars.map { $0 == "\n" ? " " : Character($0) })
    }
}
