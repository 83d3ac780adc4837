import CLinux
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Stream-socket I/O with descriptors riding along (SCM_RIGHTS), as the VMM control socket
/// passes snapshot files: the one sendmsg/recvmsg path, EINTR retried in the shim.
public enum PassedFiles {
    /// Sends all of `bytes`; `files` travel with the first byte (at most 64).
    public static func send(_ socket: FileDescriptor, _ bytes: [UInt8], files: [FileDescriptor] = []) throws(Errno) {
        let raw = files.map(\.rawValue)
        let sent = bytes.withUnsafeBytes { b in raw.withUnsafeBufferPointer { f in
            clinux_send_with_fds(socket.rawValue, b.baseAddress, UInt(b.count), f.baseAddress, Int32(f.count))
        } }
        if sent < 0 { throw Errno(rawValue: errno) }
    }

    /// Up to `maximum` bytes (empty at end of stream) and any descriptors that came with them,
    /// each owned by the caller from here on.
    public static func receive(_ socket: FileDescriptor, maximum: Int = 65536) throws(Errno) -> (bytes: [UInt8], files: [FileDescriptor]) {
        var buffer = [UInt8](repeating: 0, count: maximum)
        var fds = [Int32](repeating: -1, count: 253)  // SCM_MAX_FD, as the C side
        var count: Int32 = 0
        let n = buffer.withUnsafeMutableBytes { b in fds.withUnsafeMutableBufferPointer { f in
            clinux_recv_with_fds(socket.rawValue, b.baseAddress, UInt(b.count), f.baseAddress, Int32(f.count), &count)
        } }
        if n < 0 { throw Errno(rawValue: errno) }
        return (Array(buffer[0..<n]), fds.prefix(Int(count)).map { FileDescriptor(rawValue: $0) })
    }
}
