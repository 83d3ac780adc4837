import Testing
@testable import Boot
import Memory

@Suite("BzImage")
struct BzImageTests {
    @Test func validImageParses() throws {
        let b = BzImageBuilder()
        let bz = try BzImage(parsing: b.image())
        #expect(bz.setupSectors == 4)
        #expect(bz.protocolVersion == 0x020F)
        #expect(bz.loadFlags == 0x01)
        #expect(bz.xloadFlags == 0x3)
        #expect(bz.initrdAddressMax == 0x7FFF_FFFF)
        #expect(bz.commandLineSize == 2047)
        #expect(bz.kernelOffset == 5 * 512)
        #expect(bz.kernelSize == 4096)
        // The header runs from 0x1f1 to 0x202 + jump byte (0x268 for Linux).
        #expect(bz.setupHeader.count == 0x268 - 0x1F1)
        #expect(bz.setupHeader[0] == 4)
        #expect(Array(bz.setupHeader[(0x202 - 0x1F1)..<(0x206 - 0x1F1)]) == Array("HdrS".utf8))
        #expect(bz.setupHeader[0x260 - 0x1F1] == 0x67)
        #expect(BzImage.isBzImage(b.image()))
    }

    @Test func zeroSetupSectorsMeansFour() throws {
        var b = BzImageBuilder()
        b.setupSects = 0
        let bz = try BzImage(parsing: b.image())
        #expect(bz.setupSectors == 4)
        #expect(bz.kernelOffset == 2560)
    }

    @Test func kernelOffsetFollowsSetupSectors() throws {
        var b = BzImageBuilder()
        b.setupSects = 30
        let bz = try BzImage(parsing: b.image())
        #expect(bz.kernelOffset == 31 * 512)
        #expect(bz.kernelSize == 4096)
    }

    @Test func longerHeaderIsCopiedWhole() throws {
        var b = BzImageBuilder()
        b.jump = 0x80 // header ends at 0x282
        #expect(try BzImage(parsing: b.image()).setupHeader.count == 0x282 - 0x1F1)
    }

    @Test(arguments: [UInt16(0x0200), 0x0206, 0x020B])
    func oldProtocolsAreUnsupported(_ version: UInt16) throws {
        var b = BzImageBuilder()
        b.protocolVersion = version
        let error = try #require(throws: BootError.self) { try BzImage(parsing: b.image("/boot/old")) }
        guard case let .unsupported(path, reason) = error else { Issue.record("\(error)"); return }
        #expect(path == "/boot/old")
        #expect(reason.contains(String(version, radix: 16)))
        #expect(reason.contains("2.12"))
    }

    @Test func protocol212IsAccepted() throws {
        var b = BzImageBuilder()
        b.protocolVersion = 0x020C
        #expect(try BzImage(parsing: b.image()).protocolVersion == 0x020C)
    }

    @Test func missing64BitEntryIsUnsupported() throws {
        var b = BzImageBuilder()
        b.xloadflags = 0x2
        #expect(throws: BootError.unsupported(path: "/boot/bz32", reason: "no 64-bit entry point (XLF_KERNEL_64)")) {
            try BzImage(parsing: b.image("/boot/bz32"))
        }
    }

    @Test func shortProtectedModeKernelIsTruncated() throws {
        var b = BzImageBuilder()
        b.syssize = 4096 / 16 + 1
        let error = try #require(throws: BootError.self) { try BzImage(parsing: b.image("/boot/cut")) }
        #expect(error.truncatedPath == "/boot/cut")
        #expect(error.truncatedWhat?.contains("syssize") == true)

        // A bzImage cut in the middle of its kernel.
        let full = BzImageBuilder().build()
        let cut = ImageFile(path: "/boot/half", bytes: Array(full.prefix(full.count - 100)))
        let cutError = try #require(throws: BootError.self) { try BzImage(parsing: cut) }
        #expect(cutError.truncatedPath == "/boot/half")
    }

    @Test func imageEndingAfterSetupIsTruncated() throws {
        var b = BzImageBuilder()
        b.kernel = []
        #expect(throws: BootError.truncated(path: "/boot/setup-only", what: "protected-mode kernel")) {
            try BzImage(parsing: b.image("/boot/setup-only"))
        }
    }

    @Test func missingSignaturesAreUnrecognised() {
        var bytes = BzImageBuilder().build()
        bytes[0x202] = UInt8(ascii: "X")
        #expect(!BzImage.isBzImage(ImageFile(path: "a", bytes: bytes)))
        #expect(throws: BootError.unrecognisedFormat(path: "a")) { try BzImage(parsing: ImageFile(path: "a", bytes: bytes)) }

        bytes = BzImageBuilder().build()
        bytes[0x1FE] = 0
        #expect(!BzImage.isBzImage(ImageFile(path: "b", bytes: bytes)))
        #expect(!BzImage.isBzImage(ImageFile(path: "c", bytes: Array(BzImageBuilder().build().prefix(0x205)))))
    }

    @Test func loadCopiesTheProtectedModeKernelToOneMiB() throws {
        let memory = try GuestMemory.standard(bytes: 8 << 20)
        let b = BzImageBuilder()
        let image = b.image()
        let (entry, end) = try BzImage(parsing: image).load(image, into: memory)
        #expect(entry == 0x10_0200)
        #expect(end == 0x10_1000)
        #expect(try memory.read(4096, at: GuestAddress(0x10_0000)) == b.kernel)
        #expect(try memory.read(16, at: GuestAddress(0xF_FFF0)) == [UInt8](repeating: 0, count: 16))
    }

    @Test func kernelPastRAMDoesNotFit() throws {
        let memory = try GuestMemory.standard(bytes: 1 << 20)
        let image = BzImageBuilder().image("/boot/bz")
        #expect(throws: BootError.doesNotFit(path: "/boot/bz", what: "kernel", address: 0x10_0000, size: 4096)) {
            try BzImage(parsing: image).load(image, into: memory)
        }
    }
}

