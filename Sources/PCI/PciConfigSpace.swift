/// One base address register: what the device decodes and where the guest placed it.
public struct PciBar: Codable, Equatable, Sendable {
    public enum Kind: String, Codable, Equatable, Sendable { case memory32, memory64, io }
    public var index: Int
    public var kind: Kind
    /// Power of two, at least 16 bytes (memory) or 4 bytes (I/O).
    public var size: UInt64
    public var prefetchable: Bool
    public var address: UInt64 = 0

    public init(index: Int, kind: Kind, size: UInt64, prefetchable: Bool = false) {
        precondition(size >= 16 && size & (size - 1) == 0)
        self.index = index; self.kind = kind; self.size = size; self.prefetchable = prefetchable
    }

    /// The low bits of the BAR register that describe it (read-only).
    var typeBits: UInt32 {
        switch kind {
        case .io: 1
        case .memory32: prefetchable ? 0x8 : 0
        case .memory64: (prefetchable ? 0x8 : 0) | 0x4
        }
    }
}

/// Standard configuration-space register offsets (PCI Local Bus 3.0, type 0 header).
public enum PciRegister {
    public static let vendorID = 0x00
    public static let deviceID = 0x02
    public static let command = 0x04
    public static let status = 0x06
    public static let revision = 0x08
    public static let classCode = 0x09
    public static let headerType = 0x0E
    public static let bar0 = 0x10
    public static let subsystemVendorID = 0x2C
    public static let subsystemID = 0x2E
    public static let capabilitiesPointer = 0x34
    public static let interruptLine = 0x3C
    public static let interruptPin = 0x3D

    public static let commandIO: UInt16 = 1 << 0
    public static let commandMemory: UInt16 = 1 << 1
    public static let commandBusMaster: UInt16 = 1 << 2
    public static let commandINTxDisable: UInt16 = 1 << 10
    public static let statusCapabilities: UInt16 = 1 << 4
    public static let statusInterrupt: UInt16 = 1 << 3
}

/// The 256-byte configuration space of one PCI function: identity, BARs, capability list, and a
/// per-byte write mask so the guest can only change what real hardware lets it change.
/// Codable for snapshots: a decoded one is only checked and applied by `restore(from:)`.
public struct PciConfigSpace: Codable, Equatable, Sendable {
    public private(set) var bytes = [UInt8](repeating: 0, count: 256)
    private var writable = [UInt8](repeating: 0, count: 256)
    public private(set) var bars: [PciBar] = []
    /// Where the last capability's "next" pointer sits, to append the next one.
    private var lastCapabilityNext: Int? = nil
    private var nextCapabilityOffset = 0x40

    public struct Identity: Sendable {
        public var vendorID: UInt16, deviceID: UInt16
        public var classCode: UInt32 // class << 16 | subclass << 8 | prog-if
        public var revision: UInt8
        public var subsystemVendorID: UInt16, subsystemID: UInt16
        public init(vendorID: UInt16, deviceID: UInt16, classCode: UInt32, revision: UInt8 = 0,
                    subsystemVendorID: UInt16 = 0, subsystemID: UInt16 = 0) {
            self.vendorID = vendorID; self.deviceID = deviceID; self.classCode = classCode; self.revision = revision
            self.subsystemVendorID = subsystemVendorID; self.subsystemID = subsystemID
        }
    }

    public init(identity: Identity, interruptPin: UInt8 = 0) {
        set16(identity.vendorID, at: PciRegister.vendorID)
        set16(identity.deviceID, at: PciRegister.deviceID)
        bytes[PciRegister.revision] = identity.revision
        bytes[0x09] = UInt8(identity.classCode & 0xFF)
        bytes[0x0A] = UInt8((identity.classCode >> 8) & 0xFF)
        bytes[0x0B] = UInt8((identity.classCode >> 16) & 0xFF)
        set16(identity.subsystemVendorID, at: PciRegister.subsystemVendorID)
        set16(identity.subsystemID, at: PciRegister.subsystemID)
        let commandMask = PciRegister.commandIO | PciRegister.commandMemory | PciRegister.commandBusMaster | PciRegister.commandINTxDisable
        writable[PciRegister.command] = UInt8(commandMask & 0xFF)
        writable[PciRegister.command + 1] = UInt8(commandMask >> 8)
        writable[PciRegister.interruptLine] = 0xFF
        bytes[PciRegister.interruptPin] = interruptPin
    }

