import Memory
import Testing
#if canImport(Glibc)
import Glibc
#endif
@testable import Virtio
@testable import VirtioBlock

/// A temporary raw image, removed when the value goes away.
final class TempImage {
    let path: String
    init(sectors: Int, fill: UInt8 = 0) {
        var template = Array("/tmp/rtvisor-blk-XXXXXX".utf8CString)
        let fd = mkstemp(&template)
        path = String(cString: template)
        let bytes = [UInt8](repeating: fill, count: sectors * 512)
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
    }
    deinit { unlink(path) }

    func read(sector: Int, count: Int = 1) -> [UInt8] {
        let fd = open(path, O_RDONLY)
        defer { close(fd) }
        var b = [UInt8](repeating: 0, count: count * 512)
        _ = b.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(sector * 512)) }
        return b
    }
}

/// A block device with its queue driver, activated as a transport would after DRIVER_OK.
struct BlockRig {
    let image: TempImage
    let device: VirtioBlock
    let memory = QueueDriver.memory()
    var driver: QueueDriver
    let interrupt = RecordingInterrupt()

    init(sectors: Int = 64, readOnly: Bool = false, serial: String = "", features: UInt64 = 0) throws {
        image = TempImage(sectors: sectors)
        device = VirtioBlock(name: "blk-test", image: try BlockImage(path: image.path, readOnly: readOnly),
                             settings: BlockDeviceSettings(serial: serial))
        driver = QueueDriver(memory: memory, size: 16)
        try device.activate(VirtioActivation(memory: memory, features: features, queues: [driver.deviceQueue(features: features)],
                                             interrupt: interrupt))
    }

    static func header(_ type: UInt32, sector: UInt64) -> [UInt8] {
        var h: [UInt8] = []
        for i in 0..<4 { h.append(UInt8(truncatingIfNeeded: type >> (8 * UInt32(i)))) }
        h += [0, 0, 0, 0]
        for i in 0..<8 { h.append(UInt8(truncatingIfNeeded: sector >> (8 * UInt64(i)))) }
        return h
    }

    /// Submits one request and returns (status byte, used length, writable buffer addresses).
    mutating func request(_ buffers: [QueueDriver.Buffer], indirect: Bool = false) throws -> (status: UInt8, used: UInt32, addresses: [UInt64]) {
        let (head, addrs) = driver.add(buffers, indirect: indirect)
        device.queueNotify(0)
        let used = driver.takeUsed()
        #expect(used.count == 1)
        #expect(used.first?.id == UInt32(head))
        let statusAddress: UInt64
        if case let .writable(n) = buffers.last! { statusAddress = addrs.last! + UInt64(n) - 1 } else { statusAddress = 0 }
        return (try memory.readInteger(UInt8.self, at: GuestAddress(statusAddress)), used.first?.length ?? 0, addrs)
    }
}

typealias P = VirtioBlockProtocol

@Suite("virtio-blk requests")
struct VirtioBlockTests {
    @Test func writeThenReadAcrossBuffers() throws {
        var rig = try BlockRig(features: VirtioFeature.ringIndirectDescriptors)
        let data = (0..<1024).map { UInt8(truncatingIfNeeded: $0 * 7) }
        let w = try rig.request([.readable(BlockRig.header(P.typeOut, sector: 3)), .readable(Array(data[0..<100])),
                                 .readable(Array(data[100...])), .writable(1)])
        #expect(w.status == P.statusOK)
        #expect(w.used == 1)
        #expect(rig.image.read(sector: 3, count: 2) == data)
        let r = try rig.request([.readable(BlockRig.header(P.typeIn, sector: 3)), .writable(512), .writable(513)], indirect: true)
        #expect(r.status == P.statusOK)
        #expect(r.used == 1025)
        #expect(try rig.memory.read(512, at: GuestAddress(r.addresses[1])) + (try rig.memory.read(512, at: GuestAddress(r.addresses[2]))) == data)
        #expect(rig.interrupt.queues == [0, 0])
        #expect(rig.device.statistics.bytesWritten == 1024)
    }

