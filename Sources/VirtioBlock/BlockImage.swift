import CLinux
import Memory
import Posix
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Why a disk image could not be opened; names the file and the reason.
public struct BlockImageError: Error, Equatable, CustomStringConvertible {
    public let path: String
    public let reason: String
    public var description: String { "\(path): \(reason)" }
}

/// A raw disk image (a regular file or a block device) backing one virtio-blk device.
/// Opened once with an advisory lock: exclusive for read-write, shared for read-only, so two VMs
/// can share a read-only image but never a writable one.
public final class BlockImage: Sendable {
    public let path: String
    public let fd: FileDescriptor
    public let readOnly: Bool
    public let directIO: Bool
    /// Size in bytes; a trailing partial sector is not exposed.
    public let size: UInt64

    public static let sectorSize: UInt64 = 512
    /// O_DIRECT needs aligned buffers; guest buffers need not be, so direct I/O bounces.
    static let directAlignment = 4096

    public init(path: String, readOnly: Bool, directIO: Bool = false) throws {
        self.path = path
        self.readOnly = readOnly
        self.directIO = directIO
        var flags = (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC
        if directIO { flags |= CLINUX_O_DIRECT }
        let raw = open(path, flags)
        guard raw >= 0 else {
            let e = errno
            var reason = errnoMessage(e)
            if e == EINVAL && directIO { reason += " (the file system does not support O_DIRECT; set direct_io to false)" }
            throw BlockImageError(path: path, reason: "cannot open disk image: \(reason)")
        }
        let fd = FileDescriptor(rawValue: raw)
        do {
            var st = stat()
            guard fstat(raw, &st) == 0 else { throw BlockImageError(path: path, reason: "fstat: \(errnoMessage())") }
            let type = st.st_mode & S_IFMT
            var bytes: UInt64
            if type == S_IFREG {
                bytes = UInt64(st.st_size)
            } else if type == S_IFBLK {
                bytes = 0
                guard clinux_ioctl_ptr(raw, CLINUX_BLKGETSIZE64, &bytes) == 0 else {
                    throw BlockImageError(path: path, reason: "BLKGETSIZE64: \(errnoMessage())")
                }
            } else {
                throw BlockImageError(path: path, reason: "not a regular file or block device")
            }
            if flock(raw, (readOnly ? LOCK_SH : LOCK_EX) | LOCK_NB) != 0 {
                let e = errno
                throw BlockImageError(path: path, reason: e == EWOULDBLOCK
                    ? (readOnly ? "disk image is in use read-write by another process (another VM?)"
                                : "disk image is in use by another process (another VM?); a writable image is exclusive")
                    : "cannot lock disk image: \(errnoMessage(e))")
            }
            bytes -= bytes % Self.sectorSize
            guard bytes > 0 else { throw BlockImageError(path: path, reason: "disk image is smaller than one 512-byte sector") }
            self.size = bytes
            self.fd = fd
        } catch {
            try? fd.close()
            throw error
        }
    }

    deinit { try? fd.close() }

    public var sectors: UInt64 { size / Self.sectorSize }

    /// Reads `count` bytes at `offset` straight into guest RAM at `address`.
    public func read(into memory: GuestMemory, at address: GuestAddress, count: Int, offset: UInt64) throws {
        try memory.withUnsafeMutableBytes(at: address, count: count) { dst in
            if directIO {
                try bounced(count) { bounce in
                    try transfer(bounce, offset: offset, write: false)
                    dst.copyMemory(from: UnsafeRawBufferPointer(bounce))
                }
            } else {
                try transfer(dst, offset: offset, write: false)
            }
        }
    }

    /// Writes `count` bytes of guest RAM at `address` to the image at `offset`.
    public func write(from memory: GuestMemory, at address: GuestAddress, count: Int, offset: UInt64) throws {
        try memory.withUnsafeMutableBytes(at: address, count: count) { src in
            if directIO {
                try bounced(count) { bounce in
                    bounce.copyMemory(from: UnsafeRawBufferPointer(src))
                    try transfer(bounce, offset: offset, write: true)
                }
            } else {
                try transfer(src, offset: offset, write: true)
            }
        }
    }

    /// Reads into several guest buffers with one preadv (the data of one request).
    public func read(into memory: GuestMemory, segments: [(address: GuestAddress, length: Int)], offset: UInt64) throws {
        try transfer(memory, segments, offset: offset, write: false)
    }

    /// Writes several guest buffers with one pwritev.
    public func write(from memory: GuestMemory, segments: [(address: GuestAddress, length: Int)], offset: UInt64) throws {
        try transfer(memory, segments, offset: offset, write: true)
    }

    /// One vectored call for the whole request; per segment when O_DIRECT needs the bounce
    /// buffer or there is only one segment anyway.
    private func transfer(_ memory: GuestMemory, _ segments: [(address: GuestAddress, length: Int)], offset: UInt64, write: Bool) throws {
        guard directIO || segments.count == 1 else {
            try memory.withIOVectors(segments) { try vectored($0, offset: offset, write: write) }
            return
        }
        var position = offset
        for s in segments {
            if write { try self.write(from: memory, at: s.address, count: s.length, offset: position) }
            else { try read(into: memory, at: s.address, count: s.length, offset: position) }
            position += UInt64(s.length)
        }
    }

    /// preadv/pwritev until every vector is done; reads past the end of the file yield zeroes.
    private func vectored(_ vectors: UnsafeBufferPointer<iovec>, offset: UInt64, write: Bool) throws {
        var iov = Array(vectors)
        var start = 0
        var position = offset
        while start < iov.count {
            let count = Int32(min(iov.count - start, 1024)) // IOV_MAX on Linux
            let n = try retryInterrupted {
                iov.withUnsafeBufferPointer { p in
                    write ? pwritev(fd.rawValue, p.baseAddress! + start, count, off_t(position))
                          : preadv(fd.rawValue, p.baseAddress! + start, count, off_t(position))
                }
            }
            if n == 0 {
                guard !write else { throw Errno.ioError }
                for i in start..<iov.count { memset(iov[i].iov_base, 0, iov[i].iov_len) }
                return
            }
            position += UInt64(n)
            var done = n
            while done > 0 && start < iov.count {
                if done >= iov[start].iov_len { done -= iov[start].iov_len; start += 1 }
                else {
                    iov[start].iov_base = iov[start].iov_base! + done
                    iov[start].iov_len -= done
                    done = 0
                }
            }
        }
    }

    /// Makes every acknowledged write durable (VIRTIO_BLK_T_FLUSH).
    public func flush() throws {
        try retryInterrupted { fdatasync(fd.rawValue) }
    }

    /// Deallocates a range; it reads back as zeroes where the file system supports holes.
    public func discard(offset: UInt64, length: UInt64) throws {
        if clinux_fallocate(fd.rawValue, CLINUX_FALLOC_PUNCH_HOLE_KEEP_SIZE, Int64(offset), Int64(length)) != 0 {
            // Discard is a hint: a file system without hole punching just keeps the data.
            if errno != EOPNOTSUPP { throw Errno(rawValue: errno) }
        }
    }

    /// Makes a range read back as zeroes: ZERO_RANGE, else a hole, else writing zeroes.
    public func writeZeroes(offset: UInt64, length: UInt64, mayUnmap: Bool) throws {
        if !directIO {
            if clinux_fallocate(fd.rawValue, CLINUX_FALLOC_ZERO_RANGE, Int64(offset), Int64(length)) == 0 { return }
            if mayUnmap, clinux_fallocate(fd.rawValue, CLINUX_FALLOC_PUNCH_HOLE_KEEP_SIZE, Int64(offset), Int64(length)) == 0 { return }
        }
        let chunk = 1 << 20
        try bounced(chunk) { zeros in
            zeros.initializeMemory(as: UInt8.self, repeating: 0)
            var done: UInt64 = 0
            while done < length {
                let n = Int(min(UInt64(chunk), length - done))
                try transfer(UnsafeMutableRawBufferPointer(rebasing: zeros[0..<n]), offset: offset + done, write: true)
                done += UInt64(n)
            }
        }
    }

    private func bounced(_ count: Int, _ body: (UnsafeMutableRawBufferPointer) throws -> Void) throws {
        let rounded = (count + Self.directAlignment - 1) / Self.directAlignment * Self.directAlignment
        let p = UnsafeMutableRawPointer.allocate(byteCount: max(rounded, Self.directAlignment), alignment: Self.directAlignment)
        defer { p.deallocate() }
        try body(UnsafeMutableRawBufferPointer(start: p, count: count))
    }

    /// pread/pwrite until done; a short read past the end of the file yields zeroes.
    private func transfer(_ buffer: UnsafeMutableRawBufferPointer, offset: UInt64, write: Bool) throws {
        var done = 0
        while done < buffer.count {
            let p = buffer.baseAddress! + done
            let n = try retryInterrupted {
                write ? pwrite(fd.rawValue, p, buffer.count - done, off_t(offset) + off_t(done))
                      : pread(fd.rawValue, p, buffer.count - done, off_t(offset) + off_t(done))
            }
            if n == 0 {
                guard !write else { throw Errno.ioError }
                memset(p, 0, buffer.count - done)
                return
            }
            done += n
        }
    }
}
