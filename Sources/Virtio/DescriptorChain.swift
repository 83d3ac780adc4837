import Memory

/// One split-ring descriptor as the guest wrote it (virtio 1.x 2.7.5).
public struct Descriptor: Equatable, Sendable {
    public var address: UInt64
    public var length: UInt32
    public var flags: UInt16
    public var next: UInt16

    public static let size: UInt64 = 16
    public static let flagNext: UInt16 = 1
    public static let flagWrite: UInt16 = 2
    public static let flagIndirect: UInt16 = 4

    public init(address: UInt64, length: UInt32, flags: UInt16 = 0, next: UInt16 = 0) {
        self.address = address; self.length = length; self.flags = flags; self.next = next
    }

    public var hasNext: Bool { flags & Self.flagNext != 0 }
    public var isDeviceWritable: Bool { flags & Self.flagWrite != 0 }
    public var isIndirect: Bool { flags & Self.flagIndirect != 0 }

    static func read(from memory: GuestMemory, at address: GuestAddress) throws -> Descriptor {
        try memory.withUnsafeBytes(at: address, count: 16) { raw in
            Descriptor(address: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 0, as: UInt64.self)),
                       length: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 8, as: UInt32.self)),
                       flags: UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 12, as: UInt16.self)),
                       next: UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 14, as: UInt16.self)))
        }
    }
}

/// A guest-supplied value the device refuses. Each case says what was wrong, so a log line
/// pinpoints a buggy or hostile driver; none of them can crash the VMM.
public enum VirtQueueError: Error, Equatable, CustomStringConvertible {
    case notReady
    case invalidSize(UInt16, max: UInt16)
    case misaligned(ring: String, address: UInt64)
    case ringOutsideMemory(ring: String, address: UInt64, length: UInt64)
    /// avail.idx moved more than the queue size past the last entry the device consumed.
    case availIndexJump(availIndex: UInt16, nextAvail: UInt16, size: UInt16)
    case descriptorIndexOutOfRange(index: UInt16, size: UInt16)
    /// More descriptors than the table holds: the chain loops.
    case chainTooLong(limit: Int)
    case bufferOutsideMemory(address: UInt64, length: UInt32)
    case nestedIndirect
    case indirectWithNext
    case indirectTableLength(UInt32)
    case indirectNotNegotiated
    case readableAfterWritable

    public var description: String {
        func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }
        switch self {
        case .notReady: return "queue is not ready"
        case let .invalidSize(s, m): return "queue size \(s) is not a power of two in 1...\(m)"
        case let .misaligned(r, a): return "\(r) at \(hex(a)) is misaligned"
        case let .ringOutsideMemory(r, a, l): return "\(r) at \(hex(a))+\(hex(l)) is outside guest RAM"
        case let .availIndexJump(a, n, s): return "avail.idx \(a) is more than the queue size \(s) ahead of \(n)"
        case let .descriptorIndexOutOfRange(i, s): return "descriptor index \(i) is outside the table of \(s)"
        case let .chainTooLong(l): return "descriptor chain longer than \(l) entries (a loop)"
        case let .bufferOutsideMemory(a, l): return "buffer \(hex(a))+\(hex(UInt64(l))) is outside guest RAM"
        case .nestedIndirect: return "indirect descriptor inside an indirect table"
        case .indirectWithNext: return "indirect descriptor with the NEXT flag"
        case let .indirectTableLength(l): return "indirect table length \(l) is not a non-zero multiple of 16"
        case .indirectNotNegotiated: return "indirect descriptor without VIRTIO_F_INDIRECT_DESC"
        case .readableAfterWritable: return "device-readable buffer after a device-writable one"
        }
    }
}

/// A buffer of guest memory the device may read (driver → device) or write (device → driver).
public struct GuestBuffer: Equatable, Sendable {
    public var address: GuestAddress
    public var length: UInt32
}

/// A resolved, validated descriptor chain: direct and indirect descriptors flattened into the
/// device-readable buffers followed by the device-writable ones. Every buffer lies inside guest
/// RAM, so device code only has to respect the lengths.
public struct DescriptorChain: Equatable, Sendable {
    /// The head index, returned to the driver in the used ring.
    public let head: UInt16
    public let readable: [GuestBuffer]
    public let writable: [GuestBuffer]

    public var readableLength: UInt64 { readable.reduce(0) { $0 + UInt64($1.length) } }
    public var writableLength: UInt64 { writable.reduce(0) { $0 + UInt64($1.length) } }

    /// Walks the chain starting at `head` in the table at `table` of `size` entries.
    static func resolve(memory: GuestMemory, table: GuestAddress, size: UInt16, head: UInt16,
                        indirectAllowed: Bool) throws(VirtQueueError) -> DescriptorChain {
        var readable: [GuestBuffer] = []
        var writable: [GuestBuffer] = []

        func take(_ d: Descriptor) throws(VirtQueueError) {
            guard memory.contains(GuestAddress(d.address), length: UInt64(d.length)) else {
                throw .bufferOutsideMemory(address: d.address, length: d.length)
            }
            let buffer = GuestBuffer(address: GuestAddress(d.address), length: d.length)
            if d.isDeviceWritable { writable.append(buffer) }
            else {
                guard writable.isEmpty else { throw .readableAfterWritable }
                readable.append(buffer)
            }
        }

        func load(_ table: GuestAddress, _ index: UInt16) throws(VirtQueueError) -> Descriptor {
            let address = GuestAddress(table.raw + UInt64(index) * Descriptor.size)
            do { return try Descriptor.read(from: memory, at: address) }
            catch { throw .ringOutsideMemory(ring: "descriptor table", address: address.raw, length: Descriptor.size) }
        }

        guard head < size else { throw .descriptorIndexOutOfRange(index: head, size: size) }
        var index = head
        var visited = 0
        while true {
            visited += 1
            guard visited <= Int(size) else { throw .chainTooLong(limit: Int(size)) }
            let d = try load(table, index)
            if d.isIndirect {
                guard indirectAllowed else { throw .indirectNotNegotiated }
                guard !d.hasNext else { throw .indirectWithNext }
                guard d.length > 0, d.length % 16 == 0 else { throw .indirectTableLength(d.length) }
                guard memory.contains(GuestAddress(d.address), length: UInt64(d.length)) else {
                    throw .ringOutsideMemory(ring: "indirect table", address: d.address, length: UInt64(d.length))
                }
                // An indirect table is a chain of its own, indexed from 0. A valid chain visits each
                // entry at most once, which bounds the walk at the table's length.
                let entries = d.length / 16
                guard entries <= UInt32(UInt16.max) else { throw .indirectTableLength(d.length) }
                var inner: UInt16 = 0
                var innerVisited: UInt32 = 0
                while true {
                    innerVisited += 1
                    guard innerVisited <= entries else { throw .chainTooLong(limit: Int(entries)) }
                    let e = try load(GuestAddress(d.address), inner)
                    guard !e.isIndirect else { throw .nestedIndirect }
                    try take(e)
                    guard e.hasNext else { break }
                    guard UInt32(e.next) < entries else { throw .descriptorIndexOutOfRange(index: e.next, size: UInt16(entries)) }
                    inner = e.next
                }
                break
            }
            try take(d)
            guard d.hasNext else { break }
            guard d.next < size else { throw .descriptorIndexOutOfRange(index: d.next, size: size) }
            index = d.next
        }
        return DescriptorChain(head: head, readable: readable, writable: writable)
    }
}