    /// Without VIRTIO_BLK_F_FLUSH the driver may take a completed write as durable (virtio
    /// 5.2.6.2): every write and write-zeroes is synced before it completes (issue 16). With
    /// FLUSH negotiated, writes complete from the page cache and FLUSH syncs.
    @Test func writesAreWriteThroughUnlessFlushIsNegotiated() throws {
        let write = [QueueDriver.Buffer.readable(BlockRig.header(P.typeOut, sector: 0)), .readable([UInt8](repeating: 7, count: 512)), .writable(1)]
        var through = try BlockRig(features: 0)
        #expect(try through.request(write).status == P.statusOK)
        #expect(try through.request(write).status == P.statusOK)
        #expect(through.device.statistics.syncs == 2)
        var cached = try BlockRig(features: P.featureFlush)
        #expect(try cached.request(write).status == P.statusOK)
        #expect(cached.device.statistics.syncs == 0)
        #expect(try cached.request([.readable(BlockRig.header(P.typeFlush, sector: 0)), .writable(1)]).status == P.statusOK)
        #expect(cached.device.statistics.syncs == 1)
    }

    @Test func flushGetIDAndUnknownType() throws {
        var rig = try BlockRig(serial: "disk-0001")
        #expect(try rig.request([.readable(BlockRig.header(P.typeFlush, sector: 0)), .writable(1)]).status == P.statusOK)
        let id = try rig.request([.readable(BlockRig.header(P.typeGetID, sector: 0)), .writable(20), .writable(1)])
        #expect(id.status == P.statusOK)
        #expect(try rig.memory.read(20, at: GuestAddress(id.addresses[1])) == Array("disk-0001".utf8) + [UInt8](repeating: 0, count: 11))
        #expect(try rig.request([.readable(BlockRig.header(99, sector: 0)), .writable(1)]).status == P.statusUnsupported)
    }

    @Test func readOnlyDiskRefusesWrites() throws {
        var rig = try BlockRig(readOnly: true)
        #expect(rig.device.availableFeatures & P.featureReadOnly != 0)
        #expect(rig.device.availableFeatures & P.featureDiscard == 0)
        let w = try rig.request([.readable(BlockRig.header(P.typeOut, sector: 0)), .readable([UInt8](repeating: 0xAB, count: 512)), .writable(1)])
        #expect(w.status == P.statusIOError)
        #expect(rig.image.read(sector: 0) == [UInt8](repeating: 0, count: 512))
        #expect(try rig.request([.readable(BlockRig.header(P.typeIn, sector: 0)), .writable(512), .writable(1)]).status == P.statusOK)
    }

    @Test(arguments: [
        (UInt64(64), 512),                 // first sector past the end
        (UInt64(63), 1024),                // runs over the end
        (UInt64.max / 512, 512),           // sector * 512 fits, end does not
        (UInt64.max, 512),                 // sector * 512 overflows
        (UInt64(0), 100),                  // not whole sectors
    ])
    func outOfRangeOrPartialReads(sector: UInt64, length: Int) throws {
        var rig = try BlockRig(sectors: 64)
        let r = try rig.request([.readable(BlockRig.header(P.typeIn, sector: sector)), .writable(length), .writable(1)])
        #expect(r.status == P.statusIOError)
        let w = try rig.request([.readable(BlockRig.header(P.typeOut, sector: sector)), .readable([UInt8](repeating: 1, count: length)), .writable(1)])
        #expect(w.status == P.statusIOError)
        #expect(rig.image.read(sector: 0, count: 64) == [UInt8](repeating: 0, count: 64 * 512))
    }

    @Test func malformedRequests() throws {
        var rig = try BlockRig()
        // Header shorter than 16 bytes.
        #expect(try rig.request([.readable([1, 0, 0, 0]), .writable(1)]).status == P.statusIOError)
        // No status byte at all: nothing to report, the chain is returned with length 0.
        let (head, _) = rig.driver.add([.readable(BlockRig.header(P.typeOut, sector: 0) + [UInt8](repeating: 9, count: 512))])
        rig.device.queueNotify(0)
        #expect(rig.driver.takeUsed().map { [$0.id, $0.length] } == [[UInt32(head), 0]])
        #expect(rig.image.read(sector: 0) == [UInt8](repeating: 0, count: 512))
        // GET_ID into a buffer with room only for the status.
        #expect(try rig.request([.readable(BlockRig.header(P.typeGetID, sector: 0)), .writable(1)]).status == P.statusIOError)
        #expect(rig.interrupt.resetReasons.isEmpty)
    }

