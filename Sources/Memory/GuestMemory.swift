import Arch
import CLinux
import Posix
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A guest-physical address.
public struct GuestAddress: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let raw: UInt64
    public init(_ raw: UInt64) { self.raw = raw }
    public static func < (a: GuestAddress, b: GuestAddress) -> Bool { a.raw < b.raw }
    public func adding(_ offset: UInt64) -> GuestAddress? {
        let (sum, overflow) = raw.addingReportingOverflow(offset)
        return overflow ? nil : GuestAddress(sum)
    }
    public var description: String { "0x" + String(raw, radix: 16) }
}

public enum GuestMemoryError: Error, Equatable, CustomStringConvertible {
    /// [address, address+length) is not entirely inside one RAM region.
    case outOfRange(address: UInt64, length: UInt64)
    case mmapFailed(bytes: UInt64, errno: Int32)
    case hugePagesUnavailable(bytes: UInt64, errno: Int32)
    case lockFailed(bytes: UInt64, errno: Int32)
    case overlappingRegions
    case invalidSize(UInt64)
    case imageTooShort(offset: UInt64)
    case imageSize(expected: UInt64, actual: UInt64)
    case imageRange(offset: UInt64, length: UInt64)

    public var description: String {
        switch self {
        case let .outOfRange(a, l): "guest memory access 0x\(String(a, radix: 16))+0x\(String(l, radix: 16)) is outside guest RAM"
        case let .mmapFailed(b, e): "cannot map \(b / (1 << 20)) MiB of guest RAM: \(Errno(rawValue: e))"
        case let .hugePagesUnavailable(b, e):
            "cannot map \(b / (1 << 20)) MiB of guest RAM on 2 MiB huge pages: \(Errno(rawValue: e)) (reserve them: sysctl vm.nr_hugepages)"
        case let .lockFailed(b, e):
            "cannot lock \(b / (1 << 20)) MiB of guest RAM: \(Errno(rawValue: e)) (needs CAP_IPC_LOCK or RLIMIT_MEMLOCK)"
        case .overlappingRegions: "guest RAM regions overlap"
        case let .invalidSize(s): "invalid guest RAM size \(s)"
        case let .imageTooShort(o): "the memory file ends at \(o) bytes, inside guest RAM"
        case let .imageSize(e, a): "the memory file has \(a) bytes, the VM's RAM is \(e)"
        case let .imageRange(o, l): "guest memory range at image offset \(o), \(l) bytes, is not whole pages inside one RAM region"
        }
    }
}

/// How guest RAM is backed. Real-time VMs prefault and lock it so the vCPU never page-faults.
public struct MemoryBacking: Equatable, Sendable {
    /// Fault every page in at map time (MAP_POPULATE).
    public var populate: Bool
    /// 2 MiB hugetlbfs pages (MAP_HUGETLB); the pool must be reserved beforehand.
    public var hugePages: Bool
    /// mlock the mapping: never swapped out, never faulted again.
    public var lock: Bool
    public init(populate: Bool = false, hugePages: Bool = false, lock: Bool = false) {
        self.populate = populate; self.hugePages = hugePages; self.lock = lock
    }
    public static let hugePageSize: UInt64 = 2 << 20
}

/// One contiguous guest-physical RAM range. Fresh RAM is a memfd mapped shared, so another
/// process (the next rtvisor-vmm of a same-host upgrade, docs/migration.md) can map the same
/// pages from the descriptor without a copy; a snapshot restored by mapping is its memory file
/// mapped copy-on-write.
public final class GuestMemoryRegion: @unchecked Sendable {
    public let start: GuestAddress
    public let size: UInt64
    /// Host virtual address of the mapping; handed to KVM_SET_USER_MEMORY_REGION.
    public let hostAddress: UInt64
    /// The memfd behind the mapping (nil: a file mapped copy-on-write). Its allocated pages are
    /// the pages the guest or the VMM ever wrote (`TouchedPages`).
    public let sharedFile: FileDescriptor?
    private let base: UnsafeMutableRawPointer

    /// Holds only what was written to it (untouched pages are zero); false for a copy-on-write
    /// file mapping, whose untouched pages hold the file's data.
    public var isAnonymous: Bool { sharedFile != nil }

