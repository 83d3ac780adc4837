import Memory

/// A position in a list of guest buffers, consumed front to back: what reading a chain's
/// readable part and writing its writable part have in common.
struct BufferCursor {
    var buffers: ArraySlice<GuestBuffer>
    var offset: UInt32 = 0

    init(_ buffers: [GuestBuffer]) { self.buffers = buffers[...] }

    var remaining: UInt64 {
        buffers.reduce(0) { $0 + UInt64($1.length) } - UInt64(offset)
    }

    /// Visits the next `count` bytes as (address, length) segments of guest RAM and consumes
    /// them; returns how many bytes were visited (fewer if the buffers run out).
    @discardableResult
    mutating func consume(_ count: Int, _ body: (GuestAddress, Int) throws -> Void) rethrows -> UInt64 {
        var left = UInt64(count)
        var visited: UInt64 = 0
        while left > 0, let b = buffers.first {
            let available = UInt64(b.length - offset)
            let n = min(available, left)
            if n > 0 { try body(GuestAddress(b.address.raw + UInt64(offset)), Int(n)) }
            left -= n
            visited += n
            if n == available { buffers.removeFirst(); offset = 0 } else { offset += UInt32(n) }
        }
        return visited
    }
}

/// Reads the device-readable part of a chain as one byte stream, across buffer boundaries.
public struct ChainReader {
    let memory: GuestMemory
    var cursor: BufferCursor

    public init(memory: GuestMemory, buffers: [GuestBuffer]) {
        self.memory = memory
        cursor = BufferCursor(buffers)
    }

    public var remaining: UInt64 { cursor.remaining }

    /// Reads exactly `count` bytes, or nil if the chain holds fewer.
    public mutating func read(_ count: Int) throws -> [UInt8]? {
        guard UInt64(count) <= remaining else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(count)
        let memory = self.memory
        try forEachSegment(count) { address, length in
            out += try memory.read(length, at: address)
        }
        return out
    }

    /// Visits the next `count` bytes as (address, length) segments of guest RAM and consumes them.
    public mutating func forEachSegment(_ count: Int, _ body: (GuestAddress, Int) throws -> Void) throws {
        try cursor.consume(count, body)
    }

    public mutating func readInteger<T: FixedWidthInteger>(_: T.Type = T.self) throws -> T? {
        guard let bytes = try read(MemoryLayout<T>.size) else { return nil }
        var v: T = 0
        for (i, b) in bytes.enumerated() { v |= T(b) << (8 * i) }
        return v
    }
}

/// Writes into the device-writable part of a chain as one byte stream.
public struct ChainWriter {
    let memory: GuestMemory
    var cursor: BufferCursor
    /// Bytes written so far: the length reported in the used ring.
    public private(set) var written: UInt32 = 0

    public init(memory: GuestMemory, buffers: [GuestBuffer]) {
        self.memory = memory
        cursor = BufferCursor(buffers)
    }

    public var remaining: UInt64 { cursor.remaining }

    /// Visits the next `count` writable bytes as (address, length) segments and consumes them.
    public mutating func forEachSegment(_ count: Int, _ body: (GuestAddress, Int) throws -> Void) throws {
        written &+= UInt32(truncatingIfNeeded: try cursor.consume(count, body))
    }

    /// Writes all of `bytes`, or returns false (writing nothing) if they do not fit.
    public mutating func write(_ bytes: [UInt8]) throws -> Bool {
        guard UInt64(bytes.count) <= remaining else { return false }
        var position = 0
        let memory = self.memory
        try forEachSegment(bytes.count) { address, length in
            try memory.write(bytes[position..<position + length], at: address)
            position += length
        }
        return true
    }
}
