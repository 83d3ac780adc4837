import Devices
import Memory
import Synchronization
import Virtio

/// Modern virtio-pci transport (virtio 1.x 4.1): carries any `VirtioDevice` on a PCI function
/// with common, notify, ISR, device and PCI-config-access capabilities in BAR0, MSI-X in the same
/// BAR, and INTx for drivers that do not enable MSI-X.
///
/// BAR0 layout (drivers find it through the capabilities, never by assumption):
/// 0x0000 common configuration, 0x1000 ISR, 0x2000 device configuration, 0x3000 notify
/// (4 bytes per queue), 0x4000 MSI-X table, 0x6000 MSI-X PBA.
public final class VirtioPciDevice: PciDevice {
    public let device: any VirtioDevice
    public var name: String { device.name }
    let memory: GuestMemory
    let msix: MsixTable
    let intx: (any InterruptLine)?
    /// Called when the device needs reset or rejected activation, for the VMM's log.
    let onError: @Sendable (String) -> Void
    /// When set, queue notifications reach the device through it (ioeventfd) instead of the
    /// vCPU's MMIO exit.
    let notifyOffload: (any NotifyOffload)?

    static let barSize: UInt64 = 0x8000
    static let commonOffset: UInt64 = 0x0000, commonLength: UInt64 = 0x38
    static let isrOffset: UInt64 = 0x1000
    static let deviceConfigOffset: UInt64 = 0x2000, deviceConfigLength: UInt64 = 0x1000
    static let notifyOffset: UInt64 = 0x3000, notifyMultiplier: UInt32 = 4
    static let msixTableOffset: UInt64 = 0x4000
    static let msixPBAOffset: UInt64 = 0x6000
    public static let noVector: UInt16 = 0xFFFF

    struct Transport {
        var config: PciConfigSpace
        var deviceFeatureSelect: UInt32 = 0
        var driverFeatureSelect: UInt32 = 0
        var driverFeatures: UInt64 = 0
        var status: UInt8 = 0
        var queueSelect: UInt16 = 0
        var queues: [VirtQueue]
        var active = false
        /// Device resets so far: an activation decided before a reset must not run after it.
        var resets: UInt64 = 0
    }
    let transport: Mutex<Transport>
    /// Held across the device's activation and reset (and the doorbells' attach and detach), so
    /// they never interleave when two vCPUs race DRIVER_OK against a reset. Not the transport's
    /// lock: the device calls back into the transport (interrupts, NEEDS_RESET) meanwhile.
    let lifecycle = Mutex(())
    /// MSI-X vector per queue (index = queue) and for configuration changes (last). A leaf lock:
    /// the interrupt path takes it while the device holds its own lock.
    let vectors: Mutex<[UInt16]>
    let isr = Atomic<UInt8>(0)
    let msixCapability: Int
    let pciConfigCapability: Int

