import Memory
import Synchronization
import Virtio

/// Snapshots of a virtio-pci function: the VMM pauses the device, saves its state, and later
/// restores it into a freshly built device for the same definition, then resumes it.
extension VirtioPciDevice {
    /// The transport's registers, its interrupt state, and the device's queues as the device
    /// holds them. Device-specific configuration (capacity, MAC) is rebuilt from the VM
    /// definition, not saved.
    public struct SavedState: Codable, Sendable, Equatable {
        public var config: PciConfigSpace
        public var deviceFeatureSelect: UInt32
        public var driverFeatureSelect: UInt32
        public var driverFeatures: UInt64
        /// What the saved device offered: for the error when this one offers less.
        public var availableFeatures: UInt64
        public var status: UInt8
        public var queueSelect: UInt16
        /// The queue registers as the transport holds them (indices stay 0 there).
        public var queues: [VirtQueue.SavedState]
        /// The device was activated (DRIVER_OK, and it started).
        public var active: Bool
        /// The active device's queues, indices included; nil when not active.
        public var deviceQueues: [VirtQueue.SavedState]?
        /// MSI-X vector per queue, then the configuration-change vector.
        public var vectors: [UInt16]
        public var isr: UInt8
        public var msix: MsixTable.SavedState

        public init(config: PciConfigSpace, deviceFeatureSelect: UInt32, driverFeatureSelect: UInt32, driverFeatures: UInt64,
                    availableFeatures: UInt64, status: UInt8, queueSelect: UInt16, queues: [VirtQueue.SavedState],
                    active: Bool, deviceQueues: [VirtQueue.SavedState]?, vectors: [UInt16], isr: UInt8,
                    msix: MsixTable.SavedState) {
            self.config = config; self.deviceFeatureSelect = deviceFeatureSelect; self.driverFeatureSelect = driverFeatureSelect
            self.driverFeatures = driverFeatures; self.availableFeatures = availableFeatures; self.status = status
            self.queueSelect = queueSelect; self.queues = queues; self.active = active; self.deviceQueues = deviceQueues
            self.vectors = vectors; self.isr = isr; self.msix = msix
        }
    }

    /// A saved state this device cannot take; `description` names the device and the field.
    public struct RestoreError: Error, Equatable, CustomStringConvertible {
        public let device: String
        public let reason: String
        public var description: String { "\(device): \(reason)" }
    }

    /// Stops the device touching guest memory (see `VirtioDevice.pause()`). The VMM pauses the
    /// notify offload itself.
    public func pause() { device.pause() }

    public func resume() { device.resume() }

    /// The state to save; call it while the device is paused (and the vCPUs are stopped).
    public func saveState() -> SavedState {
        lifecycle.withLock { _ in
            let t = transport.withLock { $0 }
            let deviceQueues = t.active ? device.queueStates()?.map { $0.saveState() } : nil
            return SavedState(config: t.config, deviceFeatureSelect: t.deviceFeatureSelect,
                              driverFeatureSelect: t.driverFeatureSelect, driverFeatures: t.driverFeatures,
                              availableFeatures: device.availableFeatures, status: t.status, queueSelect: t.queueSelect,
                              queues: t.queues.map { $0.saveState() }, active: t.active, deviceQueues: deviceQueues,
                              vectors: vectors.withLock { $0 }, isr: isr.load(ordering: .acquiring), msix: msix.saveState())
        }
    }

    /// Takes over a saved function, on a device built for the same definition and not started
    /// by a guest yet: configuration space (BAR addresses included: then call
    /// `PciRoot.restoreState` or `refreshBarDecoding()`), MSI-X table (routing every vector
    /// through the sink), vectors and ISR (INTx asserted again if the ISR is set), and, if it
    /// was active, the device started with the saved queues, indices included, and its doorbells
    /// attached to the notify offload. The device is left paused: call `resume()` once the VM's
    /// interrupt controllers are restored.
    ///
    /// Everything is checked before anything changes; a state that does not fit (another
    /// definition, features this device does not offer, a corrupt or hostile file) throws an
    /// error naming the device and the field, and leaves the device reset.
    public func restoreState(_ saved: SavedState) throws {
        try lifecycle.withLock { _ in
            device.pause()
            resetDevice()
            let pristine = transport.withLock { $0.config }
            do {
                let plan = try check(saved, against: pristine)
                try apply(saved, plan)
            } catch {
                resetDevice()
                transport.withLock { $0.config = pristine }
                vectors.withLock { v in for i in v.indices { v[i] = Self.noVector } }
                msix.reset()
                if isr.exchange(0, ordering: .acquiringAndReleasing) != 0 { intx?.setLevel(false) }
                throw error
            }
        }
    }

    /// What a checked state restores to.
    private struct RestorePlan {
        var config: PciConfigSpace
        var queues: [VirtQueue]
        /// The device's queues when active, ring features applied.
        var deviceQueues: [VirtQueue]?
    }