@Suite("BootParams")
struct BootParamsTests {
    @Test func vmlinuxZeroPageHasTheFieldsTheKernelChecks() {
        let p = BootParams()
        #expect(p.bytes.count == 4096)
        #expect(p.get(UInt16.self, at: 0x1FE) == 0xAA55)
        #expect(Array(p.bytes[0x202..<0x206]) == Array("HdrS".utf8))
        #expect(p.get(UInt16.self, at: 0x206) == 0x020F)
        #expect(p.get(UInt32.self, at: 0x230) == 0x100_0000)
        #expect(p.bytes[0x210] == 0xFF)
        #expect(p.bytes[0x211] == 0x81) // LOADED_HIGH | CAN_USE_HEAP
        #expect(p.get(UInt16.self, at: 0x224) == 0xFE00)
        #expect(p.bytes[0x1E8] == 0)
    }

    @Test func setupHeaderIsCopiedAndLoaderFieldsAreSet() throws {
        let bz = try BzImage(parsing: BzImageBuilder().image())
        let p = BootParams(setupHeader: bz.setupHeader)
        #expect(Array(p.bytes[0x1F1..<0x210]) == Array(bz.setupHeader[0..<(0x210 - 0x1F1)]))
        #expect(p.bytes[0x1F1] == 4)
        #expect(p.get(UInt32.self, at: 0x22C) == 0x7FFF_FFFF)
        #expect(p.get(UInt32.self, at: 0x230) == 0x20_0000)
        #expect(p.get(UInt32.self, at: 0x260) == 0x0123_4567)
        #expect(p.bytes[0x210] == 0xFF)
        #expect(p.bytes[0x211] == 0x81)
        #expect(p.get(UInt16.self, at: 0x224) == 0xFE00)
        #expect(p.bytes[0x268..<0x1000].allSatisfy { $0 == 0 })
        #expect(p.bytes[0..<0x1F1].allSatisfy { $0 == 0 })
    }

    @Test func commandLinePointerAndSize() {
        var p = BootParams()
        p.setCommandLine(address: 0x2_0000, size: 42)
        #expect(p.get(UInt32.self, at: 0x228) == 0x2_0000)
        #expect(p.get(UInt32.self, at: 0x0C8) == 0)
        #expect(p.get(UInt32.self, at: 0x238) == 42)

        p.setCommandLine(address: 0x1_2345_6000, size: 7)
        #expect(p.get(UInt32.self, at: 0x228) == 0x2345_6000)
        #expect(p.get(UInt32.self, at: 0x0C8) == 1) // ext_cmd_line_ptr
    }

    @Test func initrdAddressAndSizeWithExtendedHalves() {
        var p = BootParams()
        p.setInitrd(address: 0x3FF_D000, size: 0x2710)
        #expect(p.get(UInt32.self, at: 0x218) == 0x3FF_D000)
        #expect(p.get(UInt32.self, at: 0x21C) == 0x2710)
        #expect(p.get(UInt32.self, at: 0x0C0) == 0)
        #expect(p.get(UInt32.self, at: 0x0C4) == 0)

        p.setInitrd(address: 0x2_8000_0000, size: 0x1_0000_1000)
        #expect(p.get(UInt32.self, at: 0x218) == 0x8000_0000)
        #expect(p.get(UInt32.self, at: 0x21C) == 0x1000)
        #expect(p.get(UInt32.self, at: 0x0C0) == 2) // ext_ramdisk_image
        #expect(p.get(UInt32.self, at: 0x0C4) == 1) // ext_ramdisk_size
    }

