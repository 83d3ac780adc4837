import CDaemonSupport
import Journald
import VMMInterface
import Posix
import Sandbox
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The VM's serial console as a unix socket owned by this VMM process (`--console-socket`), so
/// it outlives rtvisord restarts: any number of clients (`rtvisorctl console NAME`) get the last
/// 64 KiB of output, then live output; what they type goes to the serial port. With a journal
/// sink, output lines are also sent to journald tagged VM_NAME (`--console-journal`), within the
/// VM's rate limit (`ConsoleJournal`); the socket gets everything.
///
/// vCPU threads only append to a buffer under a lock and, when it was empty, write one byte to a
/// wake-up pipe; one thread does all socket and journal I/O. Every buffer is bounded, whatever
/// the guest prints: the hand-over buffer (`pendingLimit`), the backlog (`backlogLimit`), the
/// unfinished line (`ConsoleJournal.Limits.lineBytes`); a client that reads too slowly misses
/// output instead of queueing it here.
final class ConsoleServer: @unchecked Sendable {
    static let backlogLimit = 64 * 1024
    /// Output the I/O thread has not taken yet (it may be blocked on a full journald socket).
    /// Four backlogs: far more than a serial port produces between two wake-ups, and what is
    /// dropped beyond it is replaced by a note in the output.
    static let pendingLimit = 4 * backlogLimit

    private struct Pending {
        var bytes: [UInt8] = []
        var dropped = 0
    }

    private let listenFD: Int32
    private let wakeRead: Int32
    private let wakeWrite: Int32
    private let pending = Mutex(Pending())
    private let journal: JournalSink?
    private let input: @Sendable (ArraySlice<UInt8>) -> Void
    /// Held by the I/O thread while it works and by `finish`, so the two never interleave.
    private let ioLock = Mutex(())
    // Under `ioLock`.
    private var clients: [Int32] = []
    private var backlog: [UInt8] = []
    private var lines: ConsoleJournal
    /// Which client's keys reach the guest (one typing session; the others watch).
    private var seat = ConsoleSeat()
    private let vmName: String

    init(socketPath: String?, vmName: String, journal: JournalSink?, input: @escaping @Sendable (ArraySlice<UInt8>) -> Void) throws(VMMSetupError) {
        if let socketPath {
            listenFD = cdaemon_listen_unix(socketPath, 8, 0o660)
            if listenFD < 0 { throw VMMSetupError("--console-socket \(socketPath): \(errnoMessage())") }
        } else {
            listenFD = -1
        }
        var p: [Int32] = [0, 0]
        guard cdaemon_pipe(&p) == 0 else { throw VMMSetupError("pipe2: \(errnoMessage())") }
        wakeRead = p[0]; wakeWrite = p[1]
        self.journal = journal; self.input = input; self.vmName = vmName
        lines = ConsoleJournal(vmName: vmName, pid: getpid())
    }

    /// Called for every console byte, from vCPU threads.
    func tap(_ byte: UInt8) {
        let wasEmpty = pending.withLock { p in
            let e = p.bytes.isEmpty && p.dropped == 0
            if p.bytes.count < Self.pendingLimit { p.bytes.append(byte) } else { p.dropped += 1 }
            return e
        }
        if wasEmpty {
            var one: UInt8 = 1
            _ = write(wakeWrite, &one, 1)
        }
    }

    /// The backlog with everything printed so far (a migration's source, its vCPUs paused).
    func currentBacklog() -> [UInt8] {
        ioLock.withLock { _ in
            drainPending()
            return backlog
        }
    }

    /// Starts the backlog with a migrated VM's console history (before `start`; not journaled again).
    func seedBacklog(_ bytes: [UInt8]) {
        ioLock.withLock { _ in backlog = Array(bytes.suffix(Self.backlogLimit)) }
    }

    func start() {
        final class Box: @unchecked Sendable { let server: ConsoleServer; init(_ s: ConsoleServer) { server = s } }
        var thread = pthread_t()
        pthread_create(&thread, nil, { raw in
            let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
            Sandbox.enterThreadOrExit(.vmm, label: "console-server")
            box.server.loop()
            return nil
        }, Unmanaged.passRetained(Box(self)).toOpaque())
        pthread_detach(thread)
    }

