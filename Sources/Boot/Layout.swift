import Memory

/// Where the VMM puts boot structures in low guest memory. Guests (and the test inmates) may use
/// anything else; docs/architecture.md repeats this table.
public enum BootLayout {
    public static let gdt = GuestAddress(0x500)
    /// After the five GDT entries (0x500..<0x528).
    public static let idt = GuestAddress(0x540)
    public static let pvhStartInfo = GuestAddress(0x6000)
    public static let pvhModuleList = GuestAddress(0x6040)
    public static let pvhMemoryMap = GuestAddress(0x6080)
    public static let pvhMemoryMapCapacity = (0x7000 - 0x6080) / 24
    public static let zeroPage = GuestAddress(0x7000)
    public static let bootStack = GuestAddress(0x8FF0)
    public static let pageTables = GuestAddress(0x9000)
    public static let cmdline = GuestAddress(0x20000)
    public static let cmdlineMaxSize = 0x10000
    /// The MP table sits in the last KiB of base memory, one of the places Linux scans.
    public static let mpTable = GuestAddress(0x9FC00)
    public static let mpTableEBDASize = 0x400
    /// Tables too large for that KiB (more than 40 CPUs) go to the BIOS area, also scanned by Linux.
    public static let mpTableLarge = GuestAddress(0xF0000)
    public static let ebdaStart: UInt64 = 0x9FC00
    public static let biosStart: UInt64 = 0xF0000
    public static let highMemory: UInt64 = 0x10_0000
    /// Default load address of a bzImage's protected-mode kernel.
    public static let bzImageLoadAddress = GuestAddress(0x10_0000)

    public static let ioapicAddress: UInt32 = 0xFEC0_0000
    public static let lapicAddress: UInt32 = 0xFEE0_0000
}

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
            .init(address: 0, size: BootLayout.ebdaStart, kind: .ram),
            .init(address: BootLayout.ebdaStart, size: 0xA0000 - BootLayout.ebdaStart, kind: .reserved),
            .init(address: BootLayout.biosStart, size: BootLayout.highMemory - BootLayout.biosStart, kind: .reserved),
        ]
        for region in memory.regions {
            let start = max(region.start.raw, BootLayout.highMemory)
            if region.end > start {
                entries.append(.init(address: start, size: region.end - start, kind: .ram))
            }
        }
        return entries
    }
}