    @Test func writeZeroesAndDiscard() throws {
        var rig = try BlockRig()
        _ = try rig.request([.readable(BlockRig.header(P.typeOut, sector: 0)), .readable([UInt8](repeating: 0x5A, count: 8 * 512)), .writable(1)])
        func segment(_ sector: UInt64, _ count: UInt32, _ flags: UInt32) -> [UInt8] {
            (0..<8).map { UInt8(truncatingIfNeeded: sector >> (8 * UInt64($0))) }
                + (0..<4).map { UInt8(truncatingIfNeeded: count >> (8 * UInt32($0))) }
                + (0..<4).map { UInt8(truncatingIfNeeded: flags >> (8 * UInt32($0))) }
        }
        #expect(try rig.request([.readable(BlockRig.header(P.typeWriteZeroes, sector: 0) + segment(2, 2, 0)), .writable(1)]).status == P.statusOK)
        #expect(rig.image.read(sector: 2, count: 2) == [UInt8](repeating: 0, count: 1024))
        #expect(rig.image.read(sector: 1) == [UInt8](repeating: 0x5A, count: 512))
        #expect(try rig.request([.readable(BlockRig.header(P.typeDiscard, sector: 0) + segment(5, 1, 0)), .writable(1)]).status == P.statusOK)
        // Out of range, unknown flags, or a partial segment: errors, no change.
        #expect(try rig.request([.readable(BlockRig.header(P.typeWriteZeroes, sector: 0) + segment(63, 2, 0)), .writable(1)]).status == P.statusIOError)
        #expect(try rig.request([.readable(BlockRig.header(P.typeWriteZeroes, sector: 0) + segment(0, 1, 6)), .writable(1)]).status == P.statusUnsupported)
        #expect(try rig.request([.readable(BlockRig.header(P.typeDiscard, sector: 0) + [1, 2, 3]), .writable(1)]).status == P.statusIOError)
        #expect(rig.image.read(sector: 0) == [UInt8](repeating: 0x5A, count: 512))
    }

    @Test func hostileChainPutsOnlyThisDeviceIntoNeedsReset() throws {
        var bad = try BlockRig()
        var good = try BlockRig()
        bad.driver.rawDescriptor(0, Descriptor(address: 0x20000, length: 16, flags: Descriptor.flagNext, next: 0))
        bad.driver.publish(0)
        bad.device.queueNotify(0)
        #expect(bad.interrupt.resetReasons.count == 1)
        #expect(bad.interrupt.resetReasons.first?.contains("loop") == true)
        // The failed device ignores further notifications until reset; the other one works.
        bad.device.queueNotify(0)
        #expect(bad.interrupt.resetReasons.count == 1)
        #expect(try good.request([.readable(BlockRig.header(P.typeFlush, sector: 0)), .writable(1)]).status == P.statusOK)
    }
}

@Suite("disk images")
struct BlockImageTests {
    @Test func writableImageIsExclusive() throws {
        let img = TempImage(sectors: 8)
        let first = try BlockImage(path: img.path, readOnly: false)
        #expect(first.sectors == 8)
        let e = #expect(throws: BlockImageError.self) { try BlockImage(path: img.path, readOnly: false) }
        #expect(e?.reason.contains("in use") == true)
        #expect(throws: BlockImageError.self) { try BlockImage(path: img.path, readOnly: true) }
    }

    @Test func readOnlyImagesShare() throws {
        let img = TempImage(sectors: 8)
        let a = try BlockImage(path: img.path, readOnly: true)
        let b = try BlockImage(path: img.path, readOnly: true)
        #expect(a.size == b.size)
        #expect(throws: BlockImageError.self) { try BlockImage(path: img.path, readOnly: false) }
    }

