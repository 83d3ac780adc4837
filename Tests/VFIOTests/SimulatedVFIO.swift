import PCI
import Synchronization
import SystemPackage
import VFIO
#if canImport(Glibc)
import Glibc
#endif

/// A simulated VFIO kernel interface: one device model per group, region storage in memory,
/// every ioctl recorded. It answers through the same seam `LinuxVFIO` implements.
final class SimulatedVFIO: VFIOKernel, @unchecked Sendable {
    /// Region i lives at i << 40 in the device fd, as in vfio-pci.
    static func regionOffset(_ i: Int) -> UInt64 { UInt64(i) << 40 }

    final class Device: @unchecked Sendable {
        var config = [UInt8](repeating: 0, count: 256)
        var regions: [Int: (info: VFIORegionInfo, storage: UnsafeMutableRawPointer)] = [:]
        var irqCounts: [Int: Int] = [:]
        var resets = 0
        var supportsReset = true

        init(vendor: UInt16, device: UInt16) {
            set16(vendor, 0); set16(device, 2)
            config[0x0B] = 0x02 // network controller
            config[0x3D] = 1    // INTA#
        }
        func set16(_ v: UInt16, _ o: Int) { config[o] = UInt8(v & 0xFF); config[o + 1] = UInt8(v >> 8) }
        func set32(_ v: UInt32, _ o: Int) { set16(UInt16(v & 0xFFFF), o); set16(UInt16(v >> 16), o + 2) }
        func get16(_ o: Int) -> UInt16 { UInt16(config[o]) | UInt16(config[o + 1]) << 8 }

        /// A memory BAR: its register's type bits and a VFIO region backed by zeroed memory.
        func addBar(_ index: Int, size: UInt64, is64: Bool = false, prefetchable: Bool = false,
                    mmap: Bool = true, sparse: [(offset: UInt64, size: UInt64)]? = nil) {
            set32((is64 ? 0x4 : 0) | (prefetchable ? 0x8 : 0), 0x10 + 4 * index)
            let storage = UnsafeMutableRawPointer.allocate(byteCount: Int(size), alignment: 4096)
            storage.initializeMemory(as: UInt8.self, repeating: 0, count: Int(size))
            regions[index] = (VFIORegionInfo(flags: 3 | (mmap ? VFIORegionInfo.flagMmap : 0), size: size,
                                             offset: SimulatedVFIO.regionOffset(index), sparseAreas: sparse), storage)
        }
        /// Appends a capability at `offset` with `bytes` after ID/next; links it into the list.
        func addCapability(_ id: UInt8, at offset: Int, _ bytes: [UInt8]) {
            config[offset] = id
            config[offset + 1] = 0
            for (i, b) in bytes.enumerated() { config[offset + 2 + i] = b }
            if config[0x34] == 0 { config[0x34] = UInt8(offset) } else {
                var at = Int(config[0x34])
                while config[at + 1] != 0 { at = Int(config[at + 1]) }
                config[at + 1] = UInt8(offset)
            }
            set16(get16(6) | 0x10, 6)
        }
    }

    struct IRQSet: Equatable { var index: Int; var action: VFIOIRQAction; var start: Int; var count: Int; var fds: [Int32]? }

    var apiVersionValue = 0
    var extensions: Set<Int> = [VFIOContainer.type1v2IOMMU, VFIOContainer.type1IOMMU]
    var viable: [Int: Bool] = [:]
    var devicesByGroup: [Int: [String: Device]] = [:]
    var nextFD: Int32 = 100
    var groupOfFD: [Int32: Int] = [:]
    var deviceOfFD: [Int32: Device] = [:]
    var log: [String] = []
    var dmaMaps: [(iova: UInt64, size: UInt64)] = []
    var irqSets: [IRQSet] = []
    var iommuType: Int? = nil
    var closed: Set<Int32> = []

    func add(_ device: Device, name: String, group: Int, viable: Bool = true) {
        devicesByGroup[group, default: [:]][name] = device
        self.viable[group] = viable
    }