    /// Fresh, zeroed RAM: a new memfd of `size` bytes.
    public convenience init(start: GuestAddress, size: UInt64, backing: MemoryBacking = MemoryBacking()) throws {
        guard size > 0, size % 4096 == 0 else { throw GuestMemoryError.invalidSize(size) }
        if backing.hugePages && size % MemoryBacking.hugePageSize != 0 { throw GuestMemoryError.invalidSize(size) }
        let raw = clinux_memfd("rtvisor-guest-ram", backing.hugePages ? 1 : 0)
        guard raw >= 0 else {
            throw backing.hugePages ? GuestMemoryError.hugePagesUnavailable(bytes: size, errno: errno)
                                    : GuestMemoryError.mmapFailed(bytes: size, errno: errno)
        }
        let file = FileDescriptor(rawValue: raw)
        guard ftruncate(raw, off_t(size)) == 0 else {
            let e = errno
            try? file.close()
            throw backing.hugePages ? GuestMemoryError.hugePagesUnavailable(bytes: size, errno: e) : GuestMemoryError.mmapFailed(bytes: size, errno: e)
        }
        try self.init(start: start, size: size, sharedFile: file, backing: backing)
    }

    /// RAM another process handed over (`sharedFile`, a memfd of exactly `size` bytes): mapped
    /// shared, so both see the same pages. Takes ownership of the descriptor, also on a throw.
    public init(start: GuestAddress, size: UInt64, sharedFile file: FileDescriptor, backing: MemoryBacking = MemoryBacking()) throws {
        var st = stat()
        guard size > 0, size % 4096 == 0, fstat(file.rawValue, &st) == 0, UInt64(st.st_size) == size else {
            try? file.close()
            throw GuestMemoryError.invalidSize(size)
        }
        // Populated or locked RAM is faulted in up front; MAP_HUGETLB comes from the memfd itself.
        var flags = MAP_SHARED
        if backing.populate || backing.lock { flags |= MAP_POPULATE }
        let p = mmap(nil, Int(size), PROT_READ | PROT_WRITE, flags, file.rawValue, 0)
        guard let p, p != MAP_FAILED else {
            let e = errno
            try? file.close()
            throw backing.hugePages ? GuestMemoryError.hugePagesUnavailable(bytes: size, errno: e) : GuestMemoryError.mmapFailed(bytes: size, errno: e)
        }
        if backing.lock && mlock(p, Int(size)) != 0 {
            let e = errno
            munmap(p, Int(size))
            try? file.close()
            throw GuestMemoryError.lockFailed(bytes: size, errno: e)
        }
        self.base = p
        self.sharedFile = file
        self.start = start
        self.size = size
        self.hostAddress = UInt64(UInt(bitPattern: p))
    }

    /// `size` bytes of `file` from `offset`, mapped MAP_PRIVATE (copy on write; docs/snapshot.md).
    public init(start: GuestAddress, size: UInt64, file: FileDescriptor, offset: UInt64, backing: MemoryBacking = MemoryBacking()) throws {
        guard size > 0, size % 4096 == 0, offset % 4096 == 0, !backing.hugePages else { throw GuestMemoryError.invalidSize(size) }
        var flags = MAP_PRIVATE
        if backing.populate || backing.lock { flags |= MAP_POPULATE }
        let p = mmap(nil, Int(size), PROT_READ | PROT_WRITE, flags, file.rawValue, off_t(offset))
        guard let p, p != MAP_FAILED else { throw GuestMemoryError.mmapFailed(bytes: size, errno: errno) }
        if backing.lock && mlock(p, Int(size)) != 0 {
            let e = errno
            munmap(p, Int(size))
            throw GuestMemoryError.lockFailed(bytes: size, errno: e)
        }
        self.base = p
        self.sharedFile = nil
        self.start = start
        self.size = size
        self.hostAddress = UInt64(UInt(bitPattern: p))
    }

    deinit {
        munmap(base, Int(size))
        try? sharedFile?.close()
    }

    public var end: UInt64 { start.raw + size }

    func contains(_ address: UInt64, length: UInt64) -> Bool {
        guard address >= start.raw else { return false }
        let (last, overflow) = address.addingReportingOverflow(length)
        return !overflow && last <= end
    }

    func pointer(_ address: UInt64) -> UnsafeMutableRawPointer { base + Int(address - start.raw) }
}