    public init(device: any VirtioDevice, memory: GuestMemory, msiSink: any MsiVectorSink,
                intx: (any InterruptLine)?, intxPin: UInt8 = 1, intxLine: UInt8 = 0,
                notifyOffload: (any NotifyOffload)? = nil,
                onError: @escaping @Sendable (String) -> Void = { _ in }) {
        self.device = device
        self.memory = memory
        self.intx = intx
        self.notifyOffload = notifyOffload
        self.onError = onError
        let queueCount = device.queueMaxSizes.count
        msix = MsixTable(vectorCount: queueCount + 1, sink: msiSink)

        let type = device.deviceType.rawValue
        let classCode: UInt32 = switch device.deviceType {
        case .block: 0x01_80_00  // mass storage, other
        case .net: 0x02_00_00    // Ethernet
        }
        var c = PciConfigSpace(identity: .init(vendorID: 0x1AF4, deviceID: UInt16(0x1040 + type), classCode: classCode,
                                               revision: 1, subsystemVendorID: 0x1AF4, subsystemID: 0x40),
                               interruptPin: intx == nil ? 0 : intxPin)
        c.setByte(intxLine, at: PciRegister.interruptLine)
        c.addBar(PciBar(index: 0, kind: .memory64, size: Self.barSize))
        let (body, writable) = msix.capabilityBody(tableBar: 0, tableOffset: UInt32(Self.msixTableOffset),
                                                   pbaBar: 0, pbaOffset: UInt32(Self.msixPBAOffset))
        msixCapability = c.addCapability(id: 0x11, body: body, writableBody: writable)
        func virtioCap(_ cfgType: UInt8, _ offset: UInt64, _ length: UInt64, extra: [UInt8] = []) -> [UInt8] {
            let capLength = UInt8(16 + extra.count)
            var b: [UInt8] = [capLength, cfgType, 0 /* bar */, 0 /* id */, 0, 0]
            for v in [UInt32(offset), UInt32(length)] { for i in 0..<4 { b.append(UInt8(truncatingIfNeeded: v >> (8 * UInt32(i)))) } }
            return b + extra
        }
        c.addCapability(id: 0x09, body: virtioCap(1, Self.commonOffset, Self.commonLength))
        let m = Self.notifyMultiplier
        c.addCapability(id: 0x09, body: virtioCap(2, Self.notifyOffset, UInt64(queueCount) * UInt64(m),
                                                  extra: (0..<4).map { UInt8(truncatingIfNeeded: m >> (8 * UInt32($0))) }))
        c.addCapability(id: 0x09, body: virtioCap(3, Self.isrOffset, 4))
        c.addCapability(id: 0x09, body: virtioCap(4, Self.deviceConfigOffset, Self.deviceConfigLength))
        // VIRTIO_PCI_CAP_PCI_CFG: a window into the BARs through configuration space. The guest
        // writes bar, offset and length, then reads or writes pci_cfg_data.
        var pciCfg = virtioCap(5, 0, 0, extra: [0, 0, 0, 0])
        pciCfg[2] = 0
        var pciCfgWritable = [UInt8](repeating: 0, count: pciCfg.count)
        pciCfgWritable[2] = 0xFF                                  // bar
        for i in 6..<18 { pciCfgWritable[i] = 0xFF }             // offset, length, data
        pciConfigCapability = c.addCapability(id: 0x09, body: pciCfg, writableBody: pciCfgWritable)

        transport = Mutex(Transport(config: c, queues: device.queueMaxSizes.map { VirtQueue(maxSize: $0) }))
        vectors = Mutex(Array(repeating: Self.noVector, count: queueCount + 1))
    }

    // MARK: PciDevice

    public var barState: (bars: [PciBar], memoryEnabled: Bool) {
        transport.withLock { ($0.config.bars, $0.config.memoryDecoding) }
    }

    public func assignBar(index: Int, address: UInt64) {
        transport.withLock { $0.config.setBarAddress(index: index, address: address) }
    }

    public func readConfig(offset: Int, size: Int) -> UInt32 {
        let dataOffset = pciConfigCapability + 16
        if offset == dataOffset, let (bar, barOffset, length) = pciConfigWindow(), length == size {
            return UInt32(truncatingIfNeeded: readBar(bar, offset: barOffset, size: size))
        }
        return transport.withLock { $0.config.read(offset: offset, size: size) }
    }

    public func writeConfig(offset: Int, size: Int, value: UInt32) {
        let control: UInt16? = transport.withLock { t in
            t.config.write(offset: offset, size: size, value: value)
            let c = msixCapability + 2
            return offset < c + 2 && offset + size > c ? t.config.get16(c) : nil
        }
        if let control { msix.setControl(control) }
        let dataOffset = pciConfigCapability + 16
        if offset == dataOffset, let (bar, barOffset, length) = pciConfigWindow(), length == size {
            writeBar(bar, offset: barOffset, size: size, value: UInt64(value))
        }
    }

    /// The VIRTIO_PCI_CAP_PCI_CFG window: BAR0 only, 1/2/4 bytes, naturally aligned.
    private func pciConfigWindow() -> (Int, UInt64, Int)? {
        transport.withLock { t in
            let cap = pciConfigCapability
            let bar = Int(t.config.bytes[cap + 4])
            let offset = UInt64(t.config.get32(cap + 8))
            let length = Int(t.config.get32(cap + 12))
            guard bar == 0, [1, 2, 4].contains(length), offset % UInt64(length) == 0,
                  offset + UInt64(length) <= Self.barSize else { return nil }
            return (bar, offset, length)
        }
    }

