import Memory

/// Reads the device-readable part of a chain as one byte stream, across buffer boundaries.
public struct ChainReader {
    let memory: GuestMemory
    var buffers: ArraySlice<GuestBuffer>
    var offset: UInt32 = 0

    public init(memory: GuestMemory, buffers: [GuestBuffer]) {
        self.memory = memory
        self.buffers = buffers[...]
    }

    public var remaining: UInt64 {
        buffers.reduce(0) { $0 + UInt64($1.length) } - UInt64(offset)
    }

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
        var left = UInt64(count)
        while left > 0, let b = buffers.first {
            let available = UInt64(b.length - offset)
            let n = min(available, left)
            if n > 0 { try body(GuestAddress(b.address.raw + UInt64(offset)), Int(n)) }
            left -= n
            if n == available { buffers.removeFirst(); offset = 0 } else { offset += UInt32(n) }
        }
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
    var buffers: ArraySlice<GuestBuffer>
    var offset: UInt32 = 0
    /// Bytes written so far: the length reported in the used ring.
    public private(set) var written: UInt32 = 0

    public init(memory: GuestMemory, buffers: [GuestBuffer]) {
        self.memory = memory
        self.buffers = buffers[...]
    }

    public var remaining: UInt64 {
        buffers.reduce(0) { $0 + UInt64($1.length) } - UInt64(offset)
    }

    /// Visits the next `count` writable bytes as (address, length) segments and consumes them.
    public mutating func forEachSegment(_ count: Int, _ body: (GuestAddress, Int) throws -> Void) throws {
        var left = UInt64(count)
        while left > 0, let b = buffers.first {
            let available = UInt64(b.length - offset)
            let n = min(available, left)
            if n > 0 { try body(GuestAddress(b.address.raw + UInt64(offset)), Int(n)) }
            left -= n
            written &+= UInt32(n)
            if n == available { buffers.removeFirst(); offset = 0 } else { offset += UInt32(n) }
        }
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