/// All of a VM's RAM. Every access is bounds-checked against the regions, so a guest-supplied
/// address can never reach host memory outside the mappings.
public final class GuestMemory: @unchecked Sendable {
    public let regions: [GuestMemoryRegion]
    /// What this process writes into guest RAM, while a migration tracks it.
    public let vmmDirty: VMMDirtyPages
    /// Which pages were ever touched (snapshots and migrations skip the others).
    public let touched = TouchedPages()

    public init(regions: [GuestMemoryRegion]) throws {
        let sorted = regions.sorted { $0.start < $1.start }
        for (a, b) in zip(sorted, sorted.dropFirst()) where a.end > b.start.raw {
            throw GuestMemoryError.overlappingRegions
        }
        self.regions = sorted
        self.vmmDirty = VMMDirtyPages(regions: sorted)
    }

    /// RAM of `bytes` laid out around the 32-bit MMIO hole (`GuestLayout`, where PCI BARs, the
    /// LAPIC, the IOAPIC and platform devices live): low part below 3 GiB, rest above 4 GiB.
    public static func standard(bytes: UInt64, backing: MemoryBacking = MemoryBacking()) throws -> GuestMemory {
        try GuestMemory(regions: try standardLayout(bytes: bytes).map { try GuestMemoryRegion(start: $0.start, size: $0.size, backing: backing) })
    }

    /// RAM of `bytes` laid out as `standard`, each region the memfd another process handed over
    /// (`sharedFiles`, in region order: `GuestMemory.sharedFiles` of that process). Takes
    /// ownership of the descriptors.
    public static func adopting(_ sharedFiles: [FileDescriptor], bytes: UInt64, backing: MemoryBacking = MemoryBacking()) throws -> GuestMemory {
        var files = sharedFiles[...]
        defer { for f in files { try? f.close() } }
        let layout = try standardLayout(bytes: bytes)
        guard files.count == layout.count else { throw GuestMemoryError.invalidSize(bytes) }
        var regions: [GuestMemoryRegion] = []
        for (start, size) in layout {
            regions.append(try GuestMemoryRegion(start: start, size: size, sharedFile: files.removeFirst(), backing: backing))
        }
        return try GuestMemory(regions: regions)
    }

    /// The memfd of every region, or nil when one is a copy-on-write file mapping (a snapshot
    /// restored by mapping): only then can another process take this RAM over without a copy.
    public var sharedFiles: [FileDescriptor]? {
        let files = regions.compactMap(\.sharedFile)
        return files.count == regions.count ? files : nil
    }

    /// Where `standard` puts `bytes` of RAM: below the hole, then above 4 GiB.
    static func standardLayout(bytes: UInt64) throws -> [(start: GuestAddress, size: UInt64)] {
        guard bytes >= 1 << 20, bytes % 4096 == 0 else { throw GuestMemoryError.invalidSize(bytes) }
        let low = min(bytes, GuestLayout.mmioHoleStart)
        return bytes > low ? [(GuestAddress(0), low), (GuestAddress(GuestLayout.mmioHoleEnd), bytes - low)] : [(GuestAddress(0), low)]
    }

    public var totalSize: UInt64 { regions.reduce(0) { $0 + $1.size } }

    /// The highest address + 1 of RAM below the MMIO hole.
    public var lowRAMEnd: UInt64 { regions.first { $0.start.raw < GuestLayout.mmioHoleStart }?.end ?? 0 }

    public func contains(_ address: GuestAddress, length: UInt64 = 1) -> Bool {
        region(for: address.raw, length: length) != nil
    }

    private func region(for address: UInt64, length: UInt64) -> GuestMemoryRegion? {
        for r in regions where r.contains(address, length: length) { return r }
        return nil
    }

    private func checkedPointer(_ address: GuestAddress, _ length: Int) throws -> UnsafeMutableRawPointer {
        guard length >= 0, let r = region(for: address.raw, length: UInt64(length)) else {
            throw GuestMemoryError.outOfRange(address: address.raw, length: UInt64(max(length, 0)))
        }
        return r.pointer(address.raw)
    }