    public func readBar(_ index: Int, offset: UInt64, size: Int) -> UInt64 {
        guard index == 0 else { return 0 }
        switch offset {
        case Self.commonOffset..<Self.commonOffset + Self.commonLength:
            return readCommon(Int(offset - Self.commonOffset), size)
        case Self.isrOffset..<Self.isrOffset + 4:
            // Reading the ISR acknowledges it and deasserts INTx.
            guard offset == Self.isrOffset else { return 0 }
            let v = isr.exchange(0, ordering: .acquiringAndReleasing)
            if v != 0 { intx?.setLevel(false) }
            return UInt64(v)
        case Self.deviceConfigOffset..<Self.deviceConfigOffset + Self.deviceConfigLength:
            return device.readConfig(offset: Int(offset - Self.deviceConfigOffset), size: size)
        case Self.msixTableOffset..<Self.msixTableOffset + msix.tableSize:
            return msix.readTable(offset: offset - Self.msixTableOffset, size: size)
        case Self.msixPBAOffset..<Self.msixPBAOffset + msix.pbaSize:
            return msix.readPBA(offset: offset - Self.msixPBAOffset, size: size)
        default:
            return 0
        }
    }

    public func writeBar(_ index: Int, offset: UInt64, size: Int, value: UInt64) {
        guard index == 0 else { return }
        switch offset {
        case Self.commonOffset..<Self.commonOffset + Self.commonLength:
            writeCommon(Int(offset - Self.commonOffset), size, value)
        case Self.notifyOffset..<Self.notifyOffset + UInt64(device.queueMaxSizes.count) * UInt64(Self.notifyMultiplier):
            let queue = Int((offset - Self.notifyOffset) / UInt64(Self.notifyMultiplier))
            let running = transport.withLock { $0.active && $0.status & VirtioStatus.needsReset == 0 }
            if running { device.queueNotify(queue) }
        case Self.deviceConfigOffset..<Self.deviceConfigOffset + Self.deviceConfigLength:
            device.writeConfig(offset: Int(offset - Self.deviceConfigOffset), size: size, value: value)
        case Self.msixTableOffset..<Self.msixTableOffset + msix.tableSize:
            msix.writeTable(offset: offset - Self.msixTableOffset, size: size, value: value)
        default:
            break // ISR and PBA are read-only
        }
    }

    // MARK: common configuration (virtio 1.x 4.1.4.3)

    private func readCommon(_ offset: Int, _ size: Int) -> UInt64 {
        let vecs = vectors.withLock { $0 }
        let image: [UInt8] = transport.withLock { t in
            var b = VirtioConfigSpace(size: Int(Self.commonLength))
            b.set(t.deviceFeatureSelect, at: 0)
            let features = device.availableFeatures
            b.set(t.deviceFeatureSelect < 2 ? UInt32(truncatingIfNeeded: features >> (32 * UInt64(t.deviceFeatureSelect))) : 0, at: 4)
            b.set(t.driverFeatureSelect, at: 8)
            b.set(t.driverFeatureSelect < 2 ? UInt32(truncatingIfNeeded: t.driverFeatures >> (32 * UInt64(t.driverFeatureSelect))) : 0, at: 12)
            b.set(vecs[vecs.count - 1], at: 16)
            b.set(UInt16(t.queues.count), at: 18)
            b.set(t.status, at: 20)
            b.set(UInt8(0), at: 21) // config_generation: the device configuration never changes under the driver
            b.set(t.queueSelect, at: 22)
            let q = Int(t.queueSelect)
            if q < t.queues.count {
                let queue = t.queues[q]
                b.set(queue.size, at: 24)
                b.set(vecs[q], at: 26)
                b.set(UInt16(queue.ready ? 1 : 0), at: 28)
                b.set(t.queueSelect, at: 30) // queue_notify_off = queue index
                b.set(queue.descriptorTable.raw, at: 32)
                b.set(queue.availableRing.raw, at: 40)
                b.set(queue.usedRing.raw, at: 48)
            }
            return b.bytes
        }
        return VirtioConfigSpace(bytes: image).read(offset: offset, size: size)
    }

    private enum Action { case none, reset, activate(resets: UInt64), failed(String) }

