import CLinux
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A small epoll(7) wrapper for device I/O threads: register descriptors with a token, wait.
public final class Epoll: Sendable {
    public let fd: FileDescriptor

    public init() throws(Errno) {
        let raw = clinux_epoll_create()
        guard raw >= 0 else { throw Errno(rawValue: errno) }
        fd = FileDescriptor(rawValue: raw)
    }

    deinit { try? fd.close() }

    public struct Events: OptionSet, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let readable = Events(rawValue: CLINUX_EPOLLIN)
        public static let writable = Events(rawValue: CLINUX_EPOLLOUT)
        public static let error = Events(rawValue: CLINUX_EPOLLERR | CLINUX_EPOLLHUP)
        /// Edge-triggered: reported once per change; the reader drains until EAGAIN.
        public static let edgeTriggered = Events(rawValue: CLINUX_EPOLLET)
    }

    public func add(_ target: FileDescriptor, events: Events, token: UInt64) throws(Errno) {
        guard clinux_epoll_ctl(fd.rawValue, CLINUX_EPOLL_CTL_ADD, target.rawValue, events.rawValue, token) == 0 else {
            throw Errno(rawValue: errno)
        }
    }

    public func modify(_ target: FileDescriptor, events: Events, token: UInt64) throws(Errno) {
        guard clinux_epoll_ctl(fd.rawValue, CLINUX_EPOLL_CTL_MOD, target.rawValue, events.rawValue, token) == 0 else {
            throw Errno(rawValue: errno)
        }
    }

    /// Waits for events; returns (token, events) pairs. EINTR returns an empty list.
    public func wait(timeoutMilliseconds: Int32 = -1) throws(Errno) -> [(token: UInt64, events: Events)] {
        var tokens = [UInt64](repeating: 0, count: 16)
        var events = [UInt32](repeating: 0, count: 16)
        let n = clinux_epoll_wait(fd.rawValue, &tokens, &events, 16, timeoutMilliseconds)
        if n < 0 {
            if errno == EINTR { return [] }
            throw Errno(rawValue: errno)
        }
        return (0..<Int(n)).map { (tokens[$0], Events(rawValue: events[$0])) }
    }
}
