import SystemPackage

/// An error from the VFIO layer: which operation, on what, and why.
public struct VFIOError: Error, Equatable, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public init(_ operation: String, _ errno: Errno, on subject: String) {
        message = "\(operation) on \(subject): \(errno) (\(errno.rawValue))"
    }
    public var description: String { message }
}

/// What VFIO_DEVICE_GET_INFO reports.
public struct VFIODeviceInfo: Equatable, Sendable {
    public var flags: UInt32
    public var regionCount: Int
    public var irqCount: Int
    public var supportsReset: Bool { flags & 1 != 0 } // VFIO_DEVICE_FLAGS_RESET
    public var isPCI: Bool { flags & 2 != 0 }         // VFIO_DEVICE_FLAGS_PCI
    public init(flags: UInt32, regionCount: Int, irqCount: Int) { self.flags = flags; self.regionCount = regionCount; self.irqCount = irqCount }
}

/// One region of a device (a BAR, the ROM, config space): where it sits in the device fd and
/// which parts of it may be mmap'd.
public struct VFIORegionInfo: Equatable, Sendable {
    public static let flagRead: UInt32 = 1 << 0
    public static let flagWrite: UInt32 = 1 << 1
    public static let flagMmap: UInt32 = 1 << 2
    public var flags: UInt32
    public var size: UInt64
    /// Offset of the region in the device fd (pread/pwrite/mmap).
    public var offset: UInt64
    /// The sparse-mmap capability: only these (offset, size) ranges may be mapped; nil when the
    /// kernel gave none (then the whole region may be mapped if `flagMmap` is set).
    public var sparseAreas: [(offset: UInt64, size: UInt64)]?
    public init(flags: UInt32, size: UInt64, offset: UInt64, sparseAreas: [(offset: UInt64, size: UInt64)]? = nil) {
        self.flags = flags; self.size = size; self.offset = offset; self.sparseAreas = sparseAreas
    }
    public var mappable: Bool { flags & Self.flagMmap != 0 }
    /// The ranges of the region the kernel lets us mmap.
    public var mappableAreas: [(offset: UInt64, size: UInt64)] {
        guard mappable else { return [] }
        return sparseAreas ?? [(0, size)]
    }
    public static func == (a: Self, b: Self) -> Bool {
        a.flags == b.flags && a.size == b.size && a.offset == b.offset
            && a.sparseAreas?.map(\.offset) == b.sparseAreas?.map(\.offset) && a.sparseAreas?.map(\.size) == b.sparseAreas?.map(\.size)
    }
}

public struct VFIOIRQInfo: Equatable, Sendable {
    public var flags: UInt32
    public var count: Int
    public init(flags: UInt32, count: Int) { self.flags = flags; self.count = count }
}

/// VFIO's fixed PCI region and IRQ indexes (<linux/vfio.h>).
public enum VFIOPci {
    public static let bar0Region = 0
    public static let romRegion = 6
    public static let configRegion = 7
    public static let intxIRQ = 0
    public static let msiIRQ = 1
    public static let msixIRQ = 2
}

/// VFIO_IRQ_SET_ACTION_* (bits 3–5 of vfio_irq_set.flags; bits 0–2 are the DATA_* kind, which
/// the C shim adds). A unit test compares these with the header's values.
public enum VFIOIRQAction: UInt32, Sendable {
    case mask = 8, unmask = 16, trigger = 32
}

/// The seam between the VFIO layer and the kernel: every ioctl, read, write and mmap the layer
/// makes goes through one of these methods. `LinuxVFIO` issues the real calls; the unit tests
/// plug in a simulated kernel that models a device (Tests/VFIOTests/SimulatedVFIO.swift).
public protocol VFIOKernel: AnyObject, Sendable {
    func openContainer() throws -> FileDescriptor
    func apiVersion(container: FileDescriptor) throws -> Int
    func checkExtension(container: FileDescriptor, _ ext: Int) -> Bool
    func setIOMMU(container: FileDescriptor, type: Int) throws
    func mapDMA(container: FileDescriptor, iova: UInt64, size: UInt64, hostAddress: UInt64, writable: Bool) throws
    func unmapDMA(container: FileDescriptor, iova: UInt64, size: UInt64) throws

    func openGroup(_ number: Int) throws -> FileDescriptor
    /// VFIO_GROUP_GET_STATUS: viable (every device of the group bound to vfio-pci or unbound) and
    /// whether a container is set.
    func groupStatus(_ group: FileDescriptor) throws -> (viable: Bool, containerSet: Bool)
    func setContainer(group: FileDescriptor, container: FileDescriptor) throws
    func unsetContainer(group: FileDescriptor)
    func openDevice(group: FileDescriptor, name: String) throws -> FileDescriptor

    func deviceInfo(_ device: FileDescriptor) throws -> VFIODeviceInfo
    func regionInfo(_ device: FileDescriptor, index: Int) throws -> VFIORegionInfo
    func irqInfo(_ device: FileDescriptor, index: Int) throws -> VFIOIRQInfo
    /// VFIO_DEVICE_SET_IRQS: `eventfds` nil is DATA_NONE (with count 0 and action trigger: disable
    /// the index); otherwise one fd per vector from `start` (-1 detaches that vector).
    func setIRQs(_ device: FileDescriptor, index: Int, action: VFIOIRQAction, start: Int, count: Int, eventfds: [Int32]?) throws
    func reset(_ device: FileDescriptor) throws
    func read(_ device: FileDescriptor, offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws
    func write(_ device: FileDescriptor, offset: UInt64, from buffer: UnsafeRawBufferPointer) throws
    func mmap(_ device: FileDescriptor, offset: UInt64, size: UInt64) throws -> UnsafeMutableRawPointer
    func munmap(_ pointer: UnsafeMutableRawPointer, size: UInt64)
    func close(_ fd: FileDescriptor)
}

extension VFIOKernel {
    /// Little-endian integer read from a device region (config space, a trapped BAR).
    public func readInteger(_ device: FileDescriptor, offset: UInt64, size: Int) throws -> UInt64 {
        var value: UInt64 = 0
        try withUnsafeMutableBytes(of: &value) { raw in
            try read(device, offset: offset, into: UnsafeMutableRawBufferPointer(rebasing: raw[0..<size]))
        }
        return UInt64(littleEndian: value)
    }

    public func writeInteger(_ device: FileDescriptor, offset: UInt64, size: Int, value: UInt64) throws {
        var le = value.littleEndian
        try withUnsafeBytes(of: &le) { raw in
            try write(device, offset: offset, from: UnsafeRawBufferPointer(rebasing: raw[0..<size]))
        }
    }
}