    private func newFD() -> FileDescriptor { nextFD += 1; return FileDescriptor(rawValue: nextFD) }

    func openContainer() throws -> FileDescriptor { log.append("open container"); return newFD() }
    func apiVersion(container: FileDescriptor) throws -> Int { apiVersionValue }
    func checkExtension(container: FileDescriptor, _ ext: Int) -> Bool { extensions.contains(ext) }
    func setIOMMU(container: FileDescriptor, type: Int) throws {
        guard iommuType == nil else { throw VFIOError("VFIO_SET_IOMMU", .resourceBusy, on: "the container") }
        guard !groupOfFD.isEmpty else { throw VFIOError("VFIO_SET_IOMMU", .invalidArgument, on: "the container (no group yet)") }
        iommuType = type
        log.append("set IOMMU \(type)")
    }
    func mapDMA(container: FileDescriptor, iova: UInt64, size: UInt64, hostAddress: UInt64, writable: Bool) throws {
        guard iommuType != nil else { throw VFIOError("VFIO_IOMMU_MAP_DMA", .invalidArgument, on: "the container") }
        dmaMaps.append((iova, size))
    }
    func unmapDMA(container: FileDescriptor, iova: UInt64, size: UInt64) throws {
        dmaMaps.removeAll { $0.iova == iova && $0.size == size }
    }
    func openGroup(_ number: Int) throws -> FileDescriptor {
        guard devicesByGroup[number] != nil else { throw VFIOError("open /dev/vfio/\(number): No such file or directory") }
        let fd = newFD()
        groupOfFD[fd.rawValue] = number
        log.append("open group \(number)")
        return fd
    }
    func groupStatus(_ group: FileDescriptor) throws -> (viable: Bool, containerSet: Bool) {
        (viable[groupOfFD[group.rawValue]!] ?? false, false)
    }
    func setContainer(group: FileDescriptor, container: FileDescriptor) throws { log.append("set container group \(groupOfFD[group.rawValue]!)") }
    func unsetContainer(group: FileDescriptor) { log.append("unset container group \(groupOfFD[group.rawValue] ?? -1)") }
    func openDevice(group: FileDescriptor, name: String) throws -> FileDescriptor {
        guard let d = devicesByGroup[groupOfFD[group.rawValue]!]?[name] else { throw VFIOError("VFIO_GROUP_GET_DEVICE_FD", .invalidArgument, on: name) }
        let fd = newFD()
        deviceOfFD[fd.rawValue] = d
        return fd
    }
    func deviceInfo(_ device: FileDescriptor) throws -> VFIODeviceInfo {
        VFIODeviceInfo(flags: 2 | (deviceOfFD[device.rawValue]!.supportsReset ? 1 : 0), regionCount: 9, irqCount: 5)
    }
    func regionInfo(_ device: FileDescriptor, index: Int) throws -> VFIORegionInfo {
        let d = deviceOfFD[device.rawValue]!
        if index == VFIOPci.configRegion { return VFIORegionInfo(flags: 3, size: 256, offset: Self.regionOffset(7)) }
        return d.regions[index]?.info ?? VFIORegionInfo(flags: 0, size: 0, offset: Self.regionOffset(index))
    }
    func irqInfo(_ device: FileDescriptor, index: Int) throws -> VFIOIRQInfo {
        VFIOIRQInfo(flags: 1, count: deviceOfFD[device.rawValue]!.irqCounts[index] ?? 0)
    }
    func setIRQs(_ device: FileDescriptor, index: Int, action: VFIOIRQAction, start: Int, count: Int, eventfds: [Int32]?) throws {
        // vfio-pci's rule: enabling one interrupt type while another is on is EINVAL.
        if action == .trigger && count > 0, let on = activeIRQ, on != index {
            throw VFIOError("VFIO_DEVICE_SET_IRQS", .invalidArgument, on: "index \(index) while \(on) is enabled")
        }
        irqSets.append(IRQSet(index: index, action: action, start: start, count: count, fds: eventfds))
    }
    /// The interrupt index with triggers enabled now, from the recorded calls.
    var activeIRQ: Int? {
        var active: Int? = nil
        for s in irqSets where s.action == .trigger { active = s.count > 0 ? s.index : (active == s.index ? nil : active) }
        return active
    }
    func reset(_ device: FileDescriptor) throws { deviceOfFD[device.rawValue]!.resets += 1 }