    // MARK: building

    public mutating func addBar(_ bar: PciBar) {
        precondition(bar.index >= 0 && bar.index < 6 && (bar.kind != .memory64 || bar.index < 5))
        bars.append(bar)
        writeBarRegisters(bar)
    }

    /// Appends a capability (`body` starts after the ID and next-pointer bytes) and returns its
    /// offset. `writableBody` marks which body bytes the guest may change directly.
    @discardableResult
    public mutating func addCapability(id: UInt8, body: [UInt8], writableBody: [UInt8]? = nil) -> Int {
        let offset = nextCapabilityOffset
        let length = 2 + body.count
        precondition(offset + length <= 256, "capabilities overflow the configuration space")
        bytes[offset] = id
        bytes[offset + 1] = 0
        for (i, b) in body.enumerated() { bytes[offset + 2 + i] = b }
        if let writableBody { for (i, m) in writableBody.enumerated() { writable[offset + 2 + i] = m } }
        if let previous = lastCapabilityNext { bytes[previous] = UInt8(offset) }
        else {
            bytes[PciRegister.capabilitiesPointer] = UInt8(offset)
            set16(get16(PciRegister.status) | PciRegister.statusCapabilities, at: PciRegister.status)
        }
        lastCapabilityNext = offset + 1
        nextCapabilityOffset = (offset + length + 3) & ~3
        return offset
    }

    // MARK: access

    public func read(offset: Int, size: Int) -> UInt32 {
        guard offset >= 0, size > 0, size <= 4, offset + size <= 256 else { return UInt32.max }
        var v: UInt32 = 0
        for i in 0..<size { v |= UInt32(bytes[offset + i]) << (8 * UInt32(i)) }
        return v
    }

    /// A guest write: BARs get their sizing semantics, everything else the write mask.
    public mutating func write(offset: Int, size: Int, value: UInt32) {
        guard offset >= 0, size > 0, size <= 4, offset + size <= 256 else { return }
        if offset >= PciRegister.bar0 && offset < PciRegister.bar0 + 24 {
            writeBar(register: (offset - PciRegister.bar0) / 4, byteOffset: (offset - PciRegister.bar0) % 4, size: size, value: value)
            return
        }
        for i in 0..<size {
            let b = UInt8(truncatingIfNeeded: value >> (8 * UInt32(i)))
            let m = writable[offset + i]
            bytes[offset + i] = (bytes[offset + i] & ~m) | (b & m)
        }
    }

