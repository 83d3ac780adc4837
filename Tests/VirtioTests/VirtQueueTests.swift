import Memory
import Testing
@testable import Virtio

@Suite("VirtQueue: well-formed chains")
struct VirtQueueTests {
    @Test func directChainSplitsReadableAndWritable() throws {
        let m = QueueDriver.memory()
        var d = QueueDriver(memory: m)
        var q = d.deviceQueue()
        try q.validate(memory: m)
        let (head, addrs) = d.add([.readable([1, 2, 3]), .readable([4]), .writable(8)])
        let chain = try #require(try q.pop(memory: m))
        #expect(chain.head == head)
        #expect(chain.readable.map(\.length) == [3, 1])
        #expect(chain.writable == [GuestBuffer(address: GuestAddress(addrs[2]), length: 8)])
        var r = ChainReader(memory: m, buffers: chain.readable)
        #expect(try r.read(4) == [1, 2, 3, 4])
        #expect(try r.read(1) == nil)
        #expect(try q.pop(memory: m) == nil)
        try q.addUsed(memory: m, head: head, length: 5)
        #expect(d.takeUsed().map { [$0.id, $0.length] } == [[UInt32(head), 5]])
    }

    @Test func indirectChainIsFlattened() throws {
        let m = QueueDriver.memory()
        var d = QueueDriver(memory: m)
        var q = d.deviceQueue(features: VirtioFeature.ringIndirectDescriptors)
        d.add([.readable([9, 9]), .writable(4), .writable(1)], indirect: true)
        let chain = try #require(try q.pop(memory: m))
        #expect(chain.readableLength == 2)
        #expect(chain.writable.map(\.length) == [4, 1])
    }

    @Test func chainWriterSpansBuffersAndCountsBytes() throws {
        let m = QueueDriver.memory()
        var d = QueueDriver(memory: m)
        var q = d.deviceQueue()
        let (_, addrs) = d.add([.writable(3), .writable(5)])
        let chain = try #require(try q.pop(memory: m))
        var w = ChainWriter(memory: m, buffers: chain.writable)
        #expect(try w.write([1, 2, 3, 4, 5, 6]))
        #expect(w.written == 6)
        #expect(try !w.write([7, 8, 9]))   // does not fit: nothing written
        #expect(try m.read(3, at: GuestAddress(addrs[0])) == [1, 2, 3])
        #expect(try m.read(5, at: GuestAddress(addrs[1])) == [4, 5, 6, 0xEE, 0xEE])
    }

    @Test func indicesWrapAround16Bits() throws {
        let m = QueueDriver.memory()
        var d = QueueDriver(memory: m, size: 4)
        var q = d.deviceQueue()
        for i in 0..<70_000 {
            let (head, _) = d.add([.writable(1)])
            let chain = try #require(try q.pop(memory: m), "iteration \(i)")
            #expect(chain.head == head)
            try q.addUsed(memory: m, head: head, length: 1)
            #expect(d.takeUsed().count == 1)
        }
        #expect(q.nextAvailable == UInt16(70_000 % 65_536))
    }

    @Test func eventIndexSuppressesNotifications() throws {
        let m = QueueDriver.memory()
        var d = QueueDriver(memory: m)
        var q = d.deviceQueue(features: VirtioFeature.ringEventIndex)
        // First completion always notifies.
        d.add([.writable(1)])
        var c = try #require(try q.pop(memory: m))
        #expect(d.availEvent == 1) // "notify me when entry 1 is available"
        try q.addUsed(memory: m, head: c.head, length: 1)
        #expect(try q.shouldNotify(memory: m))
        // Driver asks for an interrupt only after used index 3 (used_event = 2).
        d.setUsedEvent(2)
        for expected in [false, true, false] {
            d.add([.writable(1)])
            c = try #require(try q.pop(memory: m))
            try q.addUsed(memory: m, head: c.head, length: 1)
            #expect(try q.shouldNotify(memory: m) == expected)
        }
    }

    @Test func noInterruptFlagWithoutEventIndex() throws {
        let m = QueueDriver.memory()
        var d = QueueDriver(memory: m)
        var q = d.deviceQueue()
        d.setAvailFlags(1)
        d.add([.writable(1)])
        let c = try #require(try q.pop(memory: m))
        try q.addUsed(memory: m, head: c.head, length: 0)
        #expect(try !q.shouldNotify(memory: m))
        d.setAvailFlags(0)
        #expect(try q.shouldNotify(memory: m))
    }

