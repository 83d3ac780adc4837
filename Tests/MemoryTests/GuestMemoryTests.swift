import Testing
import Arch
@testable import Memory
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

private let MiB: UInt64 = 1 << 20
private let GiB: UInt64 = 1 << 30

/// Asserts that `body` throws exactly `GuestMemoryError.outOfRange(address:length:)`.
private func expectOutOfRange(_ address: UInt64, _ length: UInt64, sourceLocation: SourceLocation = #_sourceLocation,
                              _ body: () throws -> Void) {
    #expect(throws: GuestMemoryError.outOfRange(address: address, length: length), sourceLocation: sourceLocation) {
        try body()
    }
}

@Suite("GuestAddress")
struct GuestAddressTests {
    @Test func addingDetectsOverflow() {
        #expect(GuestAddress(0x1000).adding(0x10) == GuestAddress(0x1010))
        #expect(GuestAddress(UInt64.max - 1).adding(1) == GuestAddress(UInt64.max))
        #expect(GuestAddress(UInt64.max).adding(1) == nil)
        #expect(GuestAddress(1).adding(UInt64.max) == nil)
    }

    @Test func orderingAndDescription() {
        #expect(GuestAddress(1) < GuestAddress(2))
        #expect(!(GuestAddress(2) < GuestAddress(2)))
        #expect(GuestAddress(0xFEE0_0000).description == "0xfee00000")
        #expect(GuestAddress(0).description == "0x0")
    }
}

@Suite("GuestMemory layout")
struct GuestMemoryLayoutTests {
    @Test func smallRAMIsOneLowRegion() throws {
        let m = try GuestMemory.standard(bytes: 64 * MiB)
        #expect(m.regions.count == 1)
        #expect(m.regions[0].start == GuestAddress(0))
        #expect(m.regions[0].size == 64 * MiB)
        #expect(m.regions[0].end == 64 * MiB)
        #expect(m.totalSize == 64 * MiB)
        #expect(m.lowRAMEnd == 64 * MiB)
        #expect(m.regions[0].hostAddress != 0)
        #expect(m.regions[0].hostAddress % 4096 == 0)
    }

    @Test func exactlyThreeGiBFitsBelowTheHole() throws {
        let m = try GuestMemory.standard(bytes: 3 * GiB)
        #expect(m.regions.count == 1)
        #expect(m.lowRAMEnd == 0xC000_0000)
        #expect(!m.contains(GuestAddress(0x1_0000_0000)))
    }

    @Test func largeRAMIsSplitAroundTheMMIOHole() throws {
        let m = try GuestMemory.standard(bytes: 3 * GiB + GiB / 2)
        #expect(m.regions.count == 2)
        #expect(m.regions[0].start == GuestAddress(0))
        #expect(m.regions[0].size == 3 * GiB)
        #expect(m.regions[1].start == GuestAddress(0x1_0000_0000))
        #expect(m.regions[1].size == GiB / 2)
        #expect(m.regions[1].end == 0x1_2000_0000)
        #expect(m.totalSize == 3 * GiB + GiB / 2)
        #expect(m.lowRAMEnd == 0xC000_0000)
        #expect(GuestLayout.mmioHoleStart == 0xC000_0000)
        #expect(GuestLayout.mmioHoleEnd == 0x1_0000_0000)

        #expect(m.contains(GuestAddress(0)))
        #expect(m.contains(GuestAddress(0xBFFF_FFFF)))
        #expect(!m.contains(GuestAddress(0xBFFF_FFFF), length: 2))
        #expect(!m.contains(GuestAddress(0xC000_0000)))
        #expect(!m.contains(GuestAddress(0xFEE0_0000)))
        #expect(!m.contains(GuestAddress(0xFFFF_FFFF)))
        #expect(m.contains(GuestAddress(0x1_0000_0000)))
        #expect(m.contains(GuestAddress(0x1_1FFF_FFFF)))
        #expect(m.contains(GuestAddress(0x1_1FFF_F000), length: 0x1000))
        #expect(!m.contains(GuestAddress(0x1_1FFF_F000), length: 0x1001))
        #expect(!m.contains(GuestAddress(0x1_2000_0000)))
    }

