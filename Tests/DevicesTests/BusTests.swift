import Testing
@testable import Devices

@Suite("Bus")
struct BusTests {
    /// 100 ranges of 8 bytes with 8-byte gaps from 0x1000, registered in a scrambled order.
    static func manyRanges() throws -> (Bus, [ProbeDevice]) {
        let devices = (0..<100).map { ProbeDevice(tag: UInt64($0)) }
        var ranges = devices.enumerated().map { i, d in
            Bus.Range(base: 0x1000 + UInt64(i) * 0x10, length: 8, name: "dev\(i)", device: d)
        }
        // Deterministic scramble: the bus must sort.
        ranges = ranges.enumerated().sorted { ($0.offset * 37) % 100 < ($1.offset * 37) % 100 }.map(\.element)
        return (try Bus(name: "pio", ranges: ranges), devices)
    }

    @Test func lookupFindsEveryRangeAtItsEdges() throws {
        let (bus, _) = try Self.manyRanges()
        #expect(bus.name == "pio")
        for i in 0..<100 {
            let base = 0x1000 + UInt64(i) * 0x10
            #expect(bus.lookup(base)?.name == "dev\(i)")
            #expect(bus.lookup(base + 3)?.name == "dev\(i)")
            #expect(bus.lookup(base + 7)?.name == "dev\(i)")
            #expect(bus.lookup(base + 8) == nil, "gap after dev\(i)")
            #expect(bus.lookup(base + 0xF) == nil, "gap after dev\(i)")
        }
        #expect(bus.lookup(0) == nil)
        #expect(bus.lookup(0xFFF) == nil)
        #expect(bus.lookup(0x1000 + 100 * 0x10) == nil)
        #expect(bus.lookup(UInt64.max) == nil)
    }

    @Test func accessesReachTheDeviceAtTheRelativeOffset() throws {
        let (bus, devices) = try Self.manyRanges()
        #expect(bus.read(0x1000 + 42 * 0x10 + 5, size: 1) == 42 << 32 | 5)
        bus.write(0x1000 + 7 * 0x10 + 2, size: 2, value: 0xBEEF)
        #expect(devices[42].accesses.count == 1)
        #expect(devices[42].accesses[0].write == false)
        #expect(devices[42].accesses[0].offset == 5)
        #expect(devices[42].accesses[0].size == 1)
        let w = try #require(devices[7].accesses.first)
        #expect(w.write && w.offset == 2 && w.size == 2 && w.value == 0xBEEF)
        // Nobody else saw anything.
        #expect(devices.enumerated().filter { $0.offset != 7 && $0.offset != 42 }.allSatisfy { $0.element.accesses.isEmpty })
        #expect(bus.unhandled.total == 0)
    }

    @Test func adjacentRangesSplitExactlyAtTheBoundary() throws {
        let uart = ProbeDevice(tag: 1), next = ProbeDevice(tag: 2)
        let bus = try Bus(name: "pio", ranges: [
            .init(base: 0x400, length: 4, name: "next", device: next),
            .init(base: 0x3F8, length: 8, name: "uart", device: uart),
        ])
        #expect(bus.lookup(0x3F7) == nil)
        #expect(bus.lookup(0x3F8)?.name == "uart")
        #expect(bus.lookup(0x3FF)?.name == "uart")
        #expect(bus.lookup(0x400)?.name == "next")
        #expect(bus.lookup(0x403)?.name == "next")
        #expect(bus.lookup(0x404) == nil)
        #expect(bus.read(0x400, size: 1) == 2 << 32)
    }

    @Test func singleRangeAndEmptyBus() throws {
        let bus = try Bus(name: "mmio", ranges: [.init(base: 0xFEC0_0000, length: 0x1000, name: "ioapic", device: ProbeDevice(tag: 0))])
        #expect(bus.lookup(0xFEC0_0000)?.name == "ioapic")
        #expect(bus.lookup(0xFEC0_0FFF)?.name == "ioapic")
        #expect(bus.lookup(0xFEC0_1000) == nil)
        #expect(bus.lookup(0xFEBF_FFFF) == nil)
        let empty = try Bus(name: "none", ranges: [])
        #expect(empty.lookup(0) == nil)
    }

