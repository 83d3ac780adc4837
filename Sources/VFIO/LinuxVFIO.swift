import CKVM
import Posix
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The real kernel interface: /dev/vfio/vfio, /dev/vfio/N and the device fds.
public final class LinuxVFIO: VFIOKernel {
    public let devDirectory: String
    public init(devDirectory: String = "/dev/vfio") { self.devDirectory = devDirectory }

    private func ioctl(_ fd: FileDescriptor, _ request: UInt, _ name: String, _ arg: UnsafeMutableRawPointer?, on subject: String) throws -> Int32 {
        do { return try retryInterrupted { ckvm_ioctl_ptr(fd.rawValue, request, arg) } }
        catch { throw VFIOError(name, error, on: subject) }
    }

    private func ioctlValue(_ fd: FileDescriptor, _ request: UInt, _ name: String, _ arg: UInt, on subject: String) throws -> Int32 {
        let r = ckvm_ioctl_val(fd.rawValue, request, arg)
        if r < 0 { throw VFIOError(name, Errno(rawValue: errno), on: subject) }
        return r
    }

    private func open(_ path: String) throws -> FileDescriptor {
        do { return try FileDescriptor.open(path, .readWrite, options: [.closeOnExec]) }
        catch let e as Errno {
            let hint = switch e {
            case .noSuchFileOrDirectory: " (is the vfio-pci module loaded and the device bound to it?)"
            case .permissionDenied: " (needs root or ownership of the VFIO device node)"
            case .resourceBusy: " (the group is already in use by another process)"
            default: ""
            }
            throw VFIOError("open \(path): \(e)\(hint)")
        } catch { throw VFIOError("open \(path): \(error)") }
    }

    public func openContainer() throws -> FileDescriptor { try open(devDirectory + "/vfio") }

    public func apiVersion(container: FileDescriptor) throws -> Int {
        Int(try ioctlValue(container, CKVM_VFIO_GET_API_VERSION, "VFIO_GET_API_VERSION", 0, on: "the container"))
    }

    public func checkExtension(container: FileDescriptor, _ ext: Int) -> Bool {
        ckvm_ioctl_val(container.rawValue, CKVM_VFIO_CHECK_EXTENSION, UInt(ext)) > 0
    }

    public func setIOMMU(container: FileDescriptor, type: Int) throws {
        _ = try ioctlValue(container, CKVM_VFIO_SET_IOMMU, "VFIO_SET_IOMMU", UInt(type), on: "the container")
    }

    public func mapDMA(container: FileDescriptor, iova: UInt64, size: UInt64, hostAddress: UInt64, writable: Bool) throws {
        var map = vfio_iommu_type1_dma_map()
        map.argsz = UInt32(MemoryLayout<vfio_iommu_type1_dma_map>.size)
        map.flags = UInt32(VFIO_DMA_MAP_FLAG_READ) | (writable ? UInt32(VFIO_DMA_MAP_FLAG_WRITE) : 0)
        map.vaddr = hostAddress
        map.iova = iova
        map.size = size
        _ = try ioctl(container, CKVM_VFIO_IOMMU_MAP_DMA, "VFIO_IOMMU_MAP_DMA", &map,
                      on: "IOVA 0x\(String(iova, radix: 16)) (+0x\(String(size, radix: 16)))")
    }

    public func unmapDMA(container: FileDescriptor, iova: UInt64, size: UInt64) throws {
        var unmap = vfio_iommu_type1_dma_unmap()
        unmap.argsz = UInt32(MemoryLayout<vfio_iommu_type1_dma_unmap>.size)
        unmap.iova = iova
        unmap.size = size
        _ = try ioctl(container, CKVM_VFIO_IOMMU_UNMAP_DMA, "VFIO_IOMMU_UNMAP_DMA", &unmap, on: "IOVA 0x\(String(iova, radix: 16))")
    }

    public func openGroup(_ number: Int) throws -> FileDescriptor { try open("\(devDirectory)/\(number)") }

    public func groupStatus(_ group: FileDescriptor) throws -> (viable: Bool, containerSet: Bool) {
        var status = vfio_group_status()
        status.argsz = UInt32(MemoryLayout<vfio_group_status>.size)
        _ = try ioctl(group, CKVM_VFIO_GROUP_GET_STATUS, "VFIO_GROUP_GET_STATUS", &status, on: "the group")
        return (status.flags & UInt32(VFIO_GROUP_FLAGS_VIABLE) != 0, status.flags & UInt32(VFIO_GROUP_FLAGS_CONTAINER_SET) != 0)
    }

    public func setContainer(group: FileDescriptor, container: FileDescriptor) throws {
        var fd = container.rawValue
        _ = try ioctl(group, CKVM_VFIO_GROUP_SET_CONTAINER, "VFIO_GROUP_SET_CONTAINER", &fd, on: "the group")
    }

    public func unsetContainer(group: FileDescriptor) {
        _ = ckvm_ioctl_val(group.rawValue, CKVM_VFIO_GROUP_UNSET_CONTAINER, 0)
    }