    @Test func highAndLowRegionsAreDistinctStorage() throws {
        let m = try GuestMemory.standard(bytes: 3 * GiB + GiB / 2)
        try m.writeInteger(UInt64(0x1111_2222_3333_4444), at: GuestAddress(0x1_0000_0000))
        try m.writeInteger(UInt64(0x5555_6666_7777_8888), at: GuestAddress(0))
        try m.writeInteger(UInt32(0xCAFE_F00D), at: GuestAddress(0x1_1FFF_FFFC))
        try m.writeInteger(UInt32(0xFEED_BEEF), at: GuestAddress(0xBFFF_FFFC))
        #expect(try m.readInteger(UInt64.self, at: GuestAddress(0x1_0000_0000)) == 0x1111_2222_3333_4444)
        #expect(try m.readInteger(UInt64.self, at: GuestAddress(0)) == 0x5555_6666_7777_8888)
        #expect(try m.readInteger(UInt32.self, at: GuestAddress(0x1_1FFF_FFFC)) == 0xCAFE_F00D)
        #expect(try m.readInteger(UInt32.self, at: GuestAddress(0xBFFF_FFFC)) == 0xFEED_BEEF)
    }

    @Test(arguments: [0, 4095, 4096, MiB - 4096, MiB + 1, 64 * MiB + 2048])
    func invalidStandardSizes(_ bytes: UInt64) {
        #expect(throws: GuestMemoryError.invalidSize(bytes)) { try GuestMemory.standard(bytes: bytes) }
    }

    @Test(arguments: [UInt64(0), 1, 100, 4097])
    func invalidRegionSizes(_ bytes: UInt64) {
        #expect(throws: GuestMemoryError.invalidSize(bytes)) { try GuestMemoryRegion(start: GuestAddress(0), size: bytes) }
    }

    @Test func overlappingRegionsAreRejected() throws {
        let a = try GuestMemoryRegion(start: GuestAddress(0), size: 0x2000)
        let b = try GuestMemoryRegion(start: GuestAddress(0x1000), size: 0x1000)
        #expect(throws: GuestMemoryError.overlappingRegions) { try GuestMemory(regions: [b, a]) }
    }

    @Test func adjacentRegionsAreAcceptedAndSorted() throws {
        let high = try GuestMemoryRegion(start: GuestAddress(0x2000), size: 0x1000)
        let low = try GuestMemoryRegion(start: GuestAddress(0), size: 0x2000)
        let m = try GuestMemory(regions: [high, low])
        #expect(m.regions.map(\.start) == [GuestAddress(0), GuestAddress(0x2000)])
        #expect(m.lowRAMEnd == 0x2000)
        // Adjacent regions are separate mappings: an access may not span them.
        #expect(!m.contains(GuestAddress(0x1FFF), length: 2))
        #expect(m.contains(GuestAddress(0x2FFF)))
    }

    @Test func memoryWithoutLowRegionHasNoLowRAM() throws {
        let m = try GuestMemory(regions: [try GuestMemoryRegion(start: GuestAddress(0x1_0000_0000), size: 0x1000)])
        #expect(m.lowRAMEnd == 0)
    }

    @Test func errorDescriptions() {
        #expect(GuestMemoryError.outOfRange(address: 0xC000_0000, length: 4).description
            == "guest memory access 0xc0000000+0x4 is outside guest RAM")
        #expect(GuestMemoryError.invalidSize(5).description == "invalid guest RAM size 5")
        #expect(GuestMemoryError.overlappingRegions.description == "guest RAM regions overlap")
        #expect(GuestMemoryError.mmapFailed(bytes: 2 * MiB, errno: 12).description.hasPrefix("cannot map 2 MiB of guest RAM: "))
    }
}

@Suite("GuestMemory access")
struct GuestMemoryAccessTests {
    let memory: GuestMemory
    init() throws { memory = try GuestMemory.standard(bytes: 2 * MiB) }

    @Test func freshMemoryIsZero() throws {
        #expect(try memory.read(64, at: GuestAddress(0x1000)) == [UInt8](repeating: 0, count: 64))
        #expect(try memory.readInteger(UInt64.self, at: GuestAddress(2 * MiB - 8)) == 0)
    }