    @Test func missingTinyAndDirectoryImages() throws {
        #expect(throws: BlockImageError.self) { try BlockImage(path: "/nonexistent/disk.img", readOnly: true) }
        #expect(throws: BlockImageError.self) { try BlockImage(path: "/tmp", readOnly: true) }
        var template = Array("/tmp/rtvisor-tiny-XXXXXX".utf8CString)
        let fd = mkstemp(&template); close(fd)
        let path = String(cString: template)
        defer { unlink(path) }
        let e = #expect(throws: BlockImageError.self) { try BlockImage(path: path, readOnly: true) }
        #expect(e?.reason.contains("smaller than one") == true)
    }

    @Test func directIOBouncesUnalignedGuestBuffers() throws {
        let img = TempImage(sectors: 16)
        guard let image = try? BlockImage(path: img.path, readOnly: false, directIO: true) else {
            print("skip: /tmp does not support O_DIRECT here"); return
        }
        let m = QueueDriver.memory()
        try m.write([UInt8](repeating: 0x42, count: 512), at: GuestAddress(0x1003))
        try image.write(from: m, at: GuestAddress(0x1003), count: 512, offset: 1024)
        try image.read(into: m, at: GuestAddress(0x3001), count: 512, offset: 1024)
        #expect(try m.read(512, at: GuestAddress(0x3001)) == [UInt8](repeating: 0x42, count: 512))
        #expect(img.read(sector: 2) == [UInt8](repeating: 0x42, count: 512))
    }

    /// Issue 16: with direct_io, the bounce buffer was as big as the guest's buffer (up to 4 GiB
    /// per descriptor, bounded only by guest RAM). It is a fixed 1 MiB per disk, and a request
    /// goes through it in pieces; buffers need not be sector-sized (only the request is).
    @Test func directIOBounceBufferIsBoundedWhateverTheGuestAsks() throws {
        var template = Array("/tmp/rtvisor-blk-XXXXXX".utf8CString)
        let fd = mkstemp(&template)
        let path = String(cString: template)
        defer { unlink(path) }
        #expect(ftruncate(fd, 16 << 20) == 0)
        close(fd)
        guard let image = try? BlockImage(path: path, readOnly: false, directIO: true) else {
            print("skip: /tmp does not support O_DIRECT here"); return
        }
        let memory = QueueDriver.memory(32)
        let device = VirtioBlock(name: "blk-direct", image: image)
        var driver = QueueDriver(memory: memory, size: 16)
        let interrupt = RecordingInterrupt()
        try device.activate(VirtioActivation(memory: memory, features: 0, queues: [driver.deviceQueue()], interrupt: interrupt))
        func request(_ buffers: [QueueDriver.Buffer]) throws -> (status: UInt8, addresses: [UInt64]) {
            let (_, addresses) = driver.add(buffers)
            device.queueNotify(0)
            #expect(driver.takeUsed().count == 1)
            return (try memory.readInteger(UInt8.self, at: GuestAddress(addresses.last!)), addresses)
        }
        // 8 MiB in one descriptor, written and read back.
        let pattern = (0..<(8 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 12) }
        #expect(try request([.readable(BlockRig.header(P.typeOut, sector: 8)), .readable(pattern), .writable(1)]).status == P.statusOK)
        let r = try request([.readable(BlockRig.header(P.typeIn, sector: 8)), .writable(8 << 20), .writable(1)])
        #expect(r.status == P.statusOK)
        #expect(try memory.read(8 << 20, at: GuestAddress(r.addresses[1])) == pattern)
        // Buffers that are not whole sectors (100 + 924 bytes): one 1024-byte transfer.
        let u = try request([.readable(BlockRig.header(P.typeIn, sector: 8)), .writable(100), .writable(924), .writable(1)])
        #expect(u.status == P.statusOK)
        #expect(try memory.read(100, at: GuestAddress(u.addresses[1])) + (try memory.read(924, at: GuestAddress(u.addresses[2]))) == Array(pattern[0..<1024]))
        #expect(image.largestBounceBuffer <= 1 << 20)
        #expect(interrupt.resetReasons.isEmpty)
    }
}
