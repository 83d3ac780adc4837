import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A kernel or initrd read into memory, with bounds-checked little-endian field access.
public struct ImageFile: Sendable {
    public let path: String
    public let bytes: [UInt8]

    public init(path: String, bytes: [UInt8]) { self.path = path; self.bytes = bytes }

    /// Reads a kernel or initrd through a descriptor opened for it (the VMM's `GuestFile`): the
    /// loader never looks the path up, `path` only names the file in messages.
    public static func read(from fd: FileDescriptor, path: String) throws -> ImageFile {
        var st = stat()
        guard fstat(fd.rawValue, &st) == 0 else { throw BootError.cannotRead(path: path, reason: Errno(rawValue: errno).description) }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw BootError.cannotRead(path: path, reason: "not a regular file") }
        let size = Int(st.st_size)
        var bytes = [UInt8](repeating: 0, count: size)
        var done = 0
        try bytes.withUnsafeMutableBytes { buf in
            while done < size {
                // swift-system's pread retries EINTR (Boot sits below Posix); from offset 0
                // whatever the descriptor's position.
                let n: Int
                do { n = try fd.read(fromAbsoluteOffset: Int64(done), into: UnsafeMutableRawBufferPointer(rebasing: buf[done...])) }
                catch { throw BootError.cannotRead(path: path, reason: "\(error)") }
                if n == 0 { break }
                done += n
            }
        }
        if done < size { bytes.removeLast(size - done) }
        return ImageFile(path: path, bytes: bytes)
    }

    public var count: Int { bytes.count }

    public func integer<T: FixedWidthInteger>(_: T.Type, at offset: Int, _ what: @autoclosure () -> String) throws -> T {
        // Written so that no guest-controlled offset can overflow.
        guard offset >= 0, offset <= bytes.count - MemoryLayout<T>.size else {
            throw BootError.truncated(path: path, what: what())
        }
        var v: T = 0
        for i in 0..<MemoryLayout<T>.size { v |= T(bytes[offset + i]) << (8 * i) }
        return v
    }

    public func slice(_ offset: Int, _ length: Int, _ what: @autoclosure () -> String) throws -> ArraySlice<UInt8> {
        guard offset >= 0, length >= 0, offset <= bytes.count, length <= bytes.count - offset else {
            throw BootError.truncated(path: path, what: what())
        }
        return bytes[offset..<(offset + length)]
    }
}
