import Posix
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Which pages of anonymous guest RAM were ever touched, from /proc/self/pagemap (present or
/// swapped; never-touched pages are neither and read as zeros). A snapshot and a migration's
/// first round skip the rest without reading them: reading an untouched page faults it in,
/// which made saving a 1 GiB guest that used 84 KiB take 240 ms (docs/benchmarks.md).
public final class TouchedPages: Sendable {
    private let pagemap: FileDescriptor?

    /// Opened before the jail (no /proc there); nil when the kernel does not offer it.
    public init() {
        pagemap = try? FileDescriptor.open("/proc/self/pagemap", .readOnly, options: [.closeOnExec])
    }

    deinit { try? pagemap?.close() }

    /// One bit per page of `region`, set when it may hold data; nil: unknown (read them all).
    /// File-backed regions (a snapshot mapped copy-on-write) are always nil: their untouched
    /// pages hold the file's data.
    public func bitmap(of region: GuestMemoryRegion) -> [UInt64]? {
        guard let pagemap, region.isAnonymous else { return nil }
        let pages = Int(region.size / 4096)
        var bits = [UInt64](repeating: 0, count: (pages + 63) / 64)
        var entries = [UInt64](repeating: 0, count: 4096)
        var page = 0
        while page < pages {
            let n = min(entries.count, pages - page)
            let offset = off_t((region.hostAddress / 4096 + UInt64(page)) * 8)
            let got = entries.withUnsafeMutableBytes { raw in
                (try? retryInterrupted { pread(pagemap.rawValue, raw.baseAddress, n * 8, offset) }) ?? -1
            }
            guard got == n * 8 else { return nil }
            for i in 0..<n where entries[i] & (3 << 62) != 0 {  // bit 63 present, bit 62 swapped
                bits[(page + i) / 64] |= 1 << UInt64((page + i) % 64)
            }
            page += n
        }
        return bits
    }
}
