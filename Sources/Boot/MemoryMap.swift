import Arch
import Memory

/// One e820 / PVH memory-map entry.
public struct MemoryMapEntry: Equatable, Sendable {
    public enum Kind: UInt32, Sendable { case ram = 1, reserved = 2 }
    public var address: UInt64
    public var size: UInt64
    public var kind: Kind
    public init(address: UInt64, size: UInt64, kind: Kind) { self.address = address; self.size = size; self.kind = kind }

    /// The guest's view of RAM: base memory, the reserved EBDA/BIOS area, and the RAM regions.
    public static func map(for memory: GuestMemory) -> [MemoryMapEntry] {
        var entries: [MemoryMapEntry] = [
            .init(address: 0, size: GuestLayout.ebdaStart, kind: .ram),
            .init(address: GuestLayout.ebdaStart, size: 0xA0000 - GuestLayout.ebdaStart, kind: .reserved),
            .init(address: GuestLayout.biosStart, size: GuestLayout.highMemory - GuestLayout.biosStart, kind: .reserved),
        ]
        for region in memory.regions {
            let start = max(region.start.raw, GuestLayout.highMemory)
            if region.end > start {
                entries.append(.init(address: start, size: region.end - start, kind: .ram))
            }
        }
        return entries
    }
}
