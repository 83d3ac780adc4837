import Memory
import Synchronization

/// The device side of one split virtqueue (virtio 1.x 2.7): the three areas the driver set up,
/// and where the device is in them. It knows nothing of PCI; a transport fills in the addresses.
/// Not thread-safe by itself: the device that owns it serialises access.
public struct VirtQueue: Sendable {
    public let maxSize: UInt16
    public var size: UInt16
    public var ready = false
    public var descriptorTable = GuestAddress(0)
    public var availableRing = GuestAddress(0)
    public var usedRing = GuestAddress(0)
    /// VIRTIO_F_EVENT_IDX negotiated: notifications in both directions are suppressed by index.
    public var eventIndex = false
    /// VIRTIO_F_INDIRECT_DESC negotiated.
    public var indirectDescriptors = false

    /// The next avail ring entry the device will consume.
    public private(set) var nextAvailable: UInt16 = 0
    /// The next used ring entry the device will fill (mirrors used.idx).
    public private(set) var nextUsed: UInt16 = 0
    /// used.idx when the driver was last notified (EVENT_IDX), nil before the first notification.
    private var lastSignalledUsed: UInt16? = nil

    public init(maxSize: UInt16) {
        precondition(maxSize > 0 && maxSize & (maxSize - 1) == 0, "queue sizes are powers of two")
        self.maxSize = maxSize
        self.size = maxSize
    }

    /// Back to the state after device reset (addresses and size as after power-on).
    public mutating func reset() { self = VirtQueue(maxSize: maxSize) }

    /// A queue as saved in a snapshot: what the driver configured and where the device is.
    public struct SavedState: Codable, Sendable, Equatable {
        public var size: UInt16
        public var ready: Bool
        public var descriptorTable: UInt64
        public var availableRing: UInt64
        public var usedRing: UInt64
        public var eventIndex: Bool
        public var indirectDescriptors: Bool
        public var nextAvailable: UInt16
        public var nextUsed: UInt16
        public var lastSignalledUsed: UInt16?

        public init(size: UInt16, ready: Bool, descriptorTable: UInt64, availableRing: UInt64, usedRing: UInt64,
                    eventIndex: Bool = false, indirectDescriptors: Bool = false, nextAvailable: UInt16 = 0,
                    nextUsed: UInt16 = 0, lastSignalledUsed: UInt16? = nil) {
            self.size = size; self.ready = ready
            self.descriptorTable = descriptorTable; self.availableRing = availableRing; self.usedRing = usedRing
            self.eventIndex = eventIndex; self.indirectDescriptors = indirectDescriptors
            self.nextAvailable = nextAvailable; self.nextUsed = nextUsed; self.lastSignalledUsed = lastSignalledUsed
        }
    }

    public func saveState() -> SavedState {
        SavedState(size: size, ready: ready, descriptorTable: descriptorTable.raw, availableRing: availableRing.raw,
                   usedRing: usedRing.raw, eventIndex: eventIndex, indirectDescriptors: indirectDescriptors,
                   nextAvailable: nextAvailable, nextUsed: nextUsed, lastSignalledUsed: lastSignalledUsed)
    }

    /// A queue from a snapshot, indices included, for a device whose queues hold at most `maxSize`
    /// entries. The size must be one the device could have run with (a power of two up to
    /// `maxSize`): a snapshot file may be corrupt or hostile. Where the rings lie is checked
    /// against guest memory by `validate(memory:)`, as for a queue the driver set up.
    public init(restoring saved: SavedState, maxSize: UInt16) throws(VirtQueueError) {
        self.init(maxSize: maxSize)
        guard saved.size > 0, saved.size <= maxSize, saved.size & (saved.size - 1) == 0 else {
            throw .invalidSize(saved.size, max: maxSize)
        }
        size = saved.size
        ready = saved.ready
        descriptorTable = GuestAddress(saved.descriptorTable)
        availableRing = GuestAddress(saved.availableRing)
        usedRing = GuestAddress(saved.usedRing)
        eventIndex = saved.eventIndex
        indirectDescriptors = saved.indirectDescriptors
        nextAvailable = saved.nextAvailable
        nextUsed = saved.nextUsed
        lastSignalledUsed = saved.lastSignalledUsed
    }

    /// Makes the chain the last `pop` returned available again, for a device that stops before
    /// using it (the RX thread's buffer waiting for a frame). Sound because the driver cannot
    /// rewrite that avail slot meanwhile: the chain is still outstanding, so avail.idx stays less
    /// than a queue size past it, and the slot is only reused one queue size later.
    public mutating func rewindLastPop() { nextAvailable &-= 1 }

    /// Applies the negotiated ring features.
    public mutating func setFeatures(_ features: UInt64) {
        eventIndex = features & VirtioFeature.ringEventIndex != 0
        indirectDescriptors = features & VirtioFeature.ringIndirectDescriptors != 0
    }

