import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A failed KVM operation: which ioctl (or open) and the errno it returned.
public struct KVMError: Error, Equatable, CustomStringConvertible {
    public let operation: String
    public let errno: Errno
    public let hint: String?

    public init(_ operation: String, _ errno: Errno, hint: String? = nil) {
        self.operation = operation; self.errno = errno; self.hint = hint
    }

    public var description: String {
        var s = "\(operation) failed: \(errno) (errno \(errno.rawValue))"
        if let hint { s += "; \(hint)" }
        return s
    }
}

/// The one place KVM ioctls are issued, so errors always carry the ioctl's name.
enum IOCtl {
    /// Retries EINTR unless `interruptible` (KVM_RUN returns EINTR on purpose when kicked).
    @discardableResult
    static func call(_ fd: FileDescriptor, _ request: UInt, _ name: String,
                     _ arg: UnsafeMutableRawPointer?, interruptible: Bool = false) throws -> Int32 {
        while true {
            let r = ckvmIoctlPtr(fd.rawValue, request, arg)
            if r >= 0 { return r }
            let e = Errno(rawValue: Glibc.errno)
            if e == .interrupted && !interruptible { continue }
            throw KVMError(name, e)
        }
    }

    @discardableResult
    static func call(_ fd: FileDescriptor, _ request: UInt, _ name: String, value: UInt) throws -> Int32 {
        while true {
            let r = ckvmIoctlVal(fd.rawValue, request, value)
            if r >= 0 { return r }
            let e = Errno(rawValue: Glibc.errno)
            if e == .interrupted { continue }
            throw KVMError(name, e)
        }
    }

    @discardableResult
    static func call<T>(_ fd: FileDescriptor, _ request: UInt, _ name: String, _ value: inout T) throws -> Int32 {
        try withUnsafeMutableBytes(of: &value) { try call(fd, request, name, $0.baseAddress) }
    }
}
