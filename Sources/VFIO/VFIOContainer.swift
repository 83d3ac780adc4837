import Synchronization
import SystemPackage

/// A VFIO container: one IOMMU context (type1) holding the groups of one VM, and the DMA map of
/// that VM's RAM. Guest-physical addresses are the IOVAs, so the device sees what the guest sees.
public final class VFIOContainer: Sendable {
    public static let apiVersion = 0          // VFIO_API_VERSION
    public static let type1IOMMU = 1          // VFIO_TYPE1_IOMMU
    public static let type1v2IOMMU = 3        // VFIO_TYPE1v2_IOMMU

    public let kernel: any VFIOKernel
    public let fd: FileDescriptor
    private let iommuType: Int
    private struct State {
        var groups: [Int: FileDescriptor] = [:]
        var iommuSet = false
        var dma: [(iova: UInt64, size: UInt64)] = []
        var closed = false
    }
    private let state = Mutex(State())

    public init(kernel: any VFIOKernel) throws {
        self.kernel = kernel
        fd = try kernel.openContainer()
        do {
            let version = try kernel.apiVersion(container: fd)
            guard version == Self.apiVersion else { throw VFIOError("VFIO API version \(version), expected \(Self.apiVersion)") }
            if kernel.checkExtension(container: fd, Self.type1v2IOMMU) { iommuType = Self.type1v2IOMMU }
            else if kernel.checkExtension(container: fd, Self.type1IOMMU) { iommuType = Self.type1IOMMU }
            else { throw VFIOError("the VFIO container offers no type1 IOMMU (is vfio_iommu_type1 loaded?)") }
        } catch {
            kernel.close(fd)
            throw error
        }
    }

    /// Opens group `number`, checks it is viable and puts it in this container (the IOMMU type is
    /// set with the first group, as the UAPI requires). `explain` names the offenders when the
    /// kernel says the group is not viable.
    @discardableResult
    public func attachGroup(_ number: Int, explain: () -> String = { "" }) throws -> FileDescriptor {
        if let fd = state.withLock({ $0.groups[number] }) { return fd }
        let group = try kernel.openGroup(number)
        do {
            let status = try kernel.groupStatus(group)
            guard status.viable else {
                let why = explain()
                throw VFIOError("IOMMU group \(number) is not viable: every device in it must be bound to vfio-pci (or unbound)\(why.isEmpty ? "" : ": " + why)")
            }
            try kernel.setContainer(group: group, container: fd)
            let needsIOMMU = state.withLock { !$0.iommuSet }
            if needsIOMMU {
                do { try kernel.setIOMMU(container: fd, type: iommuType) } catch {
                    kernel.unsetContainer(group: group)
                    throw error
                }
            }
            state.withLock { $0.iommuSet = true; $0.groups[number] = group }
            return group
        } catch {
            kernel.close(group)
            throw error
        }
    }

    public func group(_ number: Int) -> FileDescriptor? { state.withLock { $0.groups[number] } }

    /// Maps `size` bytes at `hostAddress` for device DMA at `iova`.
    public func mapDMA(iova: UInt64, size: UInt64, hostAddress: UInt64) throws {
        try kernel.mapDMA(container: fd, iova: iova, size: size, hostAddress: hostAddress, writable: true)
        state.withLock { $0.dma.append((iova, size)) }
    }

    public var dmaMappings: [(iova: UInt64, size: UInt64)] { state.withLock { $0.dma } }

    /// Unmaps all DMA, detaches the groups, closes everything. Idempotent.
    public func close() {
        let s = state.withLock { s -> State in
            let copy = s
            s.closed = true
            s.dma = []
            s.groups = [:]
            return copy
        }
        guard !s.closed else { return }
        for m in s.dma { try? kernel.unmapDMA(container: fd, iova: m.iova, size: m.size) }
        for (_, g) in s.groups { kernel.unsetContainer(group: g); kernel.close(g) }
        kernel.close(fd)
    }
}

/// One device fd with what the kernel reported about it.
public final class VFIODevice: Sendable {
    public let kernel: any VFIOKernel
    public let fd: FileDescriptor
    public let address: String
    public let info: VFIODeviceInfo
    /// BAR0–5, ROM, config (nil where the region is absent or its info failed).
    public let regions: [VFIORegionInfo?]
    public let configRegion: VFIORegionInfo

    public init(kernel: any VFIOKernel, group: FileDescriptor, address: String) throws {
        self.kernel = kernel
        self.address = address
        fd = try kernel.openDevice(group: group, name: address)
        do {
            info = try kernel.deviceInfo(fd)
            guard info.isPCI else { throw VFIOError("\(address): VFIO reports a device that is not PCI") }
            guard info.regionCount > VFIOPci.configRegion else { throw VFIOError("\(address): VFIO reports \(info.regionCount) regions, no config space") }
            var regions: [VFIORegionInfo?] = []
            for i in 0...VFIOPci.configRegion {
                let r = try? kernel.regionInfo(fd, index: i)
                regions.append(r.flatMap { $0.size > 0 ? $0 : nil })
            }
            guard let config = regions[VFIOPci.configRegion] else { throw VFIOError("\(address): the config space region is empty") }
            self.regions = regions
            configRegion = config
        } catch {
            kernel.close(fd)
            throw error
        }
    }

    public func readConfig(offset: Int, size: Int) throws -> UInt32 {
        UInt32(truncatingIfNeeded: try kernel.readInteger(fd, offset: configRegion.offset + UInt64(offset), size: size))
    }

    public func writeConfig(offset: Int, size: Int, value: UInt32) throws {
        try kernel.writeInteger(fd, offset: configRegion.offset + UInt64(offset), size: size, value: UInt64(value))
    }

    public func irqInfo(_ index: Int) -> VFIOIRQInfo? {
        guard index < info.irqCount else { return nil }
        return try? kernel.irqInfo(fd, index: index)
    }

    /// VFIO_DEVICE_RESET when the device supports it; false otherwise.
    @discardableResult
    public func reset() throws -> Bool {
        guard info.supportsReset else { return false }
        try kernel.reset(fd)
        return true
    }

    public func close() { kernel.close(fd) }
}
