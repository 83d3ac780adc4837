import CDaemonSupport
import VMMInterface
import Posix
#if canImport(Glibc)
import Glibc
#endif

/// `rtvisorctl console NAME`: relays the terminal to the VMM's console socket. The socket is
/// owned by rtvisor-vmm, not the daemon, so a session survives `systemctl restart rtvisord`.
enum ConsoleAttach {
    static let detachByte: UInt8 = 0x1D  // Ctrl-]

    /// Returns when the socket closes (the VM stopped), on Ctrl-], or after `seconds`.
    static func run(socketPath: String, seconds: Double?, takeOver: Bool = false) throws -> String {
        let fd = cdaemon_connect_unix(socketPath)
        guard fd >= 0 else {
            throw UnixHTTPClient.ClientError(description: "cannot connect to \(socketPath): \(errnoMessage()) (is the VM running?)")
        }
        defer { close(fd) }
        // The console's typing seat (ConsoleSeat): --force takes it from whoever holds it.
        if takeOver { try writeOrFail(fd, ConsoleSeat.takeOverRequest) }
        let tty = isatty(STDIN_FILENO) == 1
        var saved = [UInt8](repeating: 0, count: cdaemon_termios_size())
        let raw = tty && saved.withUnsafeMutableBytes { cdaemon_tty_raw(STDIN_FILENO, $0.baseAddress, $0.count) } == 0
        defer { if raw { _ = saved.withUnsafeBytes { cdaemon_tty_restore(STDIN_FILENO, $0.baseAddress) } } }
        if tty { writeErr("[attached to \(socketPath); Ctrl-] detaches]\r\n") }
        var stdinOpen = true
        var buf = [UInt8](repeating: 0, count: 4096)
        let deadline = seconds.map { now() + $0 }
        while true {
            if let deadline, deadline <= now() { return "timeout" }
            var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0)]
            if stdinOpen { fds.append(pollfd(fd: STDIN_FILENO, events: Int16(POLLIN), revents: 0)) }
            // The timeout is taken again after an interrupted poll, so a signal does not extend it.
            guard (try? retryInterrupted({ poll(&fds, nfds_t(fds.count), pollTimeout(until: deadline)) })) != nil else { return "poll failed" }
            if fds[0].revents != 0 {
                let r = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if r <= 0 { if tty { writeErr("\r\n[console closed: the VM stopped]\r\n") }; return "closed" }
                try writeOrFail(STDOUT_FILENO, Array(buf[0..<r]))
            }
            if stdinOpen && fds.count > 1 && fds[1].revents != 0 {
                let r = buf.withUnsafeMutableBytes { read(STDIN_FILENO, $0.baseAddress, $0.count) }
                if r <= 0 { stdinOpen = false; continue }
                let chunk = Array(buf[0..<r])
                if tty, let i = chunk.firstIndex(of: detachByte) {
                    if i > 0 { try writeOrFail(fd, Array(chunk[0..<i])) }
                    writeErr("\r\n[detached]\r\n")
                    return "detached"
                }
                try writeOrFail(fd, chunk)
            }
        }
    }

    /// poll(2)'s timeout in milliseconds: -1 without a deadline, 0 once it has passed.
    static func pollTimeout(until deadline: Double?) -> Int32 {
        guard let deadline else { return -1 }
        let left = deadline - now()
        return left <= 0 ? 0 : Int32(left * 1000) + 1
    }

    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}

func writeErr(_ s: String) {
    let b = Array(s.utf8)
    _ = b.withUnsafeBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
}