    @Test func zeroLengthBufferIsAnEmptyBuffer() throws {
        let m = QueueDriver.memory()
        var d = QueueDriver(memory: m)
        var q = d.deviceQueue()
        d.rawDescriptor(0, Descriptor(address: 0x30000, length: 0, flags: Descriptor.flagWrite))
        d.publish(0)
        let c = try #require(try q.pop(memory: m))
        #expect(c.writableLength == 0)
        var w = ChainWriter(memory: m, buffers: c.writable)
        #expect(try !w.write([1]))
    }
}

/// Guest-supplied rings and chains a buggy or hostile driver could produce. Each must be refused
/// with its own error, never crash, never touch memory outside guest RAM.
@Suite("VirtQueue: hostile guest corpus")
struct HostileQueueTests {
    let m = QueueDriver.memory(1)

    func pop(_ d: QueueDriver, features: UInt64 = VirtioFeature.ringIndirectDescriptors) throws(VirtQueueError) -> DescriptorChain? {
        var q = d.deviceQueue(features: features)
        return try q.pop(memory: m)
    }

    @Test func descriptorLoop() {
        var d = QueueDriver(memory: m, size: 8)
        d.rawDescriptor(0, Descriptor(address: 0x20000, length: 4, flags: Descriptor.flagNext, next: 1))
        d.rawDescriptor(1, Descriptor(address: 0x20000, length: 4, flags: Descriptor.flagNext, next: 0))
        d.publish(0)
        #expect(throws: VirtQueueError.chainTooLong(limit: 8)) { try pop(d) }
    }

    @Test func selfLoop() {
        var d = QueueDriver(memory: m, size: 256)
        d.rawDescriptor(5, Descriptor(address: 0x20000, length: 4, flags: Descriptor.flagNext, next: 5))
        d.publish(5)
        #expect(throws: VirtQueueError.chainTooLong(limit: 256)) { try pop(d) }
    }

    @Test func nextOutsideTable() {
        var d = QueueDriver(memory: m, size: 8)
        d.rawDescriptor(0, Descriptor(address: 0x20000, length: 4, flags: Descriptor.flagNext, next: 8))
        d.publish(0)
        #expect(throws: VirtQueueError.descriptorIndexOutOfRange(index: 8, size: 8)) { try pop(d) }
    }

    @Test func headOutsideTable() {
        var d = QueueDriver(memory: m, size: 8)
        d.publish(0xFFFF)
        #expect(throws: VirtQueueError.descriptorIndexOutOfRange(index: 0xFFFF, size: 8)) { try pop(d) }
    }

    @Test func bufferOutsideRAM() {
        var d = QueueDriver(memory: m)
        d.rawDescriptor(0, Descriptor(address: 0x10_0000, length: 1))   // just past 1 MiB of RAM
        d.publish(0)
        #expect(throws: VirtQueueError.bufferOutsideMemory(address: 0x10_0000, length: 1)) { try pop(d) }
    }

    @Test func bufferStraddlingTheEndOfRAM() {
        var d = QueueDriver(memory: m)
        d.rawDescriptor(0, Descriptor(address: 0xF_FFF0, length: 0x20))
        d.publish(0)
        #expect(throws: VirtQueueError.bufferOutsideMemory(address: 0xF_FFF0, length: 0x20)) { try pop(d) }
    }

    @Test func addressPlusLengthOverflows() {
        var d = QueueDriver(memory: m)
        d.rawDescriptor(0, Descriptor(address: UInt64.max - 3, length: 0xFFFF_FFFF, flags: Descriptor.flagWrite))
        d.publish(0)
        #expect(throws: VirtQueueError.bufferOutsideMemory(address: UInt64.max - 3, length: 0xFFFF_FFFF)) { try pop(d) }
    }

    @Test func hugeBuffer() {
        var d = QueueDriver(memory: m)
        d.rawDescriptor(0, Descriptor(address: 0, length: UInt32.max, flags: Descriptor.flagWrite))
        d.publish(0)
        #expect(throws: VirtQueueError.bufferOutsideMemory(address: 0, length: UInt32.max)) { try pop(d) }
    }

    @Test func indirectTablePointingAtItself() {
        var d = QueueDriver(memory: m)
        let t: UInt64 = 0x30000
        // The table's only entry is an indirect descriptor naming the table again.
        d.rawDescriptor(0, at: t, Descriptor(address: t, length: 16, flags: Descriptor.flagIndirect))
        d.rawDescriptor(0, Descriptor(address: t, length: 16, flags: Descriptor.flagIndirect))
        d.publish(0)
        #expect(throws: VirtQueueError.nestedIndirect) { try pop(d) }
    }

