import CLinux
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// An eventfd(2) counter: the cheapest cross-thread (and guest-interrupt, via irqfd) signal.
public final class EventFD: Sendable {
    public let fd: FileDescriptor

    public init(nonBlocking: Bool = true) throws(Errno) {
        let raw = clinux_eventfd(nonBlocking ? 1 : 0)
        guard raw >= 0 else { throw Errno(rawValue: errno) }
        fd = FileDescriptor(rawValue: raw)
    }

    /// An eventfd another process created and passed on (a channel's doorbell, by rtvisord);
    /// closed with this object.
    public init(adopting fd: FileDescriptor) { self.fd = fd }

    deinit { try? fd.close() }

    /// Adds 1. Never blocks in practice: the counter would have to reach 2^64-2.
    public func signal() {
        var one: UInt64 = 1
        _ = try? retryInterrupted { write(fd.rawValue, &one, 8) }
    }

    /// Reads and resets the counter; 0 if it was not signalled (non-blocking mode).
    @discardableResult
    public func drain() -> UInt64 {
        var v: UInt64 = 0
        let n = try? retryInterrupted { read(fd.rawValue, &v, 8) }
        return n == 8 ? v : 0
    }
}