    @Test func integersAreLittleEndian() throws {
        try memory.writeInteger(UInt16(0xBEEF), at: GuestAddress(0x100))
        try memory.writeInteger(UInt32(0x1122_3344), at: GuestAddress(0x200))
        try memory.writeInteger(UInt64(0x0102_0304_0506_0708), at: GuestAddress(0x300))
        try memory.writeInteger(Int32(-2), at: GuestAddress(0x400))
        try memory.writeInteger(UInt8(0x7F), at: GuestAddress(0x500))
        #expect(try memory.read(2, at: GuestAddress(0x100)) == [0xEF, 0xBE])
        #expect(try memory.read(4, at: GuestAddress(0x200)) == [0x44, 0x33, 0x22, 0x11])
        #expect(try memory.read(8, at: GuestAddress(0x300)) == [8, 7, 6, 5, 4, 3, 2, 1])
        #expect(try memory.read(4, at: GuestAddress(0x400)) == [0xFE, 0xFF, 0xFF, 0xFF])
        #expect(try memory.read(1, at: GuestAddress(0x500)) == [0x7F])
    }

    @Test func integersRoundTripAtUnalignedAddresses() throws {
        try memory.writeInteger(UInt64(0xDEAD_BEEF_CAFE_F00D), at: GuestAddress(0x1003))
        try memory.writeInteger(UInt32(0xA1B2_C3D4), at: GuestAddress(0x2001))
        try memory.writeInteger(Int16(-12345), at: GuestAddress(0x3005))
        #expect(try memory.readInteger(UInt64.self, at: GuestAddress(0x1003)) == 0xDEAD_BEEF_CAFE_F00D)
        #expect(try memory.readInteger(UInt32.self, at: GuestAddress(0x2001)) == 0xA1B2_C3D4)
        #expect(try memory.readInteger(Int16.self, at: GuestAddress(0x3005)) == -12345)
        // Neighbours are untouched.
        #expect(try memory.read(1, at: GuestAddress(0x1002)) == [0])
        #expect(try memory.read(1, at: GuestAddress(0x100B)) == [0])
    }

    @Test func readIntegerDecodesLittleEndianBytes() throws {
        try memory.write([0x78, 0x56, 0x34, 0x12], at: GuestAddress(0x40))
        #expect(try memory.readInteger(UInt32.self, at: GuestAddress(0x40)) == 0x1234_5678)
        #expect(try memory.readInteger(UInt16.self, at: GuestAddress(0x42)) == 0x1234)
    }

    @Test func byteCollectionsAndRawBuffersRoundTrip() throws {
        let data: [UInt8] = (0..<300).map { UInt8(truncatingIfNeeded: $0 * 7) }
        try memory.write(data, at: GuestAddress(0x4000))
        #expect(try memory.read(300, at: GuestAddress(0x4000)) == data)

        try memory.write(data[10..<20], at: GuestAddress(0x5000))
        #expect(try memory.read(10, at: GuestAddress(0x5000)) == Array(data[10..<20]))

        try data.withUnsafeBytes { try memory.write($0, at: GuestAddress(0x6001)) }
        var back = [UInt8](repeating: 0xAA, count: 300)
        try back.withUnsafeMutableBytes { try memory.read(into: $0, at: GuestAddress(0x6001)) }
        #expect(back == data)
    }

    @Test func zeroLengthAccessesInsideRAMSucceed() throws {
        #expect(try memory.read(0, at: GuestAddress(0x10)) == [])
        try memory.write([UInt8](), at: GuestAddress(0x10))
        try memory.fill(0xFF, count: 0, at: GuestAddress(0x10))
        #expect(try memory.read(1, at: GuestAddress(0x10)) == [0])
    }

    @Test func fillSetsExactlyTheRange() throws {
        try memory.fill(0xAB, count: 100, at: GuestAddress(0x2000))
        #expect(try memory.read(100, at: GuestAddress(0x2000)) == [UInt8](repeating: 0xAB, count: 100))
        #expect(try memory.read(1, at: GuestAddress(0x1FFF)) == [0])
        #expect(try memory.read(1, at: GuestAddress(0x2064)) == [0])
        try memory.fill(0, count: 10, at: GuestAddress(0x2005))
        #expect(try memory.read(20, at: GuestAddress(0x2000)) == [0xAB, 0xAB, 0xAB, 0xAB, 0xAB] + [UInt8](repeating: 0, count: 10) + [0xAB, 0xAB, 0xAB, 0xAB, 0xAB])
    }

    @Test func lastBytesOfRAMAreAccessible() throws {
        let end = 2 * MiB
        try memory.writeInteger(UInt64.max, at: GuestAddress(end - 8))
        #expect(try memory.readInteger(UInt64.self, at: GuestAddress(end - 8)) == UInt64.max)
        try memory.write([1], at: GuestAddress(end - 1))
        #expect(try memory.read(1, at: GuestAddress(end - 1)) == [1])
    }

