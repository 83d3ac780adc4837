import CDaemonSupport
import Journald
import Posix
import Sandbox
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The VM's serial console as a unix socket owned by this VMM process (`--console-socket`), so
/// it outlives rtvisord restarts: any number of clients (`rtvisorctl console NAME`) get the last
/// 64 KiB of output, then live output; what they type goes to the serial port. With a journal
/// sink, every output line is also sent to journald tagged VM_NAME (`--console-journal`).
///
/// vCPU threads only append to a buffer under a lock and, when it was empty, write one byte to a
/// wake-up pipe; one thread does all socket and journal I/O.
final class ConsoleServer: @unchecked Sendable {
    static let backlogLimit = 64 * 1024
    static let lineLimit = 4096

    private let listenFD: Int32
    private let wakeRead: Int32
    private let wakeWrite: Int32
    private let pending = Mutex<[UInt8]>([])
    private let vmName: String
    private let journal: JournalSink?
    private let input: @Sendable (ArraySlice<UInt8>) -> Void
    // Owned by the I/O thread.
    private var clients: [Int32] = []
    private var backlog: [UInt8] = []
    private var line: [UInt8] = []
    private var lineAge = 0

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
        self.vmName = vmName; self.journal = journal; self.input = input
    }

    /// Called for every console byte, from vCPU threads.
    func tap(_ byte: UInt8) {
        let wasEmpty = pending.withLock { buf in
            let e = buf.isEmpty
            buf.append(byte)
            return e
        }
        if wasEmpty {
            var one: UInt8 = 1
            _ = write(wakeWrite, &one, 1)
        }
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

    /// At exit: sends what is still buffered (a last line without newline) to the journal.
    func finish() {
        drainPending()
        flushLine()
    }

    private func loop() {
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            var fds = [pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
            if listenFD >= 0 { fds.append(pollfd(fd: listenFD, events: Int16(POLLIN), revents: 0)) }
            for c in clients { fds.append(pollfd(fd: c, events: Int16(POLLIN), revents: 0)) }
            guard let n = try? retryInterrupted({ poll(&fds, nfds_t(fds.count), 250) }) else { return }
            if n == 0 {
                // A partial line (a prompt) goes to the journal once output has been quiet a while.
                if !line.isEmpty { lineAge += 1; if lineAge >= 2 { flushLine() } }
                continue
            }
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
                    if r > 0 { input(buf[0..<r]) } else { gone.append(fd) }
                } catch .resourceTemporarilyUnavailable {
                } catch {
                    gone.append(fd)
                }
            }
            for fd in gone { close(fd); clients.removeAll { $0 == fd } }
        }
    }

    private func acceptClient() {
        let fd = cdaemon_accept(listenFD)
        guard fd >= 0 else { return }
        clients.append(fd)
        if !backlog.isEmpty && !send(backlog[...], to: fd) { close(fd); clients.removeLast() }
    }

    private func drainPending() {
        let bytes = pending.withLock { b -> [UInt8] in let out = b; b.removeAll(keepingCapacity: true); return out }
        guard !bytes.isEmpty else { return }
        backlog.append(contentsOf: bytes)
        if backlog.count > Self.backlogLimit { backlog.removeFirst(backlog.count - Self.backlogLimit) }
        clients.removeAll { fd in
            if send(bytes[...], to: fd) { return false }
            close(fd); return true
        }
        guard journal != nil else { return }
        for b in bytes {
            if b == 0x0A { flushLine(); continue }
            if b == 0x0D { continue }
            line.append(b)
            if line.count >= Self.lineLimit { flushLine() }
        }
        lineAge = 0
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

    private func flushLine() {
        lineAge = 0
        guard let journal, !line.isEmpty else { line.removeAll(); return }
        var e = JournalEntry()
        e.append("MESSAGE", String(decoding: line, as: UTF8.self))
        e.append("PRIORITY", String(JournalPriority.info.rawValue))
        e.append("SYSLOG_IDENTIFIER", "rtvisor-vmm")
        e.append("MESSAGE_ID", LifecycleEvent.vmConsole.messageID)
        e.append("VM_NAME", vmName)
        e.append("VM_PID", String(getpid()))
        e.append("VM_CONSOLE", "serial")
        journal.write(e)
        line.removeAll(keepingCapacity: true)
    }
}

struct VMMSetupError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}
