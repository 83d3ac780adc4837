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
