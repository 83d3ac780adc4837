import Synchronization

/// Pages of guest RAM this process wrote (virtqueue used rings, data the devices read from disk
/// or the network into guest buffers) while a live migration tracks them: KVM's dirty log only
/// sees the guest's own writes (docs/migration.md). Off, it costs one atomic load per write.
public final class VMMDirtyPages: Sendable {
    private let tracking = Atomic<Bool>(false)
    /// One bitmap per region, one bit per 4 KiB page.
    private let bitmaps: Mutex<[[UInt64]]>
    private let regionStarts: [UInt64]

    init(regions: [GuestMemoryRegion]) {
        regionStarts = regions.map(\.start.raw)
        bitmaps = Mutex(regions.map { [UInt64](repeating: 0, count: Int(($0.size / 4096 + 63) / 64)) })
    }

    public var isTracking: Bool { tracking.load(ordering: .acquiring) }

    public func start() {
        bitmaps.withLock { maps in for i in maps.indices { for w in maps[i].indices { maps[i][w] = 0 } } }
        tracking.store(true, ordering: .releasing)
    }

    public func stop() { tracking.store(false, ordering: .releasing) }

    /// The pages written since the last call (or `start`), per region, and clears them.
    public func take() -> [[UInt64]] {
        bitmaps.withLock { maps in
            let taken = maps
            for i in maps.indices { for w in maps[i].indices { maps[i][w] = 0 } }
            return taken
        }
    }

    @inline(__always)
    func mark(region: Int, address: UInt64, length: Int) {
        guard length > 0, tracking.load(ordering: .relaxed) else { return }
        let first = Int((address - regionStarts[region]) / 4096)
        let last = Int((address - regionStarts[region] + UInt64(length) - 1) / 4096)
        bitmaps.withLock { maps in
            for page in first...last { maps[region][page / 64] |= 1 << UInt64(page % 64) }
        }
    }
}
