import KVM
import Logging
import PCI
import Posix
import Synchronization

/// Delivers MSI-X vectors through KVM: each vector gets a GSI and an eventfd registered with
/// KVM_IRQFD, and the GSI's MSI route follows what the guest programs into the MSI-X table.
/// Firing a vector is one eventfd write from whichever thread completed the I/O; KVM injects it.
final class MsiRouter: Sendable {
    let vm: VirtualMachine
    let logger: Logger
    private struct State {
        var nextGSI = GSIRoute.ioapicPins
        var msiRoutes: [UInt32: MsiMessage] = [:]
    }
    private let state = Mutex(State())

    init(vm: VirtualMachine, logger: Logger) {
        self.vm = vm
        self.logger = logger
    }

    /// A GSI above the IOAPIC pins, for one MSI vector.
    func allocateGSI() -> UInt32 { state.withLock { s -> UInt32 in defer { s.nextGSI += 1 }; return s.nextGSI } }

    /// GSIs and irqfds for one device's vectors.
    func makeSink(vectors: Int, device: String) throws -> KVMMsiSink {
        var gsis: [UInt32] = []
        var fds: [EventFD] = []
        for _ in 0..<vectors {
            let gsi = allocateGSI()
            let fd = try EventFD()
            try vm.registerIRQFD(fd.fd, gsi: gsi)
            gsis.append(gsi)
            fds.append(fd)
        }
        return KVMMsiSink(router: self, gsis: gsis, eventfds: fds, device: device)
    }

    /// Installs or removes the MSI route of `gsi`; the table is replaced as a whole.
    func setRoute(gsi: UInt32, message: MsiMessage?, device: String) {
        state.withLock { s in
            if let message { s.msiRoutes[gsi] = message } else { s.msiRoutes[gsi] = nil }
            let routes = GSIRoute.defaultIRQChipRoutes
                + s.msiRoutes.sorted { $0.key < $1.key }.map { GSIRoute.msi(gsi: $0.key, address: $0.value.address, data: $0.value.data) }
            do { try vm.setGSIRouting(routes) } catch { logger.error("\(device): MSI route for GSI \(gsi): \(error)") }
        }
    }
}

struct KVMMsiSink: MsiVectorSink {
    let router: MsiRouter
    let gsis: [UInt32]
    let eventfds: [EventFD]
    let device: String

    func route(vector: Int, message: MsiMessage?) { router.setRoute(gsi: gsis[vector], message: message, device: device) }
    func fire(vector: Int) { eventfds[vector].signal() }
}

/// One MSI vector whose signals come from an eventfd something else writes (a VFIO device, a
/// channel peer's doorbell): KVM_IRQFD on the vector's GSI while it is routed. Unrouted (masked,
/// MSI-X off), the eventfd is detached: signals wait in its counter and arrive, as one interrupt,
/// when it is attached again, which is how masking keeps them pending.
final class IRQFDVector: Sendable {
    let efd: EventFD
    let gsi: UInt32
    let router: MsiRouter
    let device: String
    private let attached = Mutex(false)

    init(efd: EventFD, gsi: UInt32, router: MsiRouter, device: String) {
        self.efd = efd; self.gsi = gsi; self.router = router; self.device = device
    }

    func route(_ message: MsiMessage?) {
        attached.withLock { on in
            do {
                if let message {
                    router.setRoute(gsi: gsi, message: message, device: device)
                    // KVM injects at once if the eventfd was signalled while detached.
                    if !on { try router.vm.registerIRQFD(efd.fd, gsi: gsi); on = true }
                } else {
                    if on { try router.vm.unregisterIRQFD(efd.fd, gsi: gsi); on = false }
                    router.setRoute(gsi: gsi, message: nil, device: device)
                }
            } catch {
                router.logger.error("\(device): vector on GSI \(gsi): \(error)")
            }
        }
    }
}
