import CKVM
#if canImport(Glibc)
import Glibc
#endif

/// A joinable POSIX thread running a Swift closure. (Foundation's Thread would pull Foundation
/// into the VMM's footprint for no gain.)
final class PosixThread {
    private final class Box { let body: () -> Void; init(_ b: @escaping () -> Void) { body = b } }
    private var handle = pthread_t()

    init(name: String, _ body: @escaping @Sendable () -> Void) throws {
        let threadName = String(name.prefix(15))
        let box = Unmanaged.passRetained(Box({ ckvm_set_thread_name(threadName); body() })).toOpaque()
        let rc = pthread_create(&handle, nil, { ctx in
            let box = Unmanaged<Box>.fromOpaque(ctx!).takeRetainedValue()
            box.body()
            return nil
        }, box)
        if rc != 0 {
            Unmanaged<Box>.fromOpaque(box).release()
            throw VMMError.setup("cannot start thread \(name): \(String(cString: strerror(rc)))")
        }
    }

    func join() { pthread_join(handle, nil) }

    /// For threads nobody waits for (console input blocks in read() until the process ends).
    func detach() { pthread_detach(handle) }
}

/// Monotonic time in nanoseconds.
public func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

public enum VMMError: Error, CustomStringConvertible {
    case setup(String)
    public var description: String {
        switch self { case let .setup(m): m }
    }
}
