import KVM
import Logging
import PCI
import Posix
import Synchronization
import SystemPackage
import VFIO

/// KVM's side of a passthrough device: BAR areas become memory slots (guest accesses go straight
/// to the device, no exit), MSI/MSI-X vectors are eventfds VFIO signals and KVM injects through
/// irqfd on a GSI whose route follows the guest's programming, and INTx is a resampling irqfd
/// on an IOAPIC pin.
final class KVMPassthroughPlatform: PassthroughPlatform {
    let vm: VirtualMachine
    let router: MsiRouter
    let logger: Logger
    /// KVM memory slots for BAR areas start above the RAM slots.
    static let firstSlot: UInt32 = 64
    private let slots = Mutex<(next: UInt32, free: [UInt32])>((firstSlot, []))
    /// Keeps the INTx eventfds open as long as the VM exists.
    private let intxFDs = Mutex<[EventFD]>([])

    init(vm: VirtualMachine, router: MsiRouter, logger: Logger) {
        self.vm = vm; self.router = router; self.logger = logger
    }

    func mapMMIO(guestAddress: UInt64, size: UInt64, host: UnsafeMutableRawPointer, label: String) throws -> Int {
        let slot = slots.withLock { s -> UInt32 in
            if let f = s.free.popLast() { return f }
            defer { s.next += 1 }
            return s.next
        }
        do {
            try vm.setUserMemoryRegion(slot: slot, guestAddress: guestAddress, size: size, hostAddress: UInt64(UInt(bitPattern: host)))
        } catch {
            slots.withLock { $0.free.append(slot) }
            throw error
        }
        logger.debug("\(label): slot \(slot) at 0x\(String(guestAddress, radix: 16)) (\(size) bytes)")
        return Int(slot)
    }

    func unmapMMIO(_ handle: Int) {
        let slot = UInt32(handle)
        do { try vm.setUserMemoryRegion(slot: slot, guestAddress: 0, size: 0, hostAddress: 0) } catch {
            logger.error("removing BAR slot \(slot): \(error)")
            return
        }
        slots.withLock { $0.free.append(slot) }
    }

    func makeVectors(count: Int, device: String) throws -> [any PassthroughVector] {
        var out: [any PassthroughVector] = []
        for _ in 0..<count {
            out.append(IRQFDVector(efd: try EventFD(), gsi: router.allocateGSI(), router: router, device: device))
        }
        return out
    }

    func makeINTx(pin: UInt32, device: String) throws -> (trigger: Int32, resample: Int32) {
        let trigger = try EventFD(), resample = try EventFD()
        try vm.registerIRQFD(trigger.fd, gsi: pin, resample: resample.fd)
        intxFDs.withLock { $0 += [trigger, resample] }
        return (trigger.fd.rawValue, resample.fd.rawValue)
    }
}

extension IRQFDVector: PassthroughVector {
    var eventfd: Int32 { efd.fd.rawValue }
}