    private func writeCommon(_ offset: Int, _ size: Int, _ value: UInt64) {
        let v32 = UInt32(truncatingIfNeeded: value)
        var action = Action.none
        transport.withLock { t in
            let q = Int(t.queueSelect)
            let queueValid = q < t.queues.count
            // Queue registers are frozen once the queue is enabled (4.1.4.3.2).
            let queueWritable = queueValid && !t.queues[q].ready
            switch (offset, size) {
            case (0, 4): t.deviceFeatureSelect = v32
            case (8, 4): t.driverFeatureSelect = v32
            case (12, 4):
                guard t.status & VirtioStatus.featuresOK == 0, t.driverFeatureSelect < 2 else { break }
                let shift = 32 * UInt64(t.driverFeatureSelect)
                t.driverFeatures = (t.driverFeatures & ~(0xFFFF_FFFF << shift)) | (UInt64(v32) << shift)
            case (16, 2):
                let n = t.queues.count
                vectors.withLock { $0[n] = UInt16(truncatingIfNeeded: value) < UInt16(n + 1) ? UInt16(truncatingIfNeeded: value) : Self.noVector }
            case (20, 1):
                action = statusWrite(&t, UInt8(truncatingIfNeeded: value))
            case (22, 2): t.queueSelect = UInt16(truncatingIfNeeded: value)
            case (24, 2) where queueWritable: t.queues[q].size = UInt16(truncatingIfNeeded: value)
            case (26, 2) where queueValid:
                let n = t.queues.count
                vectors.withLock { $0[q] = UInt16(truncatingIfNeeded: value) < UInt16(n + 1) ? UInt16(truncatingIfNeeded: value) : Self.noVector }
            case (28, 2) where queueWritable:
                if value & 1 == 1 { t.queues[q].ready = true } // writing 0 is not allowed; ignore it
            case (32..<56, 4), (32..<56, 8):
                guard queueWritable, offset % size == 0 else { break }
                let field = (offset - 32) / 8
                let shift = UInt64((offset - 32) % 8) * 8
                let mask: UInt64 = size == 8 ? UInt64.max : 0xFFFF_FFFF << shift
                func merge(_ a: GuestAddress) -> GuestAddress { GuestAddress((a.raw & ~mask) | ((value << shift) & mask)) }
                switch field {
                case 0: t.queues[q].descriptorTable = merge(t.queues[q].descriptorTable)
                case 1: t.queues[q].availableRing = merge(t.queues[q].availableRing)
                default: t.queues[q].usedRing = merge(t.queues[q].usedRing)
                }
            default:
                break // read-only fields and wrong-size accesses are ignored
            }
        }
        perform(action)
    }

    /// Status transitions; returns what to do once the lock is released.
    private func statusWrite(_ t: inout Transport, _ new: UInt8) -> Action {
        if new == 0 { return .reset }
        // Bits only get set, never cleared, except by reset.
        var status = t.status | new
        if new & VirtioStatus.featuresOK != 0 && t.status & VirtioStatus.featuresOK == 0 {
            let offered = device.availableFeatures
            let acceptable = t.driverFeatures & ~offered == 0 && t.driverFeatures & VirtioFeature.version1 != 0
            // Leaving FEATURES_OK clear tells the driver the subset is not supported.
            if !acceptable { status &= ~VirtioStatus.featuresOK }
        }
        let starting = new & VirtioStatus.driverOK != 0 && t.status & VirtioStatus.driverOK == 0
        t.status = status
        guard starting else { return .none }
        guard status & VirtioStatus.featuresOK != 0 else { return .failed("DRIVER_OK without FEATURES_OK") }
        return .activate(resets: t.resets)
    }

    private func perform(_ action: Action) {
        switch action {
        case .none: return
        case .reset: reset()
        case let .failed(reason): deviceNeedsReset(reason: "\(name): \(reason)")
        case let .activate(resets):
            lifecycle.withLock { _ in activate(ifNoResetSince: resets) }
        }
    }