    @Test func overlappingRangesAreRejected() {
        #expect(throws: BusError.overlap(name: "kbd-cmd", base: 0x64, length: 1, existing: "kbd")) {
            try Bus(name: "pio", ranges: [
                .init(base: 0x64, length: 1, name: "kbd-cmd", device: ProbeDevice(tag: 0)),
                .init(base: 0x60, length: 5, name: "kbd", device: ProbeDevice(tag: 1)),
            ])
        }
        // Overlap by a single byte at the end.
        #expect(throws: BusError.overlap(name: "b", base: 0x107, length: 4, existing: "a")) {
            try Bus(name: "pio", ranges: [
                .init(base: 0x100, length: 8, name: "a", device: ProbeDevice(tag: 0)),
                .init(base: 0x107, length: 4, name: "b", device: ProbeDevice(tag: 1)),
            ])
        }
        // Same base.
        #expect(throws: BusError.self) {
            try Bus(name: "pio", ranges: [
                .init(base: 0x70, length: 2, name: "a", device: ProbeDevice(tag: 0)),
                .init(base: 0x70, length: 2, name: "b", device: ProbeDevice(tag: 1)),
            ])
        }
        // Range entirely inside another, not adjacent in registration order.
        #expect(throws: BusError.self) {
            try Bus(name: "pio", ranges: [
                .init(base: 0x10, length: 0x100, name: "big", device: ProbeDevice(tag: 0)),
                .init(base: 0x200, length: 1, name: "far", device: ProbeDevice(tag: 1)),
                .init(base: 0x20, length: 1, name: "inside", device: ProbeDevice(tag: 2)),
            ])
        }
    }

    @Test func emptyRangeIsRejected() {
        #expect(throws: BusError.emptyRange(name: "ghost")) {
            try Bus(name: "pio", ranges: [
                .init(base: 0x10, length: 4, name: "ok", device: ProbeDevice(tag: 0)),
                .init(base: 0x80, length: 0, name: "ghost", device: ProbeDevice(tag: 1)),
            ])
        }
    }

    @Test func errorDescriptions() {
        #expect(BusError.overlap(name: "b", base: 0x64, length: 1, existing: "a").description == "b at 0x64+0x1 overlaps a")
        #expect(BusError.emptyRange(name: "x").description == "x has an empty address range")
    }

    @Test(arguments: [(1, UInt64(0xFF)), (2, 0xFFFF), (4, 0xFFFF_FFFF), (8, UInt64.max)])
    func unhandledReadsAreAllOnes(size: Int, expected: UInt64) throws {
        let (bus, devices) = try Self.manyRanges()
        #expect(bus.read(0x80, size: size) == expected)
        #expect(bus.read(0x1008, size: size) == expected) // in a gap
        #expect(devices.allSatisfy { $0.accesses.isEmpty })
    }

    @Test func unhandledAccessesAreCountedPerAddress() throws {
        let (bus, devices) = try Self.manyRanges()
        _ = bus.read(0x80, size: 1)
        _ = bus.read(0x80, size: 2)
        bus.write(0x80, size: 1, value: 1)
        bus.write(0x3F8, size: 1, value: 0x41)
        _ = bus.read(0x1000, size: 1) // handled: not counted
        bus.write(0x1000, size: 1, value: 0) // handled: not counted
        let snapshot = bus.unhandled.snapshot
        #expect(snapshot.count == 2)
        #expect(snapshot[0x80] == UnhandledAccesses.Count(reads: 2, writes: 1))
        #expect(snapshot[0x3F8] == UnhandledAccesses.Count(reads: 0, writes: 1))
        #expect(bus.unhandled.total == 4)
        #expect(devices[0].accesses.count == 2)
    }

    /// A hostile guest touching ever-new addresses: the table stays bounded, nothing is lost
    /// from the count.
    @Test func unhandledAccessesAtEverNewAddressesAreBounded() throws {
        let bus = try Bus(name: "mmio", ranges: [])
        for i in 0..<UInt64(20_000) { bus.write(0xE000_0000 + i * 4, size: 4, value: i) }
        _ = bus.read(0xE000_0000, size: 4)  // an address already tracked is still counted one by one
        #expect(bus.unhandled.snapshot.count == UnhandledAccesses.maxAddresses)
        #expect(bus.unhandled.snapshot[0xE000_0000] == UnhandledAccesses.Count(reads: 1, writes: 1))
        #expect(bus.unhandled.total == 20_001)
        #expect(bus.unhandled.overflow == 20_000 - UnhandledAccesses.maxAddresses)
    }
}