    /// `checkedPointer` for a range this process is about to write: marked for a migration.
    private func writablePointer(_ address: GuestAddress, _ length: Int) throws -> UnsafeMutableRawPointer {
        guard length >= 0, let i = regions.firstIndex(where: { $0.contains(address.raw, length: UInt64(length)) }) else {
            throw GuestMemoryError.outOfRange(address: address.raw, length: UInt64(max(length, 0)))
        }
        vmmDirty.mark(region: i, address: address.raw, length: length)
        return regions[i].pointer(address.raw)
    }

    public func write(_ bytes: some Collection<UInt8>, at address: GuestAddress) throws {
        let p = try writablePointer(address, bytes.count)
        // Arrays and slices copy in one go; other collections byte by byte.
        let copied: Void? = bytes.withContiguousStorageIfAvailable { buffer in
            if let base = buffer.baseAddress { p.copyMemory(from: base, byteCount: buffer.count) }
        }
        guard copied == nil else { return }
        var i = 0
        for b in bytes { p.storeBytes(of: b, toByteOffset: i, as: UInt8.self); i += 1 }
    }

    public func write(_ bytes: UnsafeRawBufferPointer, at address: GuestAddress) throws {
        let p = try writablePointer(address, bytes.count)
        if let src = bytes.baseAddress { p.copyMemory(from: src, byteCount: bytes.count) }
    }

    public func read(_ count: Int, at address: GuestAddress) throws -> [UInt8] {
        let p = try checkedPointer(address, count)
        return [UInt8](UnsafeRawBufferPointer(start: p, count: count))
    }

    /// Copies guest memory into `buffer`.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at address: GuestAddress) throws {
        let p = try checkedPointer(address, buffer.count)
        if let dst = buffer.baseAddress { dst.copyMemory(from: p, byteCount: buffer.count) }
    }

    public func fill(_ value: UInt8, count: Int, at address: GuestAddress) throws {
        let p = try writablePointer(address, count)
        memset(p, Int32(value), count)
    }

    /// Direct access to `count` bytes of guest RAM at `address`, for device I/O that reads or
    /// writes guest buffers in place (pread/pwrite into a virtqueue buffer). The range is checked
    /// first; the pointer must not escape `body`.
    public func withUnsafeMutableBytes<R>(at address: GuestAddress, count: Int,
                                          _ body: (UnsafeMutableRawBufferPointer) throws -> R) throws -> R {
        let p = try writablePointer(address, count)
        return try body(UnsafeMutableRawBufferPointer(start: p, count: count))
    }

    public func withUnsafeBytes<R>(at address: GuestAddress, count: Int,
                                   _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        let p = try checkedPointer(address, count)
        return try body(UnsafeRawBufferPointer(start: p, count: count))
    }

    /// IOV_MAX on Linux: readv/writev and friends take at most this many vectors (EINVAL beyond).
    public static let maxIOVectors = 1024

    /// Host iovecs for several guest ranges at once (preadv/pwritev/writev straight into guest
    /// buffers). Every range is checked first; the vectors must not escape `body`. A system call
    /// takes at most `maxIOVectors` of them.
    public func withIOVectors<R>(_ segments: [(address: GuestAddress, length: Int)],
                                 _ body: (UnsafeBufferPointer<iovec>) throws -> R) throws -> R {
        var vectors: [iovec] = []
        vectors.reserveCapacity(segments.count)
        // Marked as written: the same vectors serve reads into guest buffers (a migration then
        // resends a page it did not need to, never misses one).
        for s in segments {
            vectors.append(iovec(iov_base: try writablePointer(s.address, s.length), iov_len: s.length))
        }
        return try vectors.withUnsafeBufferPointer { try body($0) }
    }

    /// Little-endian integer access (x86 guests are little-endian).
    public func writeInteger<T: FixedWidthInteger>(_ value: T, at address: GuestAddress) throws {
        let p = try writablePointer(address, MemoryLayout<T>.size)
        p.storeBytes(of: value.littleEndian, as: T.self)
    }

    public func readInteger<T: FixedWidthInteger>(_: T.Type = T.self, at address: GuestAddress) throws -> T {
        let p = try checkedPointer(address, MemoryLayout<T>.size)
        return T(littleEndian: p.loadUnaligned(as: T.self))
    }
}

// MARK: memory images (snapshots, docs/snapshot.md)

