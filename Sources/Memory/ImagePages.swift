#if canImport(Glibc)
import Glibc
#endif

/// Guest RAM addressed as its image (the regions one after another, as in a snapshot's memory
/// file and a migration stream), one 4 KiB page at a time.
extension GuestMemory {
    public static let imagePageSize = 4096

    /// Where each region starts in the image.
    public var imageOffsets: [UInt64] {
        var offset: UInt64 = 0
        return regions.map { r in defer { offset += r.size }; return offset }
    }

    /// Hands `body` page `page` of region `region` (valid only during the call).
    public func withImagePage<R>(region: Int, page: Int, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        let r = regions[region]
        precondition(page >= 0 && UInt64(page + 1) * 4096 <= r.size)
        return try body(UnsafeRawBufferPointer(start: r.pointer(r.start.raw + UInt64(page) * 4096), count: 4096))
    }

    public func isZeroImagePage(region: Int, page: Int) -> Bool {
        withImagePage(region: region, page: page) { Self.isZero($0.baseAddress!) }
    }

    /// Copies `bytes` (whole pages) into the image at `offset`, or fills `length` bytes there with
    /// zeros when `bytes` is nil. The range must lie inside one region: a migration stream that
    /// says otherwise is refused (it comes from another host).
    public func writeImage(at offset: UInt64, bytes: UnsafeRawBufferPointer?, zeroLength: UInt64 = 0) throws {
        let length = bytes.map { UInt64($0.count) } ?? zeroLength
        guard offset % 4096 == 0, length % 4096 == 0 else { throw GuestMemoryError.imageRange(offset: offset, length: length) }
        for (r, start) in zip(regions, imageOffsets) where offset >= start && offset - start < r.size {
            // No `offset + length`: a hostile length would overflow it.
            guard length <= r.size - (offset - start) else { break }
            let p = r.pointer(r.start.raw + (offset - start))
            if let bytes, let src = bytes.baseAddress { p.copyMemory(from: src, byteCount: bytes.count) } else { memset(p, 0, Int(length)) }
            return
        }
        throw GuestMemoryError.imageRange(offset: offset, length: length)
    }

    static func isZero(_ page: UnsafeRawPointer) -> Bool {
        let words = page.assumingMemoryBound(to: UInt64.self)
        var acc: UInt64 = 0
        for i in 0..<(imagePageSize / 8) { acc |= words[i] }
        return acc == 0
    }
}