    /// At exit: sends what is still buffered (a last line without newline) and the count of
    /// suppressed lines to the journal.
    func finish() {
        ioLock.withLock { _ in
            drainPending()
            send(lines.finish(now: Self.now()))
        }
    }

    private static func now() -> Double { Double(monotonicNanoseconds()) / 1e9 }

    private func loop() {
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            var fds = [pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
            if listenFD >= 0 { fds.append(pollfd(fd: listenFD, events: Int16(POLLIN), revents: 0)) }
            for c in ioLock.withLock({ _ in clients }) { fds.append(pollfd(fd: c, events: Int16(POLLIN), revents: 0)) }
            guard let n = try? retryInterrupted({ poll(&fds, nfds_t(fds.count), 250) }) else { return }
            ioLock.withLock { _ in
                if n > 0 { serve(fds, buffer: &buf) }
                // A partial line (a prompt) goes to the journal once output has been quiet a
                // while; suppressed lines are counted there when due.
                send(lines.tick(now: Self.now()))
            }
        }
    }

    private func serve(_ fds: [pollfd], buffer buf: inout [UInt8]) {
        if fds[0].revents != 0 {
            while read(wakeRead, &buf, buf.count) > 0 {}
            drainPending()
        }
        var i = 1
        if listenFD >= 0 {
            if fds[1].revents & Int16(POLLIN) != 0 { acceptClient() }
            i = 2
        }
        var gone: [Int32] = []
        for k in i..<fds.count where fds[k].revents != 0 {
            let fd = fds[k].fd
            do {
                let r = try retryInterrupted { buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) } }
                if r > 0 {
                    let (toGuest, notices) = seat.input(buf[0..<r], from: fd, vm: vmName)
                    if !toGuest.isEmpty { input(toGuest) }
                    for n in notices where !send(Array(n.text.utf8)[...], to: n.client) { gone.append(n.client) }
                } else { gone.append(fd) }
            } catch .resourceTemporarilyUnavailable {
            } catch {
                gone.append(fd)
            }
        }
        for fd in Set(gone) { close(fd); clients.removeAll { $0 == fd }; seat.disconnected(fd) }
    }

    private func acceptClient() {
        let fd = cdaemon_accept(listenFD)
        guard fd >= 0 else { return }
        clients.append(fd)
        seat.connected(fd)
        if !backlog.isEmpty && !send(backlog[...], to: fd) { close(fd); clients.removeLast(); seat.disconnected(fd) }
    }

    private func drainPending() {
        let bytes = pending.withLock { p -> [UInt8] in
            var out = p.bytes
            if p.dropped > 0 {
                out += Array("\r\n[rtvisor-vmm: \(p.dropped) bytes of console output dropped: the console thread fell behind]\r\n".utf8)
            }
            p.bytes.removeAll(keepingCapacity: true)
            p.dropped = 0
            return out
        }
        guard !bytes.isEmpty else { return }
        backlog.append(contentsOf: bytes)
        if backlog.count > Self.backlogLimit { backlog.removeFirst(backlog.count - Self.backlogLimit) }
        clients.removeAll { fd in
            if send(bytes[...], to: fd) { return false }
            close(fd); seat.disconnected(fd); return true
        }
        guard journal != nil else { return }
        send(lines.feed(bytes, now: Self.now()))
    }

    /// Non-blocking; a client that cannot keep up misses output rather than stalling the VM.
    /// Returns false when the client is gone.
    private func send(_ bytes: ArraySlice<UInt8>, to fd: Int32) -> Bool {
        var off = bytes.startIndex
        while off < bytes.endIndex {
            do { off += try retryInterrupted { bytes[off...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } } }
            catch { return error == .resourceTemporarilyUnavailable }
        }
        return true
    }

    private func send(_ entries: [JournalEntry]) {
        guard let journal else { return }
        for e in entries { journal.write(e) }
    }
}

struct VMMSetupError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}