    private func check(_ saved: SavedState, against pristine: PciConfigSpace) throws(RestoreError) -> RestorePlan {
        func refuse(_ reason: String) -> RestoreError { RestoreError(device: name, reason: reason) }
        func hex(_ v: some BinaryInteger) -> String { "0x" + String(v, radix: 16) }
        let maxSizes = device.queueMaxSizes
        let count = maxSizes.count

        guard saved.queues.count == count else {
            throw refuse("the snapshot has \(saved.queues.count) queues, this device has \(count)")
        }
        guard saved.vectors.count == count + 1 else {
            throw refuse("the snapshot has \(saved.vectors.count) MSI-X vector assignments, this device has \(count + 1)")
        }
        for (i, v) in saved.vectors.enumerated() where v != Self.noVector && Int(v) > count {
            throw refuse("\(i < count ? "queue \(i)" : "configuration") MSI-X vector \(v) does not exist (\(count + 1) vectors)")
        }
        guard saved.msix.entries.count == msix.vectorCount, saved.msix.pending.count == msix.vectorCount else {
            throw refuse("MSI-X table of \(saved.msix.entries.count) entries and \(saved.msix.pending.count) pending bits, this device has \(msix.vectorCount)")
        }
        var config = pristine
        do { try config.restore(from: saved.config) } catch { throw refuse("PCI configuration: \(error)") }
        let control = config.get16(msixCapability + 2)
        guard (control & MsixTable.controlEnable != 0) == saved.msix.enabled,
              (control & MsixTable.controlFunctionMask != 0) == saved.msix.functionMasked else {
            throw refuse("MSI-X enable and function mask differ between the configuration space (\(hex(control))) and the table")
        }
        if saved.status & VirtioStatus.featuresOK != 0 {
            let missing = saved.driverFeatures & ~device.availableFeatures
            guard missing == 0 else {
                throw refuse("the snapshot negotiated features \(hex(missing)) this device does not offer "
                             + "(the saved device offered \(hex(saved.availableFeatures)), this one offers \(hex(device.availableFeatures)))")
            }
        }
        // The transport's queue registers are what the driver wrote, checked when it starts the
        // device (as for any driver), so any value is taken here.
        let queues = zip(saved.queues, maxSizes).map { Self.registers($0, maxSize: $1) }

        guard saved.active else { return RestorePlan(config: config, queues: queues, deviceQueues: nil) }
        guard saved.status & (VirtioStatus.driverOK | VirtioStatus.featuresOK) == VirtioStatus.driverOK | VirtioStatus.featuresOK else {
            throw refuse("the snapshot's device is active with status \(hex(saved.status)) (no DRIVER_OK and FEATURES_OK)")
        }
        guard let live = saved.deviceQueues, live.count == count else {
            throw refuse("the snapshot's active device has \(saved.deviceQueues.map { "\($0.count)" } ?? "no") queue states, this device has \(count) queues")
        }
        var deviceQueues: [VirtQueue] = []
        for (i, s) in live.enumerated() {
            let registers = queues[i]
            guard s.ready == registers.ready, s.size == registers.size, s.descriptorTable == registers.descriptorTable.raw,
                  s.availableRing == registers.availableRing.raw, s.usedRing == registers.usedRing.raw else {
                throw refuse("queue \(i): the device's queue differs from the transport's registers")
            }
            var q: VirtQueue
            if s.ready {
                do {
                    q = try VirtQueue(restoring: s, maxSize: maxSizes[i])
                    try q.validate(memory: memory)
                } catch { throw refuse("queue \(i): \(error)") }
            } else {
                q = registers
            }
            // Derived from the negotiated features, as at activation.
            q.setFeatures(saved.driverFeatures)
            deviceQueues.append(q)
        }
        return RestorePlan(config: config, queues: queues, deviceQueues: deviceQueues)
    }

    /// A queue's registers as the driver left them; its indices stay at 0, as the transport's do.
    private static func registers(_ s: VirtQueue.SavedState, maxSize: UInt16) -> VirtQueue {
        var q = VirtQueue(maxSize: maxSize)
        q.size = s.size
        q.ready = s.ready
        q.descriptorTable = GuestAddress(s.descriptorTable)
        q.availableRing = GuestAddress(s.availableRing)
        q.usedRing = GuestAddress(s.usedRing)
        return q
    }

    /// Applies a checked state. Runs under `lifecycle`, with the device paused and reset.
    private func apply(_ saved: SavedState, _ plan: RestorePlan) throws {
        transport.withLock { t in
            t.config = plan.config
            t.deviceFeatureSelect = saved.deviceFeatureSelect
            t.driverFeatureSelect = saved.driverFeatureSelect
            t.driverFeatures = saved.driverFeatures
            t.status = saved.status
            t.queueSelect = saved.queueSelect
            t.queues = plan.queues
        }
        vectors.withLock { $0 = saved.vectors }
        do { try msix.restoreState(saved.msix) } catch { throw RestoreError(device: name, reason: "\(error)") }
        if let queues = plan.deviceQueues {
            do {
                try device.activate(VirtioActivation(memory: memory, features: saved.driverFeatures, queues: queues,
                                                     interrupt: VirtioPciInterrupt(transport: self)))
            } catch { throw RestoreError(device: name, reason: "cannot start: \(error)") }
            transport.withLock { $0.active = true }
            attachDoorbells(queues: queues)
        }
        // INTx is level-triggered and held while the ISR is set: the line goes up again as it was.
        isr.store(saved.isr, ordering: .releasing)
        if saved.isr != 0, let intx, plan.config.command & PciRegister.commandINTxDisable == 0 { intx.setLevel(true) }
    }
}
