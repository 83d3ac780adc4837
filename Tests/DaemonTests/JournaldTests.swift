import CDaemonSupport
import Foundation
import Journald
import Logging
import Testing
import TestSupport

@Suite struct JournalEntryTests {
    @Test func plainFieldsAreNameEqualsValueNewline() {
        var e = JournalEntry()
        e.append("MESSAGE", "hello")
        e.append("VM_NAME", "web")
        #expect(e.encoded() == Array("MESSAGE=hello\nVM_NAME=web\n".utf8))
    }

    @Test func valueWithNewlineUsesTheBinarySafeForm() {
        var e = JournalEntry()
        e.append("MESSAGE", "line 1\nline 2")
        // NAME \n, 64-bit little-endian length (13), the bytes, \n
        let expected: [UInt8] = Array("MESSAGE\n".utf8) + [13, 0, 0, 0, 0, 0, 0, 0] + Array("line 1\nline 2".utf8) + [0x0A]
        #expect(e.encoded() == expected)
    }

    @Test func binaryValuesRoundTrip() throws {
        var e = JournalEntry()
        e.append("MESSAGE", "x")
        e.append("BLOB", [0, 1, 0x0A, 0xFF, 0x3D, 0x0A])
        e.append("EMPTY", "")
        e.append("EQUALS", "a=b=c")
        let d = try #require(JournalEntry.decode(e.encoded()))
        #expect(d == e)
        #expect(d.value(of: "EQUALS") == "a=b=c")
    }

    @Test func decodeRejectsTruncatedBinaryField() {
        var e = JournalEntry()
        e.append("M", "a\nb")
        let bytes = e.encoded()
        #expect(JournalEntry.decode(Array(bytes.dropLast(2))) == nil)
    }

    @Test func fieldNamesAreMadeValid() {
        #expect(JournalField.isValid("VM_NAME"))
        #expect(!JournalField.isValid("_PID"))
        #expect(!JournalField.isValid("vm_name"))
        #expect(!JournalField.isValid("1ABC"))
        #expect(!JournalField.isValid(String(repeating: "A", count: 65)))
        #expect(JournalField.name(for: "vm_name") == "VM_NAME")
        #expect(JournalField.name(for: "vm.exit-reason") == "VM_EXIT_REASON")
        #expect(JournalField.name(for: "_SYSTEMD_UNIT") == "X_SYSTEMD_UNIT")
        #expect(JournalField.name(for: "9lives") == "X9LIVES")
        #expect(JournalField.name(for: String(repeating: "a", count: 80)).count == 64)
    }
}

@Suite struct JournaldLogHandlerTests {
    @Test func entryCarriesPriorityCodeLocationAndMetadata() {
        let e = JournaldLogHandler.entry(level: .warning, message: "VM web stopped\nsecond line",
                                         metadata: ["VM_NAME": "web", "VM_PID": "42", "MESSAGE_ID": "c5e7a9b1d3f54b7d9f1a3c5e7b9d1f3a", "vm_state": "stopped"],
                                         identifier: "rtvisord", file: "Daemon/Supervisor.swift", function: "stop()", line: 123)
        #expect(e.value(of: "MESSAGE") == "VM web stopped\nsecond line")
        #expect(e.value(of: "PRIORITY") == "4")
        #expect(e.value(of: "SYSLOG_IDENTIFIER") == "rtvisord")
        #expect(e.value(of: "CODE_FILE") == "Daemon/Supervisor.swift")
        #expect(e.value(of: "CODE_LINE") == "123")
        #expect(e.value(of: "CODE_FUNC") == "stop()")
        #expect(e.value(of: "VM_NAME") == "web")
        #expect(e.value(of: "VM_PID") == "42")
        #expect(e.value(of: "VM_STATE") == "stopped")
        #expect(e.value(of: "MESSAGE_ID") == "c5e7a9b1d3f54b7d9f1a3c5e7b9d1f3a")
    }