    var availableRingSize: UInt64 { 6 + 2 * UInt64(size) }
    var usedRingSize: UInt64 { 6 + 8 * UInt64(size) }

    /// Checks what the driver configured before the device uses it: size, alignment (2.7 table),
    /// and that all three areas lie in guest RAM.
    public func validate(memory: GuestMemory) throws(VirtQueueError) {
        guard ready else { throw .notReady }
        guard size > 0, size <= maxSize, size & (size - 1) == 0 else { throw .invalidSize(size, max: maxSize) }
        let areas: [(String, GuestAddress, UInt64, UInt64)] = [
            ("descriptor table", descriptorTable, 16 * UInt64(size), 16),
            ("available ring", availableRing, availableRingSize, 2),
            ("used ring", usedRing, usedRingSize, 4),
        ]
        for (name, address, length, alignment) in areas {
            guard address.raw % alignment == 0 else { throw .misaligned(ring: name, address: address.raw) }
            guard memory.contains(address, length: length) else {
                throw .ringOutsideMemory(ring: name, address: address.raw, length: length)
            }
        }
    }

    private func load16(_ memory: GuestMemory, _ address: GuestAddress, _ offset: UInt64) throws(VirtQueueError) -> UInt16 {
        do { return try memory.readInteger(UInt16.self, at: GuestAddress(address.raw + offset)) }
        catch { throw .ringOutsideMemory(ring: "ring", address: address.raw + offset, length: 2) }
    }

    private func store(_ memory: GuestMemory, _ value: some FixedWidthInteger, _ address: GuestAddress, _ offset: UInt64) throws(VirtQueueError) {
        do { try memory.writeInteger(value, at: GuestAddress(address.raw + offset)) }
        catch { throw .ringOutsideMemory(ring: "ring", address: address.raw + offset, length: UInt64(MemoryLayout.size(ofValue: value))) }
    }

    /// How many entries the driver has made available that the device has not consumed.
    public func pendingCount(memory: GuestMemory) throws(VirtQueueError) -> UInt16 {
        let availIdx = try load16(memory, availableRing, 2)
        let pending = availIdx &- nextAvailable
        guard pending <= size else { throw .availIndexJump(availIndex: availIdx, nextAvail: nextAvailable, size: size) }
        return pending
    }

    /// The next available chain, resolved and validated, or nil if the driver has not made one
    /// available. A bad chain throws; the caller decides between an error status and NEEDS_RESET.
    public mutating func pop(memory: GuestMemory) throws(VirtQueueError) -> DescriptorChain? {
        guard ready else { throw .notReady }
        guard try pendingCount(memory: memory) > 0 else { return nil }
        // Read the ring entry only after seeing avail.idx (pairs with the driver's write barrier).
        atomicMemoryFence(ordering: .acquiring)
        let slot = UInt64(nextAvailable % size)
        let head = try load16(memory, availableRing, 4 + 2 * slot)
        nextAvailable &+= 1
        if eventIndex {
            // avail_event: "notify me when you make entry nextAvailable available".
            try store(memory, nextAvailable, usedRing, 4 + 8 * UInt64(size))
        }
        return try DescriptorChain.resolve(memory: memory, table: descriptorTable, size: size, head: head,
                                           indirectAllowed: indirectDescriptors)
    }

    /// Returns a chain to the driver with `length` bytes written into its writable buffers.
    public mutating func addUsed(memory: GuestMemory, head: UInt16, length: UInt32) throws(VirtQueueError) {
        let slot = UInt64(nextUsed % size)
        try store(memory, UInt32(head), usedRing, 4 + 8 * slot)
        try store(memory, length, usedRing, 8 + 8 * slot)
        nextUsed &+= 1
        // The element must be visible before the index that publishes it.
        atomicMemoryFence(ordering: .releasing)
        try store(memory, nextUsed, usedRing, 2)
    }

    /// Whether the driver wants an interrupt for what was added since the last notification.
    /// Call after a batch of `addUsed`; it records the notification when it answers true.
    public mutating func shouldNotify(memory: GuestMemory) throws(VirtQueueError) -> Bool {
        // used.idx must be visible before reading the driver's suppression fields (store → load).
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        if eventIndex {
            let usedEvent = try load16(memory, availableRing, 4 + 2 * UInt64(size))
            let old = lastSignalledUsed
            lastSignalledUsed = nextUsed
            guard let old else { return true }
            // vring_need_event(): notify if used_event lies in (old, new].
            return nextUsed &- usedEvent &- 1 < nextUsed &- old
        }
        let flags = try load16(memory, availableRing, 0)
        return flags & 1 == 0 // VIRTQ_AVAIL_F_NO_INTERRUPT
    }

    /// Puts an unusable chain back as used with length 0, so the driver can reclaim it. Used for
    /// requests the device rejects but whose head is known.
    public mutating func discard(memory: GuestMemory, head: UInt16) throws(VirtQueueError) {
        try addUsed(memory: memory, head: head, length: 0)
    }
}
