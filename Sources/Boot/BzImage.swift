import Arch
import Memory

/// A bzImage's real-mode setup header (Documentation/arch/x86/boot.rst), as far as the 64-bit
/// boot protocol needs it.
public struct BzImage: Sendable {
    public let setupSectors: Int
    public let protocolVersion: UInt16
    public let loadFlags: UInt8
    public let xloadFlags: UInt16
    public let initrdAddressMax: UInt32
    public let commandLineSize: UInt32
    /// The setup header bytes 0x1f1..<end, copied into boot_params.
    public let setupHeader: [UInt8]
    public let kernelOffset: Int
    public let kernelSize: Int

    static let headerStart = 0x1F1
    public static let xlfKernel64: UInt16 = 1 << 0
    public static let loadedHigh: UInt8 = 1 << 0
    public static let canUseHeap: UInt8 = 1 << 7

    public static func isBzImage(_ image: ImageFile) -> Bool {
        guard image.count >= 0x206 else { return false }
        return image.bytes[0x1FE] == 0x55 && image.bytes[0x1FF] == 0xAA && Array(image.bytes[0x202..<0x206]) == Array("HdrS".utf8)
    }

    public init(parsing image: ImageFile) throws {
        let p = image.path
        guard Self.isBzImage(image) else { throw BootError.unrecognisedFormat(path: p) }
        var sects = Int(try image.integer(UInt8.self, at: 0x1F1, "setup_sects"))
        if sects == 0 { sects = 4 }
        setupSectors = sects
        protocolVersion = try image.integer(UInt16.self, at: 0x206, "boot protocol version")
        guard protocolVersion >= 0x20C else {
            throw BootError.unsupported(path: p, reason: "boot protocol \(String(protocolVersion, radix: 16)) predates 2.12 (no 64-bit entry)")
        }
        loadFlags = try image.integer(UInt8.self, at: 0x211, "loadflags")
        xloadFlags = try image.integer(UInt16.self, at: 0x236, "xloadflags")
        guard xloadFlags & Self.xlfKernel64 != 0 else { throw BootError.unsupported(path: p, reason: "no 64-bit entry point (XLF_KERNEL_64)") }
        initrdAddressMax = try image.integer(UInt32.self, at: 0x22C, "initrd_addr_max")
        commandLineSize = try image.integer(UInt32.self, at: 0x238, "cmdline_size")
        // The header's length is given by the jump at 0x200: 0x202 + signed byte at 0x201.
        let headerEnd = 0x202 + Int(try image.integer(UInt8.self, at: 0x201, "setup header jump"))
        setupHeader = Array(try image.slice(Self.headerStart, max(headerEnd, 0x268) - Self.headerStart, "setup header"))
        kernelOffset = (sects + 1) * 512
        guard kernelOffset < image.count else { throw BootError.truncated(path: p, what: "protected-mode kernel") }
        kernelSize = image.count - kernelOffset
        // syssize (16-byte paragraphs) tells how long the protected-mode kernel must be.
        let syssize = Int(try image.integer(UInt32.self, at: 0x1F4, "syssize")) * 16
        guard syssize <= kernelSize else {
            throw BootError.truncated(path: p, what: "protected-mode kernel (\(syssize) bytes per syssize)")
        }
    }

    /// Loads the protected-mode kernel; returns (entry, end).
    public func load(_ image: ImageFile, into memory: GuestMemory, at address: GuestAddress = GuestAddress(GuestLayout.bzImageLoadAddress)) throws -> (entry: UInt64, end: UInt64) {
        guard memory.contains(address, length: UInt64(kernelSize)) else {
            throw BootError.doesNotFit(path: image.path, what: "kernel", address: address.raw, size: UInt64(kernelSize))
        }
        let kernel = try image.slice(kernelOffset, kernelSize, "kernel")
        try kernel.withUnsafeBytes { try memory.write($0, at: address) }
        // The 64-bit entry point sits 0x200 bytes into the protected-mode kernel.
        return (address.raw + 0x200, address.raw + UInt64(kernelSize))
    }
}

/// The "zero page" (struct boot_params) for the Linux 64-bit boot protocol.
public struct BootParams: Sendable {
    public private(set) var bytes = [UInt8](repeating: 0, count: 4096)

    static let e820Entries = 0x1E8
    static let e820Table = 0x2D0
    static let e820Max = 128