    @Test func e820TableLayout() {
        var p = BootParams()
        let map: [MemoryMapEntry] = [
            .init(address: 0, size: 0x9_FC00, kind: .ram),
            .init(address: 0x9_FC00, size: 0x400, kind: .reserved),
            .init(address: 0x1_0000_0000, size: 0x2000_0000, kind: .ram),
        ]
        p.setMemoryMap(map)
        #expect(p.bytes[0x1E8] == 3)
        for (i, e) in map.enumerated() {
            let o = 0x2D0 + 20 * i
            #expect(p.get(UInt64.self, at: o) == e.address)
            #expect(p.get(UInt64.self, at: o + 8) == e.size)
            #expect(p.get(UInt32.self, at: o + 16) == e.kind.rawValue)
        }
        #expect(p.get(UInt32.self, at: 0x2D0 + 20 + 16) == 2)
        #expect(p.bytes[(0x2D0 + 60)..<(0x2D0 + 80)].allSatisfy { $0 == 0 })
    }

    @Test func e820TableIsCappedAt128Entries() {
        var p = BootParams()
        let map = (0..<130).map { MemoryMapEntry(address: UInt64($0) << 32, size: 0x1000, kind: .ram) }
        p.setMemoryMap(map)
        #expect(p.bytes[0x1E8] == 128)
        #expect(p.get(UInt64.self, at: 0x2D0 + 127 * 20) == 127 << 32)
        // Entry 128 would start at 0xcd0, past struct boot_params' e820_table.
        #expect(p.bytes[0xCD0..<0xCE4].allSatisfy { $0 == 0 })
    }
}

@Suite("Memory map")
struct MemoryMapTests {
    @Test func smallGuest() throws {
        let memory = try GuestMemory.standard(bytes: 64 << 20)
        #expect(MemoryMapEntry.map(for: memory) == [
            .init(address: 0, size: 0x9_FC00, kind: .ram),
            .init(address: 0x9_FC00, size: 0x400, kind: .reserved),
            .init(address: 0xF_0000, size: 0x1_0000, kind: .reserved),
            .init(address: 0x10_0000, size: (64 << 20) - 0x10_0000, kind: .ram),
        ])
    }

    @Test func guestAboveTheHole() throws {
        let memory = try GuestMemory.standard(bytes: (3 << 30) + (1 << 29))
        let map = MemoryMapEntry.map(for: memory)
        #expect(map.count == 5)
        #expect(map[3] == .init(address: 0x10_0000, size: 0xC000_0000 - 0x10_0000, kind: .ram))
        #expect(map[4] == .init(address: 0x1_0000_0000, size: 0x2000_0000, kind: .ram))
        #expect(map.filter { $0.kind == .ram }.reduce(0) { $0 + $1.size } == memory.totalSize - 0x6_0400)
    }

    @Test func kindsHaveE820Values() {
        #expect(MemoryMapEntry.Kind.ram.rawValue == 1)
        #expect(MemoryMapEntry.Kind.reserved.rawValue == 2)
    }
}

/// A parsed MP configuration table, for checking MPTable.bytes.
private struct ParsedMP {
    var floating: [UInt8]
    var table: [UInt8]
    var processors: [(apicID: UInt8, flags: UInt8)] = []
    var ioapics: [(id: UInt8, flags: UInt8, address: UInt32)] = []
    var buses: [String] = []
    var ioInterrupts: [(sourceIRQ: UInt8, ioapic: UInt8, pin: UInt8)] = []
    var localInterrupts: [(type: UInt8, lint: UInt8, destination: UInt8)] = []
    var entryCount: Int { processors.count + ioapics.count + buses.count + ioInterrupts.count + localInterrupts.count }

    init(_ bytes: [UInt8], at address: UInt64) throws {
        floating = Array(bytes[0..<16])
        let pointer = Bytes.get(UInt32.self, at: 4, in: floating)
        let offset = Int(UInt64(pointer) - address)
        let length = Int(Bytes.get(UInt16.self, at: offset + 4, in: bytes))
        table = Array(bytes[offset..<(offset + length)])
        var o = 44
        while o < table.count {
            switch table[o] {
            case 0: processors.append((table[o + 1], table[o + 3])); o += 20
            case 1: buses.append(String(decoding: table[(o + 2)..<(o + 8)], as: UTF8.self)); o += 8
            case 2: ioapics.append((table[o + 1], table[o + 3], Bytes.get(UInt32.self, at: o + 4, in: table))); o += 8
            case 3: ioInterrupts.append((table[o + 5], table[o + 6], table[o + 7])); o += 8
            case 4: localInterrupts.append((table[o + 1], table[o + 7], table[o + 6])); o += 8
            default: throw ParseError.unknownEntry(table[o])
            }
        }
    }