    private func locate(_ device: FileDescriptor, _ offset: UInt64, _ count: Int) throws -> UnsafeMutableRawPointer? {
        let d = deviceOfFD[device.rawValue]!
        let index = Int(offset >> 40), within = offset & ((1 << 40) - 1)
        if index == VFIOPci.configRegion { return nil }
        guard let r = d.regions[index], within + UInt64(count) <= r.info.size else { throw VFIOError("pread", .invalidArgument, on: "offset") }
        return r.storage + Int(within)
    }
    func read(_ device: FileDescriptor, offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        if let p = try locate(device, offset, buffer.count) { buffer.copyMemory(from: UnsafeRawBufferPointer(start: p, count: buffer.count)); return }
        let d = deviceOfFD[device.rawValue]!
        let o = Int(offset & 0xFF)
        for i in 0..<buffer.count { buffer[i] = d.config[o + i] }
    }
    func write(_ device: FileDescriptor, offset: UInt64, from buffer: UnsafeRawBufferPointer) throws {
        if let p = try locate(device, offset, buffer.count) { p.copyMemory(from: buffer.baseAddress!, byteCount: buffer.count); return }
        let d = deviceOfFD[device.rawValue]!
        let o = Int(offset & 0xFF)
        log.append("config write 0x\(String(o, radix: 16)) size \(buffer.count)")
        for i in 0..<buffer.count { d.config[o + i] = buffer[i] }
    }
    func mmap(_ device: FileDescriptor, offset: UInt64, size: UInt64) throws -> UnsafeMutableRawPointer {
        log.append("mmap 0x\(String(offset & ((1 << 40) - 1), radix: 16))+0x\(String(size, radix: 16)) of region \(offset >> 40)")
        guard let p = try locate(device, offset, Int(size)) else { throw VFIOError("mmap", .invalidArgument, on: "config") }
        return p
    }
    func munmap(_ pointer: UnsafeMutableRawPointer, size: UInt64) { log.append("munmap 0x\(String(size, radix: 16))") }
    func close(_ fd: FileDescriptor) { closed.insert(fd.rawValue) }
}

/// Records what the passthrough device asks of the VMM (KVM slots, irqfd routes).
final class RecordingPlatform: PassthroughPlatform, @unchecked Sendable {
    var maps: [Int: (address: UInt64, size: UInt64, host: UnsafeMutableRawPointer)] = [:]
    var next = 0
    var vectors: [RecordingVector] = []
    var intx: (pin: UInt32, trigger: Int32, resample: Int32)?
    var nextEventFD: Int32 = 1000

    final class RecordingVector: PassthroughVector, @unchecked Sendable {
        let eventfd: Int32
        var routes: [MsiMessage?] = []
        init(eventfd: Int32) { self.eventfd = eventfd }
        var current: MsiMessage? { routes.last ?? nil }
        func route(_ message: MsiMessage?) { routes.append(message) }
    }

    func mapMMIO(guestAddress: UInt64, size: UInt64, host: UnsafeMutableRawPointer, label: String) throws -> Int {
        next += 1
        maps[next] = (guestAddress, size, host)
        return next
    }
    func unmapMMIO(_ handle: Int) { maps[handle] = nil }
    var mapped: [(address: UInt64, size: UInt64)] { maps.values.map { ($0.address, $0.size) }.sorted { $0.address < $1.address } }

    func makeVectors(count: Int, device: String) throws -> [any PassthroughVector] {
        (0..<count).map { _ in
            nextEventFD += 1
            let v = RecordingVector(eventfd: nextEventFD)
            vectors.append(v)
            return v
        }
    }
    func makeINTx(pin: UInt32, device: String) throws -> (trigger: Int32, resample: Int32) {
        intx = (pin, 900, 901)
        return (900, 901)
    }
}
