import CLinux
import Memory
import Posix
import Synchronization
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
/// Opened once, through the descriptor of the file found (`GuestFile`), with an advisory lock:
/// exclusive for read-write, shared for read-only, so two VMs can share a read-only image but
/// never a writable one; with QEMU's byte-range locks too, so neither can QEMU (or qemu-img) and
/// rtvisor; a writable block device is opened `O_EXCL` (refused while mounted or held by another
/// exclusive opener).
public final class BlockImage: Sendable {
    public let path: String
    public let fd: FileDescriptor
    public let readOnly: Bool
    public let directIO: Bool
    /// Size in bytes; a trailing partial sector is not exposed.
    public let size: UInt64

    /// The bounce buffer for O_DIRECT and for writing zeroes (one per disk, made on first use).
    private let bounce = Mutex<AlignedBuffer?>(nil)
    static let bounceSize = 1 << 20
    /// The largest bounce buffer allocated (tests).
    private let largestBounce = Atomic<Int>(0)
    package var largestBounceBuffer: Int { largestBounce.load(ordering: .relaxed) }

    public static let sectorSize: UInt64 = 512
    /// O_DIRECT needs aligned buffers; guest buffers need not be, so direct I/O bounces.
    static let directAlignment = 4096

    /// The disk of a file the VMM found under docs/sandbox.md's rules (`GuestFile`): opened through
    /// that descriptor with the disk's access mode, never through its path again.
    /// `lockNow: false` (a live migration's target): the image is opened but not locked; the
    /// source holds it until it hands the VM over, then this side takes it (`lock()`).
    public init(file: GuestFile, readOnly: Bool, directIO: Bool = false, lockNow: Bool = true) throws {
        let path = file.path
        self.path = path
        self.readOnly = readOnly
        self.directIO = directIO
        // O_EXCL without O_CREAT: ignored for files, exclusive for block devices.
        var flags = (readOnly ? O_RDONLY : O_RDWR | O_EXCL) | O_CLOEXEC
        if directIO { flags |= CLINUX_O_DIRECT }
        let fd: FileDescriptor
        do { fd = try file.open(flags) } catch {
            var reason = errnoMessage(error.rawValue)
            if error == .resourceBusy && !readOnly { reason += " (a block device that is mounted or held by another exclusive opener)" }
            if error == .invalidArgument && directIO { reason += " (the file system does not support O_DIRECT; set direct_io to false)" }
            throw BlockImageError(path: path, reason: "cannot open disk image: \(reason)")
        }
        let raw = fd.rawValue
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
            if lockNow { try Self.lock(raw, path: path, readOnly: readOnly) }
            bytes -= bytes % Self.sectorSize
            guard bytes > 0 else { throw BlockImageError(path: path, reason: "disk image is smaller than one 512-byte sector") }
            self.size = bytes
            self.fd = fd
        } catch {
            try? fd.close()
            throw error
        }
    }

    /// Takes the image's locks (flock and QEMU's byte-range locks); throws who holds it.
    static func lock(_ raw: Int32, path: String, readOnly: Bool) throws {
        if flock(raw, (readOnly ? LOCK_SH : LOCK_EX) | LOCK_NB) != 0 {
            let e = errno
            throw BlockImageError(path: path, reason: e == EWOULDBLOCK
                ? (readOnly ? "disk image is in use read-write by another process (another VM?)"
                            : "disk image is in use by another process (another VM?); a writable image is exclusive")
                : "cannot lock disk image: \(errnoMessage(e))")
        }
        if let holder = QEMUImageLocks.take(fd: raw, readOnly: readOnly) {
            _ = clinux_ofd_unlock_all(raw)
            _ = flock(raw, LOCK_UN)
            throw BlockImageError(path: path, reason: holder)
        }
    }

    /// Takes the locks of an image opened with `lockNow: false` (or released by `unlock()`).
    public func lock() throws { try Self.lock(fd.rawValue, path: path, readOnly: readOnly) }

    /// Lets the image go (a migration's source, once the VM is paused for the last round): the
    /// target takes it when it runs the VM; the source takes it back if the migration fails.
    public func unlock() {
        _ = clinux_ofd_unlock_all(fd.rawValue)
        _ = flock(fd.rawValue, LOCK_UN)
    }

    /// A disk image by path, found under the same rules (tests, the fuzzer). The VMM locates
    /// its disks itself (with the definition field for messages) and uses `init(file:)`.
    public convenience init(path: String, readOnly: Bool, directIO: Bool = false) throws {
        let file: GuestFile
        do { file = try GuestFile.locate(path, field: "disk", allowing: [.regularFile, .blockDevice]) }
        catch { throw BlockImageError(path: path, reason: error.reason) }
        try self.init(file: file, readOnly: readOnly, directIO: directIO)
    }

    deinit { try? fd.close() }

    /// QEMU's image locking (its block/file-posix.c, "image locking"): open-file-description read
    /// locks on byte 100 + n for each permission n a user holds, and 200 + n for each it does not
    /// let others hold (n: 0 consistent read, 1 write, 3 resize). Taking the same bytes makes a
    /// running VM's image refuse QEMU, qemu-img and rtvisor alike, and the other way round.
    enum QEMUImageLocks {
        static let held = 100, notShared = 200
        static let consistentRead = 0, write = 1, resize = 3

        /// Takes this user's bytes, then looks for a conflicting holder; nil or why not.
        static func take(fd: Int32, readOnly: Bool) -> String? {
            let mine = readOnly ? [held + consistentRead, notShared + write]
                                : [held + consistentRead, held + write, notShared + write, notShared + resize]
            for byte in mine {
                let rc = clinux_ofd_lock(fd, Int64(byte), 0, 0)
                if rc < 0 { return "cannot lock disk image (byte \(byte)): \(errnoMessage(-rc))" }
            }
            // Someone writing conflicts with us (we never let others write); someone not sharing
            // writes conflicts with a writable disk.
            var conflicts = [held + write]
            if !readOnly { conflicts += [notShared + write, held + resize] }
            for byte in conflicts where clinux_ofd_lock(fd, Int64(byte), 1, 1) == 1 {
                return readOnly ? "disk image is in use read-write by another process (QEMU, qemu-img or another VM, by its image locks)"
                                : "disk image is in use by another process (QEMU, qemu-img or another VM, by its image locks); a writable image is exclusive"
            }
            return nil
        }
    }

    public var sectors: UInt64 { size / Self.sectorSize }

    /// Reads `count` bytes at `offset` straight into guest RAM at `address`.
    public func read(into memory: GuestMemory, at address: GuestAddress, count: Int, offset: UInt64) throws {
        try transfer(memory, [(address, count)], offset: offset, write: false)
    }

    /// Writes `count` bytes of guest RAM at `address` to the image at `offset`.
    public func write(from memory: GuestMemory, at address: GuestAddress, count: Int, offset: UInt64) throws {
        try transfer(memory, [(address, count)], offset: offset, write: true)
    }

    /// Reads into several guest buffers with one preadv (the data of one request).
    public func read(into memory: GuestMemory, segments: [(address: GuestAddress, length: Int)], offset: UInt64) throws {
        try transfer(memory, segments, offset: offset, write: false)
    }

    /// Writes several guest buffers with one pwritev.
    public func write(from memory: GuestMemory, segments: [(address: GuestAddress, length: Int)], offset: UInt64) throws {
        try transfer(memory, segments, offset: offset, write: true)
    }

    /// One vectored call for the whole request (one plain call for one segment). With O_DIRECT,
    /// through the disk's bounce buffer instead, in pieces of at most its size: the guest decides
    /// how much a request moves, never how much the VMM allocates.
    private func transfer(_ memory: GuestMemory, _ segments: [(address: GuestAddress, length: Int)], offset: UInt64, write: Bool) throws {
        if directIO {
            try bounced(memory, segments, offset: offset, write: write)
        } else if segments.count == 1 {
            try memory.withUnsafeMutableBytes(at: segments[0].address, count: segments[0].length) {
                try transfer($0, offset: offset, write: write)
            }
        } else {
            try memory.withIOVectors(segments) { try vectored($0, offset: offset, write: write) }
        }
    }

    /// Gathers the guest's buffers into the bounce buffer and writes it, or reads into it and
    /// scatters, one piece at a time. The pieces are whole bounce buffers, so every transfer but
    /// the last is aligned for O_DIRECT whatever the guest's buffer boundaries are.
    private func bounced(_ memory: GuestMemory, _ segments: [(address: GuestAddress, length: Int)], offset: UInt64, write: Bool) throws {
        try withBounceBuffer { bounce in
            var segment = 0, within = 0
            var position = offset
            var left = segments.reduce(0) { $0 + $1.length }
            while left > 0 {
                let piece = UnsafeMutableRawBufferPointer(rebasing: bounce[0..<min(left, bounce.count)])
                if !write { try transfer(piece, offset: position, write: false) }
                // Copy between the piece and the guest buffers it covers, resuming where the last
                // piece stopped.
                var done = 0
                while done < piece.count {
                    let s = segments[segment]
                    let n = min(s.length - within, piece.count - done)
                    try memory.withUnsafeMutableBytes(at: GuestAddress(s.address.raw + UInt64(within)), count: n) { guest in
                        let part = UnsafeMutableRawBufferPointer(rebasing: piece[done..<done + n])
                        if write { part.copyMemory(from: UnsafeRawBufferPointer(guest)) } else { guest.copyMemory(from: UnsafeRawBufferPointer(part)) }
                    }
                    done += n
                    within += n
                    if within == s.length { segment += 1; within = 0 }
                }
                if write { try transfer(piece, offset: position, write: true) }
                position += UInt64(piece.count)
                left -= piece.count
            }
        }
    }

    /// preadv/pwritev until every vector is done; reads past the end of the file yield zeroes.
    private func vectored(_ vectors: UnsafeBufferPointer<iovec>, offset: UInt64, write: Bool) throws {
        var iov = Array(vectors)
        var start = 0
        var position = offset
        while start < iov.count {
            let count = Int32(min(iov.count - start, GuestMemory.maxIOVectors))
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
        try withBounceBuffer { zeros in
            zeros.initializeMemory(as: UInt8.self, repeating: 0)
            var done: UInt64 = 0
            while done < length {
                let n = Int(min(UInt64(zeros.count), length - done))
                try transfer(UnsafeMutableRawBufferPointer(rebasing: zeros[0..<n]), offset: offset + done, write: true)
                done += UInt64(n)
            }
        }
    }

    /// Runs `body` with the disk's bounce buffer (`bounceSize` bytes, aligned for O_DIRECT),
    /// allocated on first use and kept: requests are served one at a time per disk, and a
    /// request needs no allocation of its own.
    private func withBounceBuffer(_ body: (UnsafeMutableRawBufferPointer) throws -> Void) throws {
        try bounce.withLock { buffer in
            if buffer == nil {
                buffer = AlignedBuffer(count: Self.bounceSize, alignment: Self.directAlignment)
                largestBounce.max(Self.bounceSize, ordering: .relaxed)
            }
            try body(buffer!.bytes)
        }
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

/// Page-aligned host memory owned by one object (the O_DIRECT bounce buffer).
private final class AlignedBuffer {
    let bytes: UnsafeMutableRawBufferPointer
    init(count: Int, alignment: Int) {
        bytes = UnsafeMutableRawBufferPointer(start: UnsafeMutableRawPointer.allocate(byteCount: count, alignment: alignment), count: count)
    }
    deinit { bytes.deallocate() }
}