    @Test func accessesCrossingTheEndThrow() throws {
        let end = 2 * MiB
        expectOutOfRange(end - 7, 8) { try memory.writeInteger(UInt64(1), at: GuestAddress(end - 7)) }
        expectOutOfRange(end - 3, 4) { _ = try memory.readInteger(UInt32.self, at: GuestAddress(end - 3)) }
        expectOutOfRange(end - 1, 2) { try memory.write([1, 2], at: GuestAddress(end - 1)) }
        expectOutOfRange(end - 16, 17) { _ = try memory.read(17, at: GuestAddress(end - 16)) }
        expectOutOfRange(end - 10, 11) { try memory.fill(1, count: 11, at: GuestAddress(end - 10)) }
        expectOutOfRange(end, 1) { _ = try memory.read(1, at: GuestAddress(end)) }
        expectOutOfRange(end + 1, 0) { _ = try memory.read(0, at: GuestAddress(end + 1)) }
        expectOutOfRange(end - 2, 4) {
            var buffer = [UInt8](repeating: 0, count: 4)
            try buffer.withUnsafeMutableBytes { try memory.read(into: $0, at: GuestAddress(end - 2)) }
        }
        expectOutOfRange(end - 2, 4) {
            try [UInt8](repeating: 9, count: 4).withUnsafeBytes { try memory.write($0, at: GuestAddress(end - 2)) }
        }
        // A rejected write changes nothing.
        #expect(try memory.read(16, at: GuestAddress(end - 16)) == [UInt8](repeating: 0, count: 16))
    }

    @Test func addressesNearTheTopOfTheAddressSpaceThrow() {
        expectOutOfRange(UInt64.max, 1) { _ = try memory.read(1, at: GuestAddress(.max)) }
        expectOutOfRange(UInt64.max - 3, 8) { _ = try memory.readInteger(UInt64.self, at: GuestAddress(.max - 3)) }
        expectOutOfRange(UInt64.max - 7, 16) { _ = try memory.read(16, at: GuestAddress(.max - 7)) }
        expectOutOfRange(UInt64.max, 8) { try memory.writeInteger(UInt64(0), at: GuestAddress(.max)) }
    }

    @Test func negativeCountsThrow() {
        expectOutOfRange(0x1000, 0) { _ = try memory.read(-1, at: GuestAddress(0x1000)) }
        expectOutOfRange(0x1000, 0) { try memory.fill(0, count: -5, at: GuestAddress(0x1000)) }
    }
}

@Suite("GuestMemory bounds around the hole and overflow")
struct GuestMemoryBoundsTests {
    @Test func accessesInsideOrAcrossTheHoleThrow() throws {
        let m = try GuestMemory.standard(bytes: 3 * GiB + GiB / 2)
        expectOutOfRange(0xC000_0000, 1) { _ = try m.read(1, at: GuestAddress(0xC000_0000)) }
        expectOutOfRange(0xD000_0000, 4) { try m.writeInteger(UInt32(1), at: GuestAddress(0xD000_0000)) }
        expectOutOfRange(0xFEC0_0000, 8) { _ = try m.readInteger(UInt64.self, at: GuestAddress(0xFEC0_0000)) }
        // Starting in RAM and running into the hole.
        expectOutOfRange(0xBFFF_FFFE, 4) { try m.writeInteger(UInt32(1), at: GuestAddress(0xBFFF_FFFE)) }
        // Starting in the hole and running into high RAM.
        expectOutOfRange(0xFFFF_FFFC, 8) { try m.writeInteger(UInt64(1), at: GuestAddress(0xFFFF_FFFC)) }
        // Spanning the whole hole.
        expectOutOfRange(0xBFFF_F000, 0x4000_2000) { try m.fill(0, count: 0x4000_2000, at: GuestAddress(0xBFFF_F000)) }
        // High RAM end.
        expectOutOfRange(0x1_1FFF_FFFF, 2) { _ = try m.read(2, at: GuestAddress(0x1_1FFF_FFFF)) }
    }

