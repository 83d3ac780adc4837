import Memory
@testable import Virtio

/// A test-side virtio driver for one split queue over real (anonymous) guest memory, in the
/// spirit of rust-vmm's virtio-queue mock: it lays out the rings, writes descriptors exactly as a
/// guest would (or as a hostile guest would, through `rawDescriptor`) and reads the used ring.
struct QueueDriver {
    let memory: GuestMemory
    let size: UInt16
    let table: UInt64
    let avail: UInt64
    let used: UInt64
    /// Guest memory for buffers and indirect tables, handed out upward from here.
    var heap: UInt64
    var nextDescriptor: UInt16 = 0
    var availIndex: UInt16 = 0
    var usedSeen: UInt16 = 0

    static func memory(_ mib: UInt64 = 4) -> GuestMemory {
        try! GuestMemory(regions: [try! GuestMemoryRegion(start: GuestAddress(0), size: mib << 20)])
    }

    init(memory: GuestMemory, size: UInt16 = 16, base: UInt64 = 0x10000) {
        self.memory = memory
        self.size = size
        table = base
        avail = base + 0x4000
        used = base + 0x8000
        heap = base + 0x10000
    }

    /// The device-side queue as a transport would configure it.
    func deviceQueue(features: UInt64 = 0) -> VirtQueue {
        var q = VirtQueue(maxSize: 256)
        q.size = size
        q.descriptorTable = GuestAddress(table)
        q.availableRing = GuestAddress(avail)
        q.usedRing = GuestAddress(used)
        q.ready = true
        q.setFeatures(features)
        return q
    }

    mutating func alloc(_ bytes: Int, align: UInt64 = 16) -> UInt64 {
        heap = (heap + align - 1) & ~(align - 1)
        defer { heap += UInt64(max(bytes, 1)) }
        return heap
    }

    func rawDescriptor(_ index: UInt16, at tableBase: UInt64? = nil, _ d: Descriptor) {
        let a = GuestAddress((tableBase ?? table) + UInt64(index) * 16)
        try! memory.writeInteger(d.address, at: a)
        try! memory.writeInteger(d.length, at: GuestAddress(a.raw + 8))
        try! memory.writeInteger(d.flags, at: GuestAddress(a.raw + 12))
        try! memory.writeInteger(d.next, at: GuestAddress(a.raw + 14))
    }

    /// Publishes `head` in the avail ring and bumps avail.idx.
    mutating func publish(_ head: UInt16) {
        try! memory.writeInteger(head, at: GuestAddress(avail + 4 + 2 * UInt64(availIndex % size)))
        availIndex &+= 1
        try! memory.writeInteger(availIndex, at: GuestAddress(avail + 2))
    }

    enum Buffer {
        case readable([UInt8])
        case writable(Int)
    }

    /// Adds a well-formed chain (direct, or through one indirect table) and publishes it.
    /// Returns the head index and the guest addresses of the buffers, in order.
    @discardableResult
    mutating func add(_ buffers: [Buffer], indirect: Bool = false) -> (head: UInt16, addresses: [UInt64]) {
        var descriptors: [Descriptor] = []
        var addresses: [UInt64] = []
        for b in buffers {
            switch b {
            case let .readable(bytes):
                let a = alloc(bytes.count)
                try! memory.write(bytes, at: GuestAddress(a))
                descriptors.append(Descriptor(address: a, length: UInt32(bytes.count)))
                addresses.append(a)
            case let .writable(n):
                let a = alloc(n)
                try! memory.fill(0xEE, count: n, at: GuestAddress(a))
                descriptors.append(Descriptor(address: a, length: UInt32(n), flags: Descriptor.flagWrite))
                addresses.append(a)
            }
        }
        let head = nextDescriptor
        if indirect {
            let t = alloc(16 * descriptors.count)
            for (i, var d) in descriptors.enumerated() {
                if i + 1 < descriptors.count { d.flags |= Descriptor.flagNext; d.next = UInt16(i + 1) }
                rawDescriptor(UInt16(i), at: t, d)
            }
            rawDescriptor(head, Descriptor(address: t, length: UInt32(16 * descriptors.count), flags: Descriptor.flagIndirect))
            nextDescriptor = (nextDescriptor + 1) % size
        } else {
            for (i, var d) in descriptors.enumerated() {
                let index = (head + UInt16(i)) % size
                if i + 1 < descriptors.count { d.flags |= Descriptor.flagNext; d.next = (index + 1) % size }
                rawDescriptor(index, d)
            }
            nextDescriptor = (head + UInt16(descriptors.count)) % size
        }
        publish(head)
        return (head, addresses)
    }

    var usedIndex: UInt16 { try! memory.readInteger(UInt16.self, at: GuestAddress(used + 2)) }

    /// Used elements the device added since the last call.
    mutating func takeUsed() -> [(id: UInt32, length: UInt32)] {
        var out: [(UInt32, UInt32)] = []
        while usedSeen != usedIndex {
            let e = used + 4 + 8 * UInt64(usedSeen % size)
            out.append((try! memory.readInteger(UInt32.self, at: GuestAddress(e)), try! memory.readInteger(UInt32.self, at: GuestAddress(e + 4))))
            usedSeen &+= 1
        }
        return out
    }

    func setUsedEvent(_ v: UInt16) { try! memory.writeInteger(v, at: GuestAddress(avail + 4 + 2 * UInt64(size))) }
    var availEvent: UInt16 { try! memory.readInteger(UInt16.self, at: GuestAddress(used + 4 + 8 * UInt64(size))) }
    func setAvailFlags(_ v: UInt16) { try! memory.writeInteger(v, at: GuestAddress(avail)) }
}

/// Records what a device asked of its transport.
final class RecordingInterrupt: VirtioInterrupt, @unchecked Sendable {
    var queues: [Int] = []
    var configChanges = 0
    var resetReasons: [String] = []
    func signalUsedQueue(_ queue: Int) { queues.append(queue) }
    func signalConfigChange() { configChanges += 1 }
    func deviceNeedsReset(reason: String) { resetReasons.append(reason) }
}
