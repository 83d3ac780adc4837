import CKVM
import SystemPackage

/// One GSI routing entry (KVM_SET_GSI_ROUTING): a pin of the in-kernel PIC/IOAPIC or an MSI.
public enum GSIRoute: Equatable, Sendable {
    case irqchip(gsi: UInt32, chip: UInt32, pin: UInt32)
    case msi(gsi: UInt32, address: UInt64, data: UInt32)

    public static let chipPICMaster: UInt32 = 0
    public static let chipPICSlave: UInt32 = 1
    public static let chipIOAPIC: UInt32 = 2
    /// IOAPIC pins of the in-kernel irqchip.
    public static let ioapicPins: UInt32 = 24

    /// KVM's default table, which KVM_SET_GSI_ROUTING replaces wholesale: ISA IRQs 0–15 on the
    /// PICs (except the cascade, IRQ 2) and GSIs 0–23 on the IOAPIC.
    public static var defaultIRQChipRoutes: [GSIRoute] {
        var routes: [GSIRoute] = []
        for irq in UInt32(0)..<16 where irq != 2 {
            routes.append(.irqchip(gsi: irq, chip: irq < 8 ? chipPICMaster : chipPICSlave, pin: irq % 8))
        }
        for pin in UInt32(0)..<ioapicPins { routes.append(.irqchip(gsi: pin, chip: chipIOAPIC, pin: pin)) }
        return routes
    }
}

extension VirtualMachine {
    /// Replaces the whole GSI routing table.
    public func setGSIRouting(_ routes: [GSIRoute]) throws {
        guard routes.count <= Int(CKVM_MAX_IRQ_ROUTES) else {
            throw KVMError("KVM_SET_GSI_ROUTING", .tooManyOpenFiles, hint: "more than \(CKVM_MAX_IRQ_ROUTES) routes")
        }
        let table = UnsafeMutablePointer<ckvm_irq_routing>.allocate(capacity: 1)
        defer { table.deallocate() }
        table.pointee.nr = UInt32(routes.count)
        table.pointee.flags = 0
        for (i, r) in routes.enumerated() {
            switch r {
            case let .irqchip(gsi, chip, pin): ckvm_routing_set_irqchip(table, UInt32(i), gsi, chip, pin)
            case let .msi(gsi, address, data): ckvm_routing_set_msi(table, UInt32(i), gsi, address, data)
            }
        }
        try IOCtl.call(fd, CKVM_SET_GSI_ROUTING, "KVM_SET_GSI_ROUTING", UnsafeMutableRawPointer(table))
    }

    /// Signalling `eventfd` injects `gsi` without a VM exit or a trip through this process's vCPUs.
    public func registerIRQFD(_ eventfd: FileDescriptor, gsi: UInt32) throws {
        try irqfd(eventfd, gsi: gsi, "KVM_IRQFD")
    }

    /// A level-triggered line (passthrough INTx): signalling `eventfd` asserts `gsi`; when the guest
    /// ends the interrupt (EOI) KVM de-asserts it and signals `resample`, so the device's driver
    /// (VFIO) can unmask and re-raise if still pending.
    public func registerIRQFD(_ eventfd: FileDescriptor, gsi: UInt32, resample: FileDescriptor) throws {
        try irqfd(eventfd, gsi: gsi, flags: UInt32(KVM_IRQFD_FLAG_RESAMPLE), resample: UInt32(resample.rawValue), "KVM_IRQFD(resample)")
    }

    public func unregisterIRQFD(_ eventfd: FileDescriptor, gsi: UInt32) throws {
        try irqfd(eventfd, gsi: gsi, flags: UInt32(KVM_IRQFD_FLAG_DEASSIGN), "KVM_IRQFD(deassign)")
    }

    /// KVM_IRQFD, the one ioctl behind the three calls above (`what` names it in errors).
    private func irqfd(_ eventfd: FileDescriptor, gsi: UInt32, flags: UInt32 = 0, resample: UInt32 = 0, _ what: String) throws {
        var irqfd = kvm_irqfd()
        irqfd.fd = UInt32(eventfd.rawValue)
        irqfd.gsi = gsi
        irqfd.flags = flags
        irqfd.resamplefd = resample
        try IOCtl.call(fd, CKVM_IRQFD, what, &irqfd)
    }

    /// Injects one MSI directly (no route needed).
    public func signalMSI(address: UInt64, data: UInt32) throws {
        var msi = kvm_msi()
        msi.address_lo = UInt32(truncatingIfNeeded: address)
        msi.address_hi = UInt32(truncatingIfNeeded: address >> 32)
        msi.data = data
        try IOCtl.call(fd, CKVM_SIGNAL_MSI, "KVM_SIGNAL_MSI", &msi)
    }

    /// A guest write of any value and size to `address` (MMIO) signals `eventfd` in the kernel,
    /// without an exit to this process.
    /// `datamatch`: only writes of exactly this value signal `eventfd` (others exit as usual), so
    /// several eventfds can share one register (ivshmem's doorbell: one per peer and vector).
    public func registerIOEventFD(_ eventfd: FileDescriptor, address: UInt64, length: UInt32, pio: Bool = false, datamatch: UInt64? = nil) throws {
        try ioeventfd(eventfd, address: address, length: length, pio: pio, datamatch: datamatch, deassign: false, "KVM_IOEVENTFD")
    }

    public func unregisterIOEventFD(_ eventfd: FileDescriptor, address: UInt64, length: UInt32, pio: Bool = false, datamatch: UInt64? = nil) throws {
        try ioeventfd(eventfd, address: address, length: length, pio: pio, datamatch: datamatch, deassign: true, "KVM_IOEVENTFD(deassign)")
    }

    /// KVM_IOEVENTFD, the one ioctl behind the two calls above (`what` names it in errors).
    private func ioeventfd(_ eventfd: FileDescriptor, address: UInt64, length: UInt32, pio: Bool, datamatch: UInt64?, deassign: Bool, _ what: String) throws {
        var io = kvm_ioeventfd()
        io.addr = address
        io.len = length
        io.fd = eventfd.rawValue
        io.datamatch = datamatch ?? 0
        // KVM_IOEVENTFD_FLAG_DATAMATCH (1 << 0), _PIO (1 << 1), _DEASSIGN (1 << 2)
        io.flags = (datamatch != nil ? 1 : 0) | (pio ? 1 << 1 : 0) | (deassign ? 1 << 2 : 0)
        try IOCtl.call(fd, CKVM_IOEVENTFD, what, &io)
    }
}
