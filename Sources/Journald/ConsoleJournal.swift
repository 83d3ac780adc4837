/// A token bucket over explicit times (seconds on any monotonic clock): `capacity` tokens at
/// first, refilled at `perSecond`; each `take` spends one. Pure, so tests drive it without sleeping.
public struct TokenBucket: Equatable, Sendable {
    public let capacity: Double
    public let perSecond: Double
    public private(set) var tokens: Double
    private var refilledAt: Double?

    public init(capacity: Int, perSecond: Double) {
        self.capacity = Double(max(capacity, 1))
        self.perSecond = max(perSecond, 0)
        tokens = self.capacity
    }

    /// Spends a token if there is one.
    public mutating func take(now: Double) -> Bool {
        refill(now: now)
        guard tokens >= 1 else { return false }
        tokens -= 1
        return true
    }

    private mutating func refill(now: Double) {
        guard let last = refilledAt else { refilledAt = now; return }
        // A clock that went backwards adds nothing.
        guard now > last else { return }
        tokens = min(capacity, tokens + (now - last) * perSecond)
        refilledAt = now
    }
}

/// Cuts console bytes into lines for the journal: a newline ends a line, carriage returns are
/// dropped, and a line reaching `limit` bytes is cut there, so a guest printing one endless line
/// holds at most `limit` bytes here.
public struct ConsoleLineSplitter: Equatable, Sendable {
    public let limit: Int
    public private(set) var partial: [UInt8] = []

    public init(limit: Int) {
        self.limit = max(limit, 1)
        partial.reserveCapacity(self.limit)
    }

    /// The lines these bytes complete (empty lines left out); the rest stays in `partial`.
    public mutating func feed(_ bytes: some Sequence<UInt8>) -> [[UInt8]] {
        var lines: [[UInt8]] = []
        for b in bytes {
            switch b {
            case 0x0A: if let l = takePartial() { lines.append(l) }
            case 0x0D: continue
            default:
                partial.append(b)
                if partial.count >= limit, let l = takePartial() { lines.append(l) }
            }
        }
        return lines
    }

    /// The unfinished line (a prompt), if any; `partial` is empty afterwards.
    public mutating func takePartial() -> [UInt8]? {
        guard !partial.isEmpty else { return nil }
        defer { partial.removeAll(keepingCapacity: true) }
        return partial
    }
}

/// One VM's serial console as journal entries (`VM_CONSOLE=serial`, `MESSAGE_ID` of `vm-console`),
/// rate-limited per VM: journald limits entries per unit, and every VMM logs as rtvisord.service,
/// so a guest printing short lines as fast as it can would otherwise use up the unit's budget and
/// get the daemon's and the other VMs' entries dropped. Lines beyond the token bucket are counted,
/// not sent. The count goes out as one `vm-console-suppressed` entry ("N console lines
/// suppressed", `VM_CONSOLE_SUPPRESSED=N`): right before the next line the limit lets through, at
/// a `tick`, or at `finish`; during a long flood at most one per `summaryIntervalSeconds`.
/// Pure over explicit times (seconds on a monotonic clock); `ConsoleServer` does the I/O.
public struct ConsoleJournal: Sendable {
    /// Other limits: change a copy of `standard` (only tests do).
    public struct Limits: Equatable, Sendable {
        /// Lines journaled at once after a quiet spell.
        public var burst: Int
        /// Lines per second once the burst is spent.
        public var linesPerSecond: Double
        /// Longest journaled line; longer ones are cut into pieces of this size.
        public var lineBytes: Int
        /// An unfinished line (a prompt) is journaled after this much quiet.
        public var partialLineQuietSeconds: Double
        /// Summaries of a flood that goes on come at most this often.
        public var summaryIntervalSeconds: Double