    public func openDevice(group: FileDescriptor, name: String) throws -> FileDescriptor {
        var cname = Array(name.utf8CString)
        let r = try cname.withUnsafeMutableBytes { raw in
            try ioctl(group, CKVM_VFIO_GROUP_GET_DEVICE_FD, "VFIO_GROUP_GET_DEVICE_FD", raw.baseAddress, on: name)
        }
        return FileDescriptor(rawValue: r)
    }

    public func deviceInfo(_ device: FileDescriptor) throws -> VFIODeviceInfo {
        var info = vfio_device_info()
        info.argsz = UInt32(MemoryLayout<vfio_device_info>.size)
        _ = try ioctl(device, CKVM_VFIO_DEVICE_GET_INFO, "VFIO_DEVICE_GET_INFO", &info, on: "the device")
        return VFIODeviceInfo(flags: info.flags, regionCount: Int(info.num_regions), irqCount: Int(info.num_irqs))
    }

    public func regionInfo(_ device: FileDescriptor, index: Int) throws -> VFIORegionInfo {
        var region = ckvm_vfio_region()
        if ckvm_vfio_region_info(device.rawValue, UInt32(index), &region) < 0 {
            throw VFIOError("VFIO_DEVICE_GET_REGION_INFO", Errno(rawValue: errno), on: "region \(index)")
        }
        var sparse: [(offset: UInt64, size: UInt64)]? = nil
        if region.has_sparse != 0 {
            let offsets = withUnsafeBytes(of: region.area_offset) { Array($0.bindMemory(to: UInt64.self)) }
            let sizes = withUnsafeBytes(of: region.area_size) { Array($0.bindMemory(to: UInt64.self)) }
            sparse = (0..<Int(region.nr_areas)).map { (offsets[$0], sizes[$0]) }
        }
        return VFIORegionInfo(flags: region.flags, size: region.size, offset: region.offset, sparseAreas: sparse)
    }

    public func irqInfo(_ device: FileDescriptor, index: Int) throws -> VFIOIRQInfo {
        var info = vfio_irq_info()
        info.argsz = UInt32(MemoryLayout<vfio_irq_info>.size)
        info.index = UInt32(index)
        _ = try ioctl(device, CKVM_VFIO_DEVICE_GET_IRQ_INFO, "VFIO_DEVICE_GET_IRQ_INFO", &info, on: "IRQ index \(index)")
        return VFIOIRQInfo(flags: info.flags, count: Int(info.count))
    }

    public func setIRQs(_ device: FileDescriptor, index: Int, action: VFIOIRQAction, start: Int, count: Int, eventfds: [Int32]?) throws {
        let r: Int32
        if let eventfds {
            r = eventfds.withUnsafeBufferPointer { ckvm_vfio_set_irqs(device.rawValue, UInt32(index), action.rawValue, UInt32(start), UInt32(count), $0.baseAddress) }
        } else {
            r = ckvm_vfio_set_irqs(device.rawValue, UInt32(index), action.rawValue, UInt32(start), UInt32(count), nil)
        }
        if r < 0 { throw VFIOError("VFIO_DEVICE_SET_IRQS", Errno(rawValue: errno), on: "IRQ index \(index) (\(action), \(count) vector(s))") }
    }

    public func reset(_ device: FileDescriptor) throws {
        _ = try ioctlValue(device, CKVM_VFIO_DEVICE_RESET, "VFIO_DEVICE_RESET", 0, on: "the device")
    }

    public func read(_ device: FileDescriptor, offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        do {
            let n = try device.read(fromAbsoluteOffset: Int64(offset), into: buffer, retryOnInterrupt: true)
            if n != buffer.count { throw VFIOError("short read of \(n)/\(buffer.count) bytes at device offset 0x\(String(offset, radix: 16))") }
        } catch let e as Errno { throw VFIOError("pread", e, on: "device offset 0x\(String(offset, radix: 16))") }
    }

    public func write(_ device: FileDescriptor, offset: UInt64, from buffer: UnsafeRawBufferPointer) throws {
        do {
            let n = try device.write(toAbsoluteOffset: Int64(offset), buffer, retryOnInterrupt: true)
            if n != buffer.count { throw VFIOError("short write of \(n)/\(buffer.count) bytes at device offset 0x\(String(offset, radix: 16))") }
        } catch let e as Errno { throw VFIOError("pwrite", e, on: "device offset 0x\(String(offset, radix: 16))") }
    }

    public func mmap(_ device: FileDescriptor, offset: UInt64, size: UInt64) throws -> UnsafeMutableRawPointer {
        let p = Glibc.mmap(nil, Int(size), PROT_READ | PROT_WRITE, MAP_SHARED, device.rawValue, off_t(offset))
        guard let p, p != MAP_FAILED else {
            throw VFIOError("mmap", Errno(rawValue: errno), on: "device offset 0x\(String(offset, radix: 16)) (+0x\(String(size, radix: 16)))")
        }
        return p
    }

    public func munmap(_ pointer: UnsafeMutableRawPointer, size: UInt64) { _ = Glibc.munmap(pointer, Int(size)) }

    public func close(_ fd: FileDescriptor) { try? fd.close() }
}