    @Test func levelsMapToSyslogPriorities() {
        let map: [(Logger.Level, Int)] = [(.trace, 7), (.debug, 7), (.info, 6), (.notice, 5), (.warning, 4), (.error, 3), (.critical, 2)]
        for (l, p) in map { #expect(JournaldLogHandler.priority(l).rawValue == p) }
    }

    @Test func stderrFallbackHasPriorityPrefixOneLine() {
        var e = JournalEntry(message: "boot\nfailed", priority: .error, fields: ["VM_NAME": "db"])
        e.append("CODE_LINE", "9")
        #expect(JournalSink.stderrLine(e) == "<3>boot failed VM_NAME=db\n")
    }

    /// A foreground rtvisord on a terminal: time, level, VM, message, not the field dump.
    @Test func aTerminalGetsTimeLevelVMAndMessage() {
        var e = JournalEntry(message: "boot\nfailed", priority: .warning, fields: ["VM_NAME": "db", "RTVISOR_EVENT": "vm-failed"])
        e.append("CODE_LINE", "9")
        let line = JournalSink.terminalLine(e, at: (seconds: 1_700_000_000, milliseconds: 7))
        #expect(line.hasSuffix(".007 warning [db] boot failed\n"), "\(line)")
        #expect(line.count == "12:34:56.007 warning [db] boot failed\n".count, "\(line)")
        let daemon = JournalSink.terminalLine(JournalEntry(message: "ready", priority: .info, fields: [:]), at: (0, 999))
        #expect(daemon.hasSuffix(".999 info    ready\n"), "\(daemon)")
    }

    /// Without journald the entries go to RTVISOR_LOG_FILE, time-stamped, one a line, for
    /// `rtvisorctl logs`; with journald the file is not even opened.
    @Test func withoutJournaldEntriesGoToTheLogFile() throws {
        let dir = try makeTemporaryDirectory("rtvisor-logfile")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let sink = JournalSink(socket: nil, terminal: false, logFile: dir + "/rtvisord.log")
        sink.write(JournalEntry(message: "started", priority: .notice, fields: ["VM_NAME": "web"]))
        let text = try String(contentsOfFile: dir + "/rtvisord.log", encoding: .utf8)
        #expect(text.hasSuffix("Z <5>started VM_NAME=web\n") && text.split(separator: "\n").count == 1, "\(text)")
        #expect(JournalSink.timestamp((1_700_000_000, 42)) == "2023-11-14T22:13:20.042Z")
    }

    @Test func messageIDsAreFixedDistinct128BitHex() {
        let ids = LifecycleEvent.allCases.map(\.messageID)
        #expect(Set(ids).count == ids.count)
        for id in ids { #expect(id.count == 32 && id.allSatisfy { $0.isHexDigit && !$0.isUppercase }) }
    }
}

/// Sends through the real socket code to a datagram socket standing in for journald.
@Suite struct JournalSocketTests {
    func receive(_ fd: Int32, capacity: Int = 1 << 16) -> (bytes: [UInt8], passedFD: Int32) {
        var buf = [UInt8](repeating: 0, count: capacity)
        var passed: Int32 = -1
        let n = buf.withUnsafeMutableBytes { cdaemon_recv_with_fd(fd, $0.baseAddress, $0.count, &passed) }
        return (n >= 0 ? Array(buf[0..<n]) : [], passed)
    }

    @Test func entryArrivesAsOneDatagram() throws {
        let path = try makeTemporaryDirectory("rtvisord-test") + "/journal.sock"
        let server = cdaemon_bind_datagram(path)
        #expect(server >= 0)
        defer { close(server) }
        let socket = try #require(JournalSocket(path: path))
        var e = JournalEntry(message: "console line\nwith newline", priority: .info, fields: ["VM_NAME": "web"])
        e.append("VM_CONSOLE", "serial")
        try socket.send(e)
        let got = receive(server)
        #expect(got.passedFD == -1)
        #expect(JournalEntry.decode(got.bytes) == e)
    }

    @Test func oversizedEntryGoesThroughASealedMemfd() throws {
        let path = try makeTemporaryDirectory("rtvisord-test") + "/journal.sock"
        let server = cdaemon_bind_datagram(path)
        defer { close(server) }
        let socket = try #require(JournalSocket(path: path))
        // Above JournalSocket.datagramLimit.
        let big = String(repeating: "x", count: 2 << 20)
        let e = JournalEntry(message: big, priority: .info, fields: ["VM_NAME": "big"])
        try socket.send(e)
        let got = receive(server)
        #expect(got.bytes.isEmpty)
        #expect(got.passedFD >= 0)
        defer { close(got.passedFD) }
        var st = stat()
        fstat(got.passedFD, &st)
        #expect(Int(st.st_size) == e.encoded().count)
        let seals = fcntlGetSeals(got.passedFD)
        #expect(seals & 0xF == 0xF)  // SHRINK|GROW|WRITE|SEAL
        // The sender's write left the shared file offset at the end (journald mmaps instead).
        lseek(got.passedFD, 0, SEEK_SET)
        let handle = FileHandle(fileDescriptor: dup(got.passedFD), closeOnDealloc: true)
        let mapped = try #require(try handle.readToEnd())
        #expect(JournalEntry.decode(Array(mapped)) == e)
    }

    @Test func noSocketFileMeansNoJournal() {
        #expect(JournalSocket(path: "/nonexistent/journal.sock") == nil)
        #expect(!JournalSink(socket: nil).usesJournal)
    }
}

func fcntlGetSeals(_ fd: Int32) -> Int32 { cdaemon_get_seals(fd) }