    @Test func lengthsThatWrapAroundTheAddressSpaceThrow() throws {
        // A region high enough that address + Int.max wraps to a small number below its end: a
        // check without overflow detection would accept this and hand out a wild pointer.
        let start: UInt64 = 0x8000_0000_0000_0000
        let region = try GuestMemoryRegion(start: GuestAddress(start), size: 0x2000)
        let m = try GuestMemory(regions: [region])
        #expect(m.contains(GuestAddress(start + 0x1000), length: 0x1000))
        #expect(!m.contains(GuestAddress(start + 0x1000), length: UInt64.max))
        #expect(!m.contains(GuestAddress(start + 0x1000), length: UInt64(Int.max)))
        expectOutOfRange(start + 0x1000, UInt64(Int.max)) { try m.fill(0, count: Int.max, at: GuestAddress(start + 0x1000)) }
        expectOutOfRange(start + 0x1000, UInt64(Int.max)) { _ = try m.read(Int.max, at: GuestAddress(start + 0x1000)) }
        // Ordinary accesses still work there.
        try m.writeInteger(UInt32(0xABCD_EF01), at: GuestAddress(start + 0x1FFC))
        #expect(try m.readInteger(UInt32.self, at: GuestAddress(start + 0x1FFC)) == 0xABCD_EF01)
    }
}

@Suite("Memory images")
struct MemoryImageTests {
    func scratchFile() throws -> FileDescriptor {
        let path = "/tmp/rtvisor-memimage-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let fd = try FileDescriptor.open(path, .readWrite, options: [.create, .exclusiveCreate], permissions: [.ownerReadWrite])
        unlink(path)
        return fd
    }

    @Test func zeroPagesBecomeHolesAndEverythingReadsBack() throws {
        let memory = try GuestMemory.standard(bytes: 4 * MiB)
        try memory.write([1, 2, 3], at: GuestAddress(0x1000))
        try memory.write([UInt8](repeating: 0xAB, count: 8192), at: GuestAddress(2 * MiB + 4096))
        try memory.writeInteger(UInt64(0x1122_3344_5566_7788), at: GuestAddress(4 * MiB - 8))
        let fd = try scratchFile()
        defer { try? fd.close() }
        let written = try memory.writeImage(to: fd)
        #expect(written == 4 * 4096, "only the four non-zero pages are written")
        var st = stat()
        #expect(fstat(fd.rawValue, &st) == 0)
        #expect(UInt64(st.st_size) == 4 * MiB, "the file has the RAM's size")
        #expect(UInt64(st.st_blocks) * 512 < 1 * MiB, "and holes where the zero pages were")

        let copy = try GuestMemory.standard(bytes: 4 * MiB)
        try copy.readImage(from: fd)
        let mapped = try GuestMemory.mappingImage(fd, bytes: 4 * MiB)
        for restored in [copy, mapped] {
            #expect(try restored.read(3, at: GuestAddress(0x1000)) == [1, 2, 3])
            #expect(try restored.read(8192, at: GuestAddress(2 * MiB + 4096)) == [UInt8](repeating: 0xAB, count: 8192))
            #expect(try restored.readInteger(UInt64.self, at: GuestAddress(4 * MiB - 8)) == 0x1122_3344_5566_7788)
            #expect(try restored.read(4096, at: GuestAddress(MiB)) == [UInt8](repeating: 0, count: 4096))
        }
        // Mapped memory is private: the guest's writes never reach the file.
        try mapped.write([9], at: GuestAddress(0x1000))
        let again = try GuestMemory.standard(bytes: 4 * MiB)
        try again.readImage(from: fd)
        #expect(try again.read(1, at: GuestAddress(0x1000)) == [1])
    }

    @Test func onlyPagesEverTouchedMayHoldDataAndAFileMappingIsReadWhole() throws {
        let memory = try GuestMemory.standard(bytes: 4 * MiB)
        try memory.write([7], at: GuestAddress(3 * 4096 + 5))
        let bits = try #require(memory.touched.bitmap(of: memory.regions[0]), "/proc/self/pagemap is readable here")
        #expect(bits.reduce(0) { $0 + $1.nonzeroBitCount } == 1 && bits[0] == 1 << 3, "only page 3 was touched")
        let fd = try scratchFile()
        defer { try? fd.close() }
        #expect(try memory.writeImage(to: fd) == 4096)
        #expect(memory.touched.bitmap(of: try GuestMemory.mappingImage(fd, bytes: 4 * MiB).regions[0]) == nil)
    }
}
