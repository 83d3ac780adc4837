import Journald
import Testing

/// The console's journal side (issue 16): a guest printing fast or endlessly hurts only itself.
@Suite struct ConsoleJournalTests {
    /// Small limits: a burst of 3 lines, then 2 per second; lines of at most 8 bytes.
    static let limits = {
        var l = ConsoleJournal.Limits.standard
        l.burst = 3
        l.linesPerSecond = 2
        l.lineBytes = 8
        return l
    }()

    func console() -> ConsoleJournal { ConsoleJournal(vmName: "web", pid: 42, limits: Self.limits) }

    func lines(_ count: Int, from first: Int = 0) -> [UInt8] {
        Array((first..<(first + count)).map { "l\($0)\r\n" }.joined().utf8)
    }

    func messages(_ entries: [JournalEntry]) -> [String] { entries.map { $0.value(of: "MESSAGE") ?? "?" } }

    @Test func tokenBucketSpendsItsBurstThenRefillsAtItsRate() {
        var b = TokenBucket(capacity: 3, perSecond: 2)
        #expect((0..<4).map { _ in b.take(now: 10) } == [true, true, true, false])
        #expect(b.take(now: 10.25) == false)
        #expect(b.take(now: 10.5) == true)
        // Never more than the capacity, however long the quiet.
        #expect((0..<4).map { _ in b.take(now: 1000) } == [true, true, true, false])
        // A clock that goes backwards adds nothing.
        #expect(b.take(now: 5) == false)
    }

    @Test func theStandardLimits() {
        let s = ConsoleJournal.Limits.standard
        #expect(s.burst == 500 && s.linesPerSecond == 10 && s.lineBytes == 4096 && s.partialLineQuietSeconds == 0.5 && s.summaryIntervalSeconds == 10)
    }

    @Test func aLineIsOneEntryWithTheConsoleFields() {
        var c = console()
        let entries = c.feed(Array("boot ok\r\n".utf8), now: 0)
        var expected = JournalEntry()
        for (name, value) in [("MESSAGE", "boot ok"), ("PRIORITY", "6"), ("SYSLOG_IDENTIFIER", "rtvisor-vmm"),
                              ("MESSAGE_ID", LifecycleEvent.vmConsole.messageID), ("VM_NAME", "web"), ("VM_PID", "42"), ("VM_CONSOLE", "serial")] {
            expected.append(name, value)
        }
        #expect(entries == [expected])
    }

    @Test func burstPassesTheRestIsSuppressedAndCounted() {
        var c = console()
        #expect(messages(c.feed(lines(10), now: 0)) == ["l0", "l1", "l2"])
        #expect(c.suppressed == 7 && c.suppressedTotal == 7)
        // Empty lines are not journaled and cost nothing.
        #expect(c.feed(Array("\n\r\n\n".utf8), now: 0).isEmpty && c.suppressed == 7)
    }

    @Test func theSummaryComesBeforeTheNextLineLetThrough() {
        var c = console()
        _ = c.feed(lines(10), now: 0)
        // Half a second later one token is back.
        let entries = c.feed(lines(2, from: 10), now: 0.5)
        #expect(messages(entries) == ["7 console lines suppressed (journal rate limit: 3 lines, then 2 per second)", "l10"])
        let summary = entries[0]
        #expect(summary.value(of: "MESSAGE_ID") == LifecycleEvent.vmConsoleSuppressed.messageID)
        #expect(summary.value(of: "RTVISOR_EVENT") == "vm-console-suppressed")
        #expect(summary.value(of: "VM_CONSOLE_SUPPRESSED") == "7")
        #expect(summary.value(of: "VM_NAME") == "web" && summary.value(of: "VM_PID") == "42" && summary.value(of: "PRIORITY") == "4")
        #expect(c.suppressed == 1 && c.suppressedTotal == 8)
    }

    @Test func aTickReportsTheCountWhenNoLineFollows() {
        var c = console()
        _ = c.feed(lines(5), now: 0)
        #expect(messages(c.tick(now: 0.25)) == ["2 console lines suppressed (journal rate limit: 3 lines, then 2 per second)"])
        #expect(c.tick(now: 20).isEmpty)
    }

    @Test func aLongFloodGetsOneSummaryPerIntervalAndStaysWithinTheRate() {
        var c = console()
        var journaled: [JournalEntry] = []
        // 1000 lines a second for a minute, fed every 10 ms, with ticks in between.
        var n = 0
        for step in 0..<6000 {
            let now = Double(step) / 100
            journaled += c.feed(lines(10, from: n), now: now)
            n += 10
            if step % 25 == 0 { journaled += c.tick(now: now) }
        }
        let summaries = journaled.filter { $0.value(of: "RTVISOR_EVENT") == "vm-console-suppressed" }
        let consoleLines = journaled.count - summaries.count
        // The burst, then 2 a second; a summary every 10 s.
        #expect((3 + 2 * 59)...(3 + 2 * 60) ~= consoleLines)
        #expect((6...7) ~= summaries.count)
        let reported = summaries.compactMap { Int($0.value(of: "VM_CONSOLE_SUPPRESSED") ?? "") }.reduce(0, +)
        #expect(reported + c.suppressed == n - consoleLines)
        #expect(c.suppressedTotal == n - consoleLines)
    }

    @Test func finishSendsTheLastLineAndWhatWasSuppressed() {
        var c = console()
        _ = c.feed(lines(4) + Array("$ ".utf8), now: 0)
        // The prompt finds no token left: it is counted too.
        #expect(messages(c.finish(now: 0.1)) == ["2 console lines suppressed (journal rate limit: 3 lines, then 2 per second)"])
        #expect(c.suppressed == 0 && c.partialLine.isEmpty)
        var quiet = console()
        _ = quiet.feed(Array("login: ".utf8), now: 0)
        #expect(messages(quiet.finish(now: 0.1)) == ["login: "])
    }

    @Test func aPromptGoesOutAfterQuiet() {
        var c = console()
        #expect(c.feed(Array("login: ".utf8), now: 0).isEmpty)
        #expect(c.tick(now: 0.25).isEmpty)
        #expect(messages(c.tick(now: 0.5)) == ["login: "])
        #expect(c.partialLine.isEmpty && c.tick(now: 2).isEmpty)
    }

    @Test func anEndlessLineIsCutIntoBoundedPieces() {
        var splitter = ConsoleLineSplitter(limit: 8)
        let pieces = splitter.feed(Array(repeating: UInt8(ascii: "x"), count: 30))
        #expect(pieces.map(\.count) == [8, 8, 8])
        #expect(splitter.partial.count == 6)
        var c = console()
        // A megabyte without a newline: never more than one piece held, the pieces rate-limited like lines.
        for k in 0..<1024 {
            let entries = c.feed(Array(repeating: UInt8(ascii: "y"), count: 1024), now: Double(k) / 1000)
            #expect(entries.filter { $0.value(of: "RTVISOR_EVENT") == nil }.allSatisfy { ($0.value(of: "MESSAGE")?.utf8.count ?? 0) == 8 })
            #expect(c.partialLine.count < 8)
        }
        #expect(c.suppressedTotal > 100_000)
    }

    @Test func carriageReturnsAreDroppedAndBytesNeedNotBeUTF8() {
        var splitter = ConsoleLineSplitter(limit: 64)
        #expect(splitter.feed([0x61, 0x0D, 0xFF, 0x62, 0x0A]) == [[0x61, 0xFF, 0x62]])
    }
}