/// Guest RAM as one file: the regions one after another in guest-address order, no gaps.
extension GuestMemory {
    static let pageSize = 4096
    /// lseek's whence values for sparse files (Linux; glibc hides them without _GNU_SOURCE).
    static let seekData: Int32 = 3, seekHole: Int32 = 4

    /// Writes every region into `fd` (an empty file) at its image offset, skipping pages that are
    /// all zero, then sets the file's size: those pages are holes that take no disk space and read
    /// back as zeros. Returns the bytes written.
    public func writeImage(to fd: FileDescriptor) throws -> UInt64 {
        var offset: UInt64 = 0
        var written: UInt64 = 0
        for region in regions {
            let base = region.pointer(region.start.raw)
            let pages = Int(region.size) / Self.pageSize
            let mayHoldData = touched.bitmap(of: region)
            func holdsData(_ page: Int) -> Bool {
                if let bits = mayHoldData, bits[page / 64] >> UInt64(page % 64) & 1 == 0 { return false }
                return !Self.isZero(base + page * Self.pageSize)
            }
            var page = 0
            while page < pages {
                // A run of non-zero pages goes out in one write.
                guard holdsData(page) else { page += 1; continue }
                var end = page + 1
                while end < pages && end - page < 512 && holdsData(end) { end += 1 }
                let bytes = UnsafeRawBufferPointer(start: base + page * Self.pageSize, count: (end - page) * Self.pageSize)
                try writeFully(fd, bytes, at: Int64(offset) + Int64(page * Self.pageSize))
                written += UInt64(bytes.count)
                page = end
            }
            offset += region.size
        }
        try retryInterrupted { ftruncate(fd.rawValue, off_t(offset)) }
        return written
    }

    /// Reads an image written by `writeImage` into these (fresh, zero) regions: only the file's
    /// data extents (SEEK_DATA/Self.seekHole), holes stay untouched zero pages.
    public func readImage(from fd: FileDescriptor) throws {
        var offset: Int64 = 0
        for region in regions {
            let end = offset + Int64(region.size)
            var position = offset
            while position < end {
                let data = lseek(fd.rawValue, off_t(position), Self.seekData)
                if data < 0 {
                    if errno == ENXIO { break } // no data after position: the rest is a hole
                    throw Errno(rawValue: errno)
                }
                guard Int64(data) < end else { break }
                let hole = min(Int64(max(lseek(fd.rawValue, off_t(data), Self.seekHole), off_t(data))), end)
                let target = UnsafeMutableRawBufferPointer(start: region.pointer(region.start.raw + UInt64(Int64(data) - offset)),
                                                           count: Int(hole - Int64(data)))
                try readFully(fd, target, at: Int64(data))
                position = hole
            }
            offset = end
        }
    }


    private func writeFully(_ fd: FileDescriptor, _ bytes: UnsafeRawBufferPointer, at offset: Int64) throws {
        var done = 0
        while done < bytes.count {
            let n = try retryInterrupted { pwrite(fd.rawValue, bytes.baseAddress! + done, bytes.count - done, off_t(offset + Int64(done))) }
            done += n
        }
    }

    private func readFully(_ fd: FileDescriptor, _ bytes: UnsafeMutableRawBufferPointer, at offset: Int64) throws {
        var done = 0
        while done < bytes.count {
            let n = try retryInterrupted { pread(fd.rawValue, bytes.baseAddress! + done, bytes.count - done, off_t(offset + Int64(done))) }
            guard n > 0 else { throw GuestMemoryError.imageTooShort(offset: UInt64(offset) + UInt64(done)) }
            done += n
        }
    }


    /// RAM of `bytes` laid out as `standard`, each region mapped from `fd` (an image written by
    /// `writeImage`) MAP_PRIVATE: pages come from the page cache on first touch, shared with every
    /// other mapping of the file, and are copied only when the guest writes them.
    public static func mappingImage(_ fd: FileDescriptor, bytes: UInt64, backing: MemoryBacking = MemoryBacking()) throws -> GuestMemory {
        let layout = try standardLayout(bytes: bytes)
        var offset: UInt64 = 0
        var regions: [GuestMemoryRegion] = []
        for (start, size) in layout {
            regions.append(try GuestMemoryRegion(start: start, size: size, file: fd, offset: offset, backing: backing))
            offset += size
        }
        return try GuestMemory(regions: regions)
    }
}
