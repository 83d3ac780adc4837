import Posix
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Which pages of guest RAM were ever touched: the allocated pages of a region's memfd
/// (SEEK_DATA/SEEK_HOLE); never-touched pages are holes and read as zeros. A snapshot and a
/// migration's first round skip the rest without reading them: reading an untouched page faults
/// it in, which made saving a 1 GiB guest that used 84 KiB take 240 ms (docs/benchmarks.md).
/// The memfd, not this process's page tables, knows: after a same-host upgrade the new VMM has
/// mapped none of the pages the guest wrote before it.
public struct TouchedPages: Sendable {
    public init() {}

    /// One bit per page of `region`, set when it may hold data; nil: unknown (read them all).
    /// File-backed regions (a snapshot mapped copy-on-write) are always nil: their untouched
    /// pages hold the file's data.
    public func bitmap(of region: GuestMemoryRegion) -> [UInt64]? {
        guard let file = region.sharedFile else { return nil }
        let pages = Int(region.size / 4096)
        var bits = [UInt64](repeating: 0, count: (pages + 63) / 64)
        var position: off_t = 0
        let end = off_t(region.size)
        while position < end {
            let data = lseek(file.rawValue, position, GuestMemory.seekData)
            if data < 0 {
                if errno == ENXIO { break }  // only holes from here
                return nil
            }
            let hole = min(max(lseek(file.rawValue, data, GuestMemory.seekHole), data), end)
            guard hole > data else { return nil }
            for page in Int(data / 4096)..<Int((hole + 4095) / 4096) { bits[page / 64] |= 1 << UInt64(page % 64) }
            position = hole
        }
        return bits
    }
}
