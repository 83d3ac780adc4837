import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

// The one errno/EINTR path for modules above Posix. swift-system keeps its own helpers
// (`Errno.current`, `valueOrErrno(retryOnInterrupt:)`) internal, so these are the public ones.

/// strerror's text for an errno value ("No such file or directory"). `Errno.description` is
/// strerror, so messages stay word for word what tests and docs quote. The default is the
/// calling thread's errno, read when the call is made.
public func errnoMessage(_ code: Int32 = errno) -> String {
    Errno(rawValue: code).description
}

/// Runs a syscall that returns -1 and sets errno on failure, again for as long as it fails
/// with EINTR (a signal arrived before it did anything). Returns its result; any other failure
/// is thrown as that errno.
@discardableResult
public func retryInterrupted<Result: SignedInteger>(_ call: () -> Result) throws(Errno) -> Result {
    while true {
        let result = call()
        if result >= 0 { return result }
        let code = errno
        if code != EINTR { throw Errno(rawValue: code) }
    }
}

/// Writes all of `bytes` to `fd`, continuing after short writes and EINTR.
public func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) throws(Errno) {
    var offset = 0
    while offset < bytes.count {
        offset += try retryInterrupted { Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset) }
    }
}

/// Writes all of `bytes` to `fd`, continuing after short writes and EINTR.
public func writeAll(_ fd: Int32, _ bytes: [UInt8]) throws(Errno) {
    // Through a Result: Array.withUnsafeBytes rethrows as `any Error`.
    try bytes.withUnsafeBytes { raw in Result { () throws(Errno) in try writeAll(fd, raw) } }.get()
}

/// Everything `fd` has until end of file (or the peer's close), continuing after EINTR.
public func readToEnd(_ fd: Int32, chunk: Int = 65536) throws(Errno) -> [UInt8] {
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: chunk)
    while true {
        let n = try buf.withUnsafeMutableBytes { raw in Result { () throws(Errno) in try retryInterrupted { Glibc.read(fd, raw.baseAddress, raw.count) } } }.get()
        if n == 0 { return out }
        out.append(contentsOf: buf[0..<n])
    }
}
