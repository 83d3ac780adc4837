#if canImport(Glibc)
import Glibc
#endif
import Posix
import Synchronization

/// Where the guest's serial output goes: a file descriptor (stdout in the foreground), written
/// byte-for-byte so the console is never behind the guest. Also remembers the last lines, which
/// the VMM prints when a guest dies, and can be tapped by tests.
public final class ConsoleOutput: Sendable {
    private let fd: Int32
    private let tail = Mutex<[UInt8]>([])
    /// A second consumer of every byte (rtvisor-vmm's console socket and journal forwarding).
    private let tap: (@Sendable (UInt8) -> Void)?
    static let tailLimit = 4096

    /// `fd` < 0: no file descriptor output (only the tap and the tail).
    public init(fd: Int32 = STDOUT_FILENO, tap: (@Sendable (UInt8) -> Void)? = nil) { self.fd = fd; self.tap = tap }

    public func write(_ byte: UInt8) {
        var b = byte
        if fd >= 0 { _ = try? retryInterrupted { Glibc.write(fd, &b, 1) } }
        tap?(byte)
        tail.withLock { t in
            t.append(byte)
            if t.count > Self.tailLimit { t.removeFirst(t.count - Self.tailLimit / 2) }
        }
    }

    public var recentText: String { String(decoding: tail.withLock { $0 }, as: UTF8.self) }
}

/// Puts a terminal on stdin into non-canonical, no-echo mode while the VM runs, so keystrokes
/// reach the guest one by one; restores it afterwards.
final class TerminalMode {
    private var saved = termios()
    private let active: Bool

    init(rawInput: Bool) {
        guard rawInput, isatty(STDIN_FILENO) == 1, tcgetattr(STDIN_FILENO, &saved) == 0 else { active = false; return }
        var t = saved
        t.c_lflag &= ~tcflag_t(ICANON | ECHO)
        tcsetattr(STDIN_FILENO, TCSANOW, &t)
        active = true
    }

    func restore() {
        if active { tcsetattr(STDIN_FILENO, TCSANOW, &saved) }
    }
}