    public init(setupHeader: [UInt8]? = nil) {
        if let setupHeader {
            for (i, b) in setupHeader.prefix(0x290 - 0x1F1).enumerated() { bytes[0x1F1 + i] = b }
        } else {
            // A vmlinux has no setup header: write the fields the kernel checks.
            put(UInt16(0xAA55), at: 0x1FE)
            put(UInt32(0x5372_6448), at: 0x202) // "HdrS"
            put(UInt16(0x020F), at: 0x206)
            put(UInt32(0x0100_0000), at: 0x230) // kernel_alignment
        }
        bytes[0x210] = 0xFF // type_of_loader: undefined
        bytes[0x211] |= BzImage.loadedHigh | BzImage.canUseHeap
        put(UInt16(0xFE00), at: 0x224) // heap_end_ptr
    }

    mutating func put<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        for i in 0..<MemoryLayout<T>.size { bytes[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * i)) }
    }

    public func get<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
        var v: T = 0
        for i in 0..<MemoryLayout<T>.size { v |= T(bytes[offset + i]) << (8 * i) }
        return v
    }

    public mutating func setCommandLine(address: UInt64, size: Int) {
        put(UInt32(truncatingIfNeeded: address), at: 0x228)
        put(UInt32(truncatingIfNeeded: address >> 32), at: 0x0C8) // ext_cmd_line_ptr
        put(UInt32(size), at: 0x238)
    }

    public mutating func setInitrd(address: UInt64, size: UInt64) {
        put(UInt32(truncatingIfNeeded: address), at: 0x218)
        put(UInt32(truncatingIfNeeded: size), at: 0x21C)
        put(UInt32(truncatingIfNeeded: address >> 32), at: 0x0C0)
        put(UInt32(truncatingIfNeeded: size >> 32), at: 0x0C4)
    }

    public mutating func setMemoryMap(_ entries: [MemoryMapEntry]) {
        let n = min(entries.count, Self.e820Max)
        bytes[Self.e820Entries] = UInt8(n)
        for (i, e) in entries.prefix(n).enumerated() {
            let o = Self.e820Table + i * 20
            put(e.address, at: o)
            put(e.size, at: o + 8)
            put(e.kind.rawValue, at: o + 16)
        }
    }
}

/// The PVH boot ABI's `struct hvm_start_info` (version 1) with its module list and memory map.
public struct PVHStartInfo: Sendable {
    public static let magic: UInt32 = 0x336E_C578

    public var commandLine: UInt64
    public var modules: [(address: UInt64, size: UInt64)]
    public var memoryMap: [MemoryMapEntry]

    public init(commandLine: UInt64, modules: [(address: UInt64, size: UInt64)], memoryMap: [MemoryMapEntry]) {
        self.commandLine = commandLine; self.modules = modules; self.memoryMap = memoryMap
    }

    public func write(to memory: GuestMemory) throws {
        let base = GuestAddress(GuestLayout.pvhStartInfo)
        let mods = GuestAddress(GuestLayout.pvhModuleList)
        let map = GuestAddress(GuestLayout.pvhMemoryMap)
        precondition(memoryMap.count <= GuestLayout.pvhMemoryMapCapacity && modules.count <= 2)
        try memory.fill(0, count: 56, at: base)
        try memory.writeInteger(Self.magic, at: base)
        try memory.writeInteger(UInt32(1), at: base.adding(4)!)            // version
        try memory.writeInteger(UInt32(modules.count), at: base.adding(12)!)
        try memory.writeInteger(modules.isEmpty ? 0 : mods.raw, at: base.adding(16)!)
        try memory.writeInteger(commandLine, at: base.adding(24)!)
        try memory.writeInteger(map.raw, at: base.adding(40)!)
        try memory.writeInteger(UInt32(memoryMap.count), at: base.adding(48)!)
        for (i, m) in modules.enumerated() {
            let o = mods.adding(UInt64(i * 32))!
            try memory.fill(0, count: 32, at: o)
            try memory.writeInteger(m.address, at: o)
            try memory.writeInteger(m.size, at: o.adding(8)!)
        }
        for (i, e) in memoryMap.enumerated() {
            let o = map.adding(UInt64(i * 24))!
            try memory.writeInteger(e.address, at: o)
            try memory.writeInteger(e.size, at: o.adding(8)!)
            try memory.writeInteger(e.kind.rawValue, at: o.adding(16)!)
            try memory.writeInteger(UInt32(0), at: o.adding(20)!)
        }
    }
}