    /// Device-side update of any byte (status bits, capability fields the device owns).
    public mutating func set16(_ v: UInt16, at offset: Int) {
        bytes[offset] = UInt8(v & 0xFF); bytes[offset + 1] = UInt8(v >> 8)
    }
    public mutating func set32(_ v: UInt32, at offset: Int) {
        for i in 0..<4 { bytes[offset + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))) }
    }
    public mutating func setByte(_ v: UInt8, at offset: Int) { bytes[offset] = v }
    public func get16(_ offset: Int) -> UInt16 { UInt16(bytes[offset]) | UInt16(bytes[offset + 1]) << 8 }
    public func get32(_ offset: Int) -> UInt32 { read(offset: offset, size: 4) }

    public var command: UInt16 { get16(PciRegister.command) }
    public var memoryDecoding: Bool { command & PciRegister.commandMemory != 0 }

    /// Places a BAR (the VMM pre-assigns addresses so guests need not; they may move them later).
    public mutating func setBarAddress(index: Int, address: UInt64) {
        guard let i = bars.firstIndex(where: { $0.index == index }) else { return }
        bars[i].address = address & ~(bars[i].size - 1)
        writeBarRegisters(bars[i])
    }

    // MARK: snapshot

    /// A saved configuration space that does not fit the function being restored.
    public struct RestoreError: Error, Equatable, CustomStringConvertible {
        public let reason: String
        public var description: String { reason }
    }

    /// Takes what the guest may have changed (the writable bytes and the BAR addresses) from
    /// `saved`, the configuration space of a function built the same way. The layout (write mask,
    /// capabilities, BARs) stays this one's; a saved space whose read-only bytes or BARs differ
    /// is from another kind of device or a corrupt file, and is refused without changing anything.
    public mutating func restore(from saved: PciConfigSpace) throws(RestoreError) {
        guard saved.bytes.count == bytes.count else {
            throw RestoreError(reason: "configuration space of \(saved.bytes.count) bytes, expected \(bytes.count)")
        }
        let barRegisters = PciRegister.bar0..<PciRegister.bar0 + 24
        for i in bytes.indices where !barRegisters.contains(i) && bytes[i] & ~writable[i] != saved.bytes[i] & ~writable[i] {
            throw RestoreError(reason: "configuration space differs at read-only offset 0x\(String(i, radix: 16)): "
                               + "0x\(String(saved.bytes[i], radix: 16)), this device has 0x\(String(bytes[i], radix: 16))")
        }
        let layout = { (b: PciBar) in "BAR\(b.index) \(b.kind.rawValue) size 0x\(String(b.size, radix: 16))\(b.prefetchable ? " prefetchable" : "")" }
        guard saved.bars.map(layout) == bars.map(layout) else {
            throw RestoreError(reason: "BARs [\(saved.bars.map(layout).joined(separator: ", "))], this device has [\(bars.map(layout).joined(separator: ", "))]")
        }
        for i in bytes.indices where !barRegisters.contains(i) {
            bytes[i] = (bytes[i] & ~writable[i]) | (saved.bytes[i] & writable[i])
        }
        for bar in saved.bars { setBarAddress(index: bar.index, address: bar.address) }
    }

    // MARK: BARs

    private mutating func writeBarRegisters(_ bar: PciBar) {
        set32(UInt32(truncatingIfNeeded: bar.address) | bar.typeBits, at: PciRegister.bar0 + 4 * bar.index)
        if bar.kind == .memory64 { set32(UInt32(truncatingIfNeeded: bar.address >> 32), at: PciRegister.bar0 + 4 * bar.index + 4) }
    }

    /// Writing all-ones and reading back yields the size mask: address bits below the size are
    /// hard-wired to zero, which is exactly "keep only the bits above the size".
    private mutating func writeBar(register: Int, byteOffset: Int, size: Int, value: UInt32) {
        // Merge partial writes into the current register value first.
        var current = get32(PciRegister.bar0 + 4 * register)
        for i in 0..<size {
            let shift = UInt32(8 * (byteOffset + i))
            guard shift < 32 else { break }
            current = (current & ~(0xFF << shift)) | (((value >> (8 * UInt32(i))) & 0xFF) << shift)
        }
        if let i = bars.firstIndex(where: { $0.index == register }) {
            let bar = bars[i]
            let mask = ~(bar.size - 1)
            let low = UInt64(current & ~UInt32(bar.kind == .io ? 0x3 : 0xF))
            bars[i].address = ((bar.address & 0xFFFF_FFFF_0000_0000) | low) & mask
            writeBarRegisters(bars[i])
        } else if let i = bars.firstIndex(where: { $0.index == register - 1 && $0.kind == .memory64 }) {
            let bar = bars[i]
            bars[i].address = ((UInt64(current) << 32) | (bar.address & 0xFFFF_FFFF)) & ~(bar.size - 1)
            writeBarRegisters(bars[i])
        }
        // Unimplemented BARs stay zero: the guest reads 0 and sees no BAR.
    }
}
