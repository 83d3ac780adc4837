import CLinux
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A joinable POSIX thread running a Swift closure. (Foundation's Thread would pull Foundation
/// into the VMM's footprint for no gain.) vCPU threads and device I/O threads use it.
public final class PosixThread: @unchecked Sendable {
    private final class Box { let body: () -> Void; init(_ b: @escaping () -> Void) { body = b } }
    private var handle = pthread_t()

    public struct StartError: Error, CustomStringConvertible {
        public let name: String
        public let code: Int32
        public var description: String { "cannot start thread \(name): \(errnoMessage(code))" }
    }

    public init(name: String, _ body: @escaping @Sendable () -> Void) throws {
        let threadName = String(name.prefix(15))
        let box = Unmanaged.passRetained(Box({ clinux_set_thread_name(threadName); PosixThread.startHook.withLock { $0 }?(name); body() })).toOpaque()
        let rc = pthread_create(&handle, nil, { ctx in
            let box = Unmanaged<Box>.fromOpaque(ctx!).takeRetainedValue()
            box.body()
            return nil
        }, box)
        if rc != 0 {
            Unmanaged<Box>.fromOpaque(box).release()
            throw StartError(name: name, code: rc)
        }
    }

    /// Runs first in every new thread, with its name (the VMM's seccomp filters, Sources/Sandbox).
    static let startHook = Mutex<(@Sendable (String) -> Void)?>(nil)
    public static func setStartHook(_ hook: (@Sendable (String) -> Void)?) { startHook.withLock { $0 = hook } }

    public func join() { pthread_join(handle, nil) }

    /// For threads nobody waits for (console input blocks in read() until the process ends).
    public func detach() { pthread_detach(handle) }
}

/// Monotonic time in nanoseconds.
public func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}