        /// A burst of 500 takes a whole Linux boot log on the serial console (a few hundred lines
        /// from the kernel and init) into the journal intact. 10 lines/s keeps a chatty guest
        /// service fully journaled, while a flooding guest costs at most 500 + 30 · 10 (+ 3
        /// summaries) entries per 30 s, against journald's default per-unit limit of 10000 per
        /// 30 s (`RateLimitIntervalSec=30s`, `RateLimitBurst=10000`) that rtvisord and every VM
        /// share: a dozen VMs flooding at once still leave room for the daemon's entries. Lines
        /// of 4 KiB and a prompt after 0.5 s of quiet, as before the limit; a flood's count every
        /// 10 s tells admins it goes on without adding noticeably to it.
        public static let standard = Limits(burst: 500, linesPerSecond: 10, lineBytes: 4096, partialLineQuietSeconds: 0.5,
                                            summaryIntervalSeconds: 10)
    }

    public let vmName: String
    public let pid: Int32
    public let limits: Limits
    private var bucket: TokenBucket
    private var splitter: ConsoleLineSplitter
    private var lastOutput: Double?
    private var lastSummary: Double?
    /// Lines dropped since the last summary.
    public private(set) var suppressed = 0
    /// Lines dropped since the start.
    public private(set) var suppressedTotal = 0

    public init(vmName: String, pid: Int32, limits: Limits = .standard) {
        self.vmName = vmName; self.pid = pid; self.limits = limits
        bucket = TokenBucket(capacity: limits.burst, perSecond: limits.linesPerSecond)
        splitter = ConsoleLineSplitter(limit: limits.lineBytes)
    }

    /// The unfinished line held back (at most `limits.lineBytes`).
    public var partialLine: [UInt8] { splitter.partial }

    /// Console output: the entries for the lines it completes that the rate limit lets through.
    public mutating func feed(_ bytes: some Sequence<UInt8>, now: Double) -> [JournalEntry] {
        let lines = splitter.feed(bytes)
        lastOutput = now
        return lines.flatMap { journal($0, now: now) }
    }

    /// Called now and then (the console thread's poll timeout): the summary when one is due, and
    /// the unfinished line after enough quiet.
    public mutating func tick(now: Double) -> [JournalEntry] {
        var out = summaryIfDue(now: now)
        if let last = lastOutput, now - last >= limits.partialLineQuietSeconds, let line = splitter.takePartial() {
            out += journal(line, now: now)
        }
        return out
    }

    /// At exit: the unfinished line (if the limit lets it through) and the summary, if any.
    public mutating func finish(now: Double) -> [JournalEntry] {
        var out: [JournalEntry] = []
        if let line = splitter.takePartial() { out += journal(line, now: now) }
        if suppressed > 0 { out.append(summary(now: now)) }
        return out
    }

    private mutating func journal(_ line: [UInt8], now: Double) -> [JournalEntry] {
        guard bucket.take(now: now) else {
            suppressed += 1
            suppressedTotal += 1
            return []
        }
        return summaryIfDue(now: now) + [entry(String(decoding: line, as: UTF8.self), priority: .info, event: .vmConsole)]
    }

    private mutating func summaryIfDue(now: Double) -> [JournalEntry] {
        guard suppressed > 0 else { return [] }
        if let last = lastSummary, now - last < limits.summaryIntervalSeconds { return [] }
        return [summary(now: now)]
    }

    private mutating func summary(now: Double) -> JournalEntry {
        let n = suppressed
        suppressed = 0
        lastSummary = now
        let rate = limits.linesPerSecond == limits.linesPerSecond.rounded() ? String(Int(limits.linesPerSecond)) : String(limits.linesPerSecond)
        var e = entry("\(n) console lines suppressed (journal rate limit: \(limits.burst) lines, then \(rate) per second)",
                      priority: .warning, event: .vmConsoleSuppressed)
        e.append("RTVISOR_EVENT", LifecycleEvent.vmConsoleSuppressed.rawValue)
        e.append("VM_CONSOLE_SUPPRESSED", String(n))
        return e
    }

    private func entry(_ message: String, priority: JournalPriority, event: LifecycleEvent) -> JournalEntry {
        var e = JournalEntry()
        e.append("MESSAGE", message)
        e.append("PRIORITY", String(priority.rawValue))
        e.append("SYSLOG_IDENTIFIER", "rtvisor-vmm")
        e.append("MESSAGE_ID", event.messageID)
        e.append("VM_NAME", vmName)
        e.append("VM_PID", String(pid))
        e.append("VM_CONSOLE", "serial")
        return e
    }
}
