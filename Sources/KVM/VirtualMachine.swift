import CKVM
import SystemPackage

/// A KVM VM file descriptor.
public final class VirtualMachine: @unchecked Sendable {
    public let fd: FileDescriptor
    public let system: KVMSystem

    init(fd: FileDescriptor, system: KVMSystem) {
        self.fd = fd; self.system = system
    }

    deinit { try? fd.close() }

    public func setTSSAddress(_ address: UInt64) throws {
        try IOCtl.call(fd, CKVM_SET_TSS_ADDR, "KVM_SET_TSS_ADDR", value: UInt(address))
    }

    public func setIdentityMapAddress(_ address: UInt64) throws {
        var a = address
        try IOCtl.call(fd, CKVM_SET_IDENTITY_MAP_ADDR, "KVM_SET_IDENTITY_MAP_ADDR", &a)
    }

    public func createIRQChip() throws {
        try IOCtl.call(fd, CKVM_CREATE_IRQCHIP, "KVM_CREATE_IRQCHIP", value: 0)
    }

    public func createPIT() throws {
        var config = kvm_pit_config()
        config.flags = UInt32(KVM_PIT_SPEAKER_DUMMY)
        try IOCtl.call(fd, CKVM_CREATE_PIT2, "KVM_CREATE_PIT2", &config)
    }

    /// `logDirty`: KVM records the guest's writes to the slot for `dirtyLog(slot:pages:)`.
    public func setUserMemoryRegion(slot: UInt32, guestAddress: UInt64, size: UInt64, hostAddress: UInt64, readOnly: Bool = false,
                                    logDirty: Bool = false) throws {
        var region = kvm_userspace_memory_region()
        region.slot = slot
        region.flags = (readOnly ? UInt32(KVM_MEM_READONLY) : 0) | (logDirty ? UInt32(KVM_MEM_LOG_DIRTY_PAGES) : 0)
        region.guest_phys_addr = guestAddress
        region.memory_size = size
        region.userspace_addr = hostAddress
        try IOCtl.call(fd, CKVM_SET_USER_MEMORY_REGION, "KVM_SET_USER_MEMORY_REGION", &region)
    }

    /// Drives an interrupt line of the in-kernel PIC/IOAPIC.
    public func setIRQLine(_ irq: UInt32, high: Bool) throws {
        var level = kvm_irq_level()
        level.irq = irq
        level.level = high ? 1 : 0
        try IOCtl.call(fd, CKVM_IRQ_LINE, "KVM_IRQ_LINE", &level)
    }

    public func enableCapability(_ cap: UInt32, args: [UInt64] = []) throws {
        var c = kvm_enable_cap()
        c.cap = cap
        withUnsafeMutableBytes(of: &c.args) { raw in
            let a = raw.bindMemory(to: UInt64.self)
            for (i, v) in args.prefix(4).enumerated() { a[i] = v }
        }
        try IOCtl.call(fd, CKVM_ENABLE_CAP, "KVM_ENABLE_CAP(\(cap))", &c)
    }

    public func createVCPU(id: Int) throws -> VCPU {
        let raw = try IOCtl.call(fd, CKVM_CREATE_VCPU, "KVM_CREATE_VCPU", value: UInt(id))
        let vfd = FileDescriptor(rawValue: raw)
        do {
            return try VCPU(fd: vfd, id: id, mmapSize: try system.vcpuMmapSize())
        } catch {
            try? vfd.close()
            throw error
        }
    }

    /// The slot's pages the guest wrote since the last call (or since dirty logging was turned
    /// on), one bit per 4 KiB page, and clears them (KVM_GET_DIRTY_LOG).
    public func dirtyLog(slot: UInt32, pages: Int) throws -> [UInt64] {
        var bitmap = [UInt64](repeating: 0, count: (pages + 63) / 64)
        try bitmap.withUnsafeMutableBytes { raw in
            var log = kvm_dirty_log()
            log.slot = slot
            log.dirty_bitmap = raw.baseAddress
            try IOCtl.call(fd, CKVM_GET_DIRTY_LOG, "KVM_GET_DIRTY_LOG", &log)
        }
        return bitmap
    }
}