    /// Starts the device unless it was reset since the driver set DRIVER_OK (another vCPU's
    /// reset won the race: the device stays reset). Runs under `lifecycle`.
    private func activate(ifNoResetSince resets: UInt64) {
        let current = transport.withLock { t -> (UInt64, [VirtQueue])? in
            guard t.resets == resets else { return nil }
            return (t.driverFeatures, t.queues.map { q in var q = q; q.setFeatures(t.driverFeatures); return q })
        }
        guard let (features, queues) = current else { return }
        do {
            for (i, q) in queues.enumerated() where q.ready {
                do { try q.validate(memory: memory) } catch { throw ActivationError(reason: "queue \(i): \(error)") }
            }
            try device.activate(VirtioActivation(memory: memory, features: features, queues: queues,
                                                 interrupt: VirtioPciInterrupt(transport: self)))
            transport.withLock { $0.active = true }
            attachDoorbells(queues: queues)
        } catch {
            deviceNeedsReset(reason: "\(name): cannot start: \(error)")
        }
    }

    /// Hands the enabled queues' doorbells (at BAR0's current address) to the notify offload.
    /// Runs under `lifecycle`.
    func attachDoorbells(queues: [VirtQueue]) {
        guard let notifyOffload else { return }
        let bar = transport.withLock { $0.config.bars.first { $0.index == 0 }?.address ?? 0 }
        let device = self.device
        let doorbells = queues.indices.filter { queues[$0].ready }.map { q in
            (queue: q, address: bar + Self.notifyOffset + UInt64(q) * UInt64(Self.notifyMultiplier))
        }
        notifyOffload.attach(name, doorbells: doorbells) { device.queueNotify($0) }
    }

    struct ActivationError: Error, CustomStringConvertible { let reason: String; var description: String { reason } }

    /// Device reset (status 0), also used when the VMM resets the machine.
    public func reset() {
        lifecycle.withLock { _ in resetDevice() }
        vectors.withLock { v in for i in v.indices { v[i] = Self.noVector } }
        if isr.exchange(0, ordering: .acquiringAndReleasing) != 0 { intx?.setLevel(false) }
    }

    /// The device and transport part of a reset. Runs under `lifecycle`.
    func resetDevice() {
        notifyOffload?.detach(name)
        device.reset()
        transport.withLock { t in
            t.resets &+= 1
            t.status = 0
            t.driverFeatures = 0
            t.deviceFeatureSelect = 0
            t.driverFeatureSelect = 0
            t.queueSelect = 0
            t.active = false
            for i in t.queues.indices { t.queues[i].reset() }
        }
    }

    // MARK: interrupts

    func signal(vector: UInt16, isrBit: UInt8) {
        if msix.isEnabled {
            if vector != Self.noVector { msix.signal(vector: Int(vector)) }
            return
        }
        // INTx: level-triggered, held until the driver reads the ISR.
        isr.bitwiseOr(isrBit, ordering: .acquiringAndReleasing)
        if let intx, transport.withLock({ $0.config.command & PciRegister.commandINTxDisable == 0 }) { intx.setLevel(true) }
    }

    func signalQueue(_ queue: Int) {
        let vector = vectors.withLock { queue < $0.count - 1 ? $0[queue] : Self.noVector }
        signal(vector: vector, isrBit: 1)
    }

    func signalConfig() {
        let vector = vectors.withLock { $0[$0.count - 1] }
        signal(vector: vector, isrBit: 2)
    }

    func deviceNeedsReset(reason: String) {
        onError(reason)
        let notify = transport.withLock { t -> Bool in
            t.status |= VirtioStatus.needsReset
            return t.status & VirtioStatus.driverOK != 0
        }
        if notify { signalConfig() }
    }

    /// The status register, for tests and diagnostics.
    public var status: UInt8 { transport.withLock { $0.status } }
}

/// Delivers queue notifications without a trip through the vCPU loop: the VMM registers each
/// doorbell address with KVM (ioeventfd) and calls `handler(queue)` from its own thread.
public protocol NotifyOffload: Sendable {
    func attach(_ device: String, doorbells: [(queue: Int, address: UInt64)], handler: @escaping @Sendable (Int) -> Void)
    func detach(_ device: String)
}

/// The interrupt handle a device gets at activation.
struct VirtioPciInterrupt: VirtioInterrupt {
    let transport: VirtioPciDevice
    func signalUsedQueue(_ queue: Int) { transport.signalQueue(queue) }
    func signalConfigChange() { transport.signalConfig() }
    func deviceNeedsReset(reason: String) { transport.deviceNeedsReset(reason: reason) }
}