    enum ParseError: Error { case unknownEntry(UInt8) }
}

@Suite("MP table")
struct MPTableTests {
    private func sum(_ bytes: some Sequence<UInt8>) -> UInt8 { bytes.reduce(0, &+) }

    @Test(arguments: [1, 2, 4, 16, 40])
    func structureAndChecksums(cpus: Int) throws {
        let address: UInt64 = 0x9_FC00
        let bytes = MPTable(cpus: cpus).bytes(at: address)
        let mp = try ParsedMP(bytes, at: address)

        // Floating pointer structure.
        #expect(Array(mp.floating[0..<4]) == Array("_MP_".utf8))
        #expect(Bytes.get(UInt32.self, at: 4, in: mp.floating) == 0x9_FC10)
        #expect(mp.floating[8] == 1)  // length in 16-byte units
        #expect(mp.floating[9] == 4)  // spec 1.4
        #expect(mp.floating[11...].allSatisfy { $0 == 0 }, "feature bytes 0: a configuration table follows")
        #expect(sum(mp.floating) == 0)

        // Configuration table header.
        #expect(Array(mp.table[0..<4]) == Array("PCMP".utf8))
        #expect(mp.table[6] == 4)
        #expect(sum(mp.table) == 0)
        #expect(Int(Bytes.get(UInt16.self, at: 34, in: mp.table)) == mp.entryCount)
        #expect(Bytes.get(UInt32.self, at: 36, in: mp.table) == 0xFEE0_0000)
        #expect(mp.table.count == 44 + 20 * cpus + 8 * 20)
        #expect(bytes.count == 16 + mp.table.count)

        // One enabled processor per vCPU; only CPU 0 is the BSP.
        #expect(mp.processors.map(\.apicID) == (0..<cpus).map { UInt8($0) })
        #expect(mp.processors.map(\.flags) == [3] + [UInt8](repeating: 1, count: cpus - 1))

        // One IOAPIC with the next free id, at the standard address.
        #expect(mp.ioapics.count == 1)
        #expect(mp.ioapics[0].id == UInt8(cpus))
        #expect(mp.ioapics[0].flags & 1 == 1)
        #expect(mp.ioapics[0].address == 0xFEC0_0000)
        #expect(MPTable(cpus: cpus).ioapicID == UInt8(cpus))

        #expect(mp.buses == ["ISA   "])
        // ISA IRQs 0–15 wired identity to IOAPIC pins.
        #expect(mp.ioInterrupts.map(\.sourceIRQ) == (0..<16).map { UInt8($0) })
        #expect(mp.ioInterrupts.map(\.pin) == (0..<16).map { UInt8($0) })
        #expect(mp.ioInterrupts.allSatisfy { $0.ioapic == UInt8(cpus) })
        // LINT0 = ExtINT, LINT1 = NMI, to all local APICs.
        #expect(mp.localInterrupts.map(\.type) == [3, 1])
        #expect(mp.localInterrupts.map(\.lint) == [0, 1])
        #expect(mp.localInterrupts.allSatisfy { $0.destination == 0xFF })
    }

    @Test func pointerFollowsTheAddress() throws {
        let bytes = MPTable(cpus: 2).bytes(at: 0xF_0000)
        #expect(Bytes.get(UInt32.self, at: 4, in: bytes) == 0xF_0010)
        #expect(sum(bytes[0..<16]) == 0)
    }

    @Test func smallTablesFitInTheReservedEBDA() {
        // The e820 map reserves 0x9fc00–0xa0000 for it.
        #expect(MPTable(cpus: 40).bytes(at: 0x9_FC00).count <= 0x400)
    }

    @Test func checksumMakesTheSumZero() {
        #expect(MPTable.checksum([]) == 0)
        #expect(MPTable.checksum([1, 2, 3]) == 250)
        #expect(MPTable.checksum([0xFF, 0xFF]) == 2)
    }

    @Test func writePutsTheBytesAtTheEBDA() throws {
        let memory = try GuestMemory.standard(bytes: 2 << 20)
        try MPTable(cpus: 3).write(to: memory)
        let expected = MPTable(cpus: 3).bytes(at: 0x9_FC00)
        #expect(try memory.read(expected.count, at: GuestAddress(0x9_FC00)) == expected)
    }
}