    @Test func loopInsideIndirectTable() {
        var d = QueueDriver(memory: m)
        let t: UInt64 = 0x30000
        d.rawDescriptor(0, at: t, Descriptor(address: 0x20000, length: 4, flags: Descriptor.flagNext, next: 1))
        d.rawDescriptor(1, at: t, Descriptor(address: 0x20000, length: 4, flags: Descriptor.flagNext, next: 0))
        d.rawDescriptor(0, Descriptor(address: t, length: 32, flags: Descriptor.flagIndirect))
        d.publish(0)
        #expect(throws: VirtQueueError.chainTooLong(limit: 2)) { try pop(d) }
    }

    @Test func indirectNextOutsideTable() {
        var d = QueueDriver(memory: m)
        let t: UInt64 = 0x30000
        d.rawDescriptor(0, at: t, Descriptor(address: 0x20000, length: 4, flags: Descriptor.flagNext, next: 2))
        d.rawDescriptor(0, Descriptor(address: t, length: 32, flags: Descriptor.flagIndirect))
        d.publish(0)
        #expect(throws: VirtQueueError.descriptorIndexOutOfRange(index: 2, size: 2)) { try pop(d) }
    }

    @Test func indirectTableOutsideRAM() {
        var d = QueueDriver(memory: m)
        d.rawDescriptor(0, Descriptor(address: 0xFFFF0, length: 64, flags: Descriptor.flagIndirect))
        d.publish(0)
        #expect(throws: VirtQueueError.ringOutsideMemory(ring: "indirect table", address: 0xFFFF0, length: 64)) { try pop(d) }
    }

    @Test(arguments: [UInt32(0), 8, 17])
    func indirectTableBadLength(_ length: UInt32) {
        var d = QueueDriver(memory: m)
        d.rawDescriptor(0, Descriptor(address: 0x30000, length: length, flags: Descriptor.flagIndirect))
        d.publish(0)
        #expect(throws: VirtQueueError.indirectTableLength(length)) { try pop(d) }
    }

    @Test func indirectWithNextFlag() {
        var d = QueueDriver(memory: m)
        d.rawDescriptor(0, Descriptor(address: 0x30000, length: 16, flags: Descriptor.flagIndirect | Descriptor.flagNext, next: 1))
        d.publish(0)
        #expect(throws: VirtQueueError.indirectWithNext) { try pop(d) }
    }

    @Test func indirectNotNegotiated() {
        var d = QueueDriver(memory: m)
        d.rawDescriptor(0, Descriptor(address: 0x30000, length: 16, flags: Descriptor.flagIndirect))
        d.publish(0)
        #expect(throws: VirtQueueError.indirectNotNegotiated) { try pop(d, features: 0) }
    }

    @Test func readableAfterWritable() {
        var d = QueueDriver(memory: m)
        d.rawDescriptor(0, Descriptor(address: 0x20000, length: 4, flags: Descriptor.flagWrite | Descriptor.flagNext, next: 1))
        d.rawDescriptor(1, Descriptor(address: 0x20010, length: 4))
        d.publish(0)
        #expect(throws: VirtQueueError.readableAfterWritable) { try pop(d) }
    }

    @Test func availIndexRunsAhead() {
        let d = QueueDriver(memory: m, size: 8)
        try! m.writeInteger(UInt16(9), at: GuestAddress(d.avail + 2))
        #expect(throws: VirtQueueError.availIndexJump(availIndex: 9, nextAvail: 0, size: 8)) { try pop(d) }
    }

    @Test func ringsMustBeInsideRAMAlignedAndSized() {
        var q = VirtQueue(maxSize: 256)
        q.ready = true
        q.size = 16
        q.descriptorTable = GuestAddress(0x1000); q.availableRing = GuestAddress(0x2000); q.usedRing = GuestAddress(0x3000)
        #expect(throws: Never.self) { try q.validate(memory: m) }
        var bad = q; bad.size = 12
        #expect(throws: VirtQueueError.invalidSize(12, max: 256)) { try bad.validate(memory: m) }
        bad = q; bad.size = 512
        #expect(throws: VirtQueueError.invalidSize(512, max: 256)) { try bad.validate(memory: m) }
        bad = q; bad.usedRing = GuestAddress(0x3002)
        #expect(throws: VirtQueueError.misaligned(ring: "used ring", address: 0x3002)) { try bad.validate(memory: m) }
        bad = q; bad.descriptorTable = GuestAddress(0xFFF80)
        #expect(throws: VirtQueueError.ringOutsideMemory(ring: "descriptor table", address: 0xFFF80, length: 256)) { try bad.validate(memory: m) }
        bad = q; bad.availableRing = GuestAddress(UInt64.max - 1)
        #expect(throws: VirtQueueError.self) { try bad.validate(memory: m) }
        bad = q; bad.ready = false
        #expect(throws: VirtQueueError.notReady) { try bad.validate(memory: m) }
    }
}
