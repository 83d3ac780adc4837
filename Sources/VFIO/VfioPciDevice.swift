import PCI
import Synchronization
import SystemPackage

/// What a passthrough device needs from the VMM, which implements it with KVM (memory slots,
/// irqfds, GSI routes). Unit tests and `rtvisor-vfio-check` implement it without KVM.
public protocol PassthroughPlatform: Sendable {
    /// Maps host memory (an mmap'd piece of a BAR) at a guest-physical address; returns a handle.
    func mapMMIO(guestAddress: UInt64, size: UInt64, host: UnsafeMutableRawPointer, label: String) throws -> Int
    func unmapMMIO(_ handle: Int)
    /// `count` interrupt vectors: each an eventfd VFIO signals, delivered as the MSI its route says.
    func makeVectors(count: Int, device: String) throws -> [any PassthroughVector]
    /// The INTx line on IOAPIC pin `pin`: VFIO signals `trigger`; the VMM signals `resample` when
    /// the guest ends the interrupt (EOI), which VFIO takes as "unmask".
    func makeINTx(pin: UInt32, device: String) throws -> (trigger: Int32, resample: Int32)
}

public protocol PassthroughVector: Sendable {
    var eventfd: Int32 { get }
    /// Delivers the vector's signals as `message`; nil detaches it (signals wait in the eventfd
    /// and arrive when it is attached again, which is how masking keeps them pending).
    func route(_ message: MsiMessage?)
}

/// A host PCI function passed through to the guest (VFIO). Configuration space is the device's
/// own except what must be virtual: the BARs (the guest places them), the ROM BAR (hidden), the
/// interrupt line, the MSI capability and the MSI-X message control. Mappable BAR areas are
/// mmap'd and become KVM memory slots; the MSI-X table and PBA, and whatever the kernel does not
/// let us map, trap to `readBar`/`writeBar`.
public final class VfioPciDevice: PciDevice, @unchecked Sendable {
    public let name: String
    public let vfio: VFIODevice
    let platform: any PassthroughPlatform
    let onError: @Sendable (String) -> Void

    struct MsiCapability {
        var offset: Int
        var is64Bit: Bool
        var perVectorMask: Bool
        var maxVectors: Int
        var dataOffset: Int { offset + (is64Bit ? 0x0C : 0x08) }
        var maskOffset: Int { offset + (is64Bit ? 0x10 : 0x0C) }
        var length: Int { (is64Bit ? 0x0E : 0x0A) + (perVectorMask ? 0x0A : 0) }
    }
    struct MsixCapability {
        var offset: Int
        var tableBar: Int, tableOffset: UInt64
        var pbaBar: Int, pbaOffset: UInt64
    }
    /// One mmap'd piece of a BAR.
    struct MappedArea {
        var bar: Int
        var offset: UInt64
        var size: UInt64
        var host: UnsafeMutableRawPointer
        /// Where it is mapped in the guest now (guest address, platform handle).
        var mapped: (address: UInt64, handle: Int)?
    }
    enum InterruptMode: Equatable { case none, intx, msi, msix }

    struct State {
        /// Only the BAR registers of this space are used (sizing and placement semantics).
        var bars: PciConfigSpace
        var command: UInt16 = 0
        /// Virtual bytes of configuration space: offset → value, with their write masks.
        var overlay: [Int: UInt8] = [:]
        var overlayWritable: [Int: UInt8] = [:]
        var areas: [MappedArea] = []
        var mode: InterruptMode = .none
        var msiVectorsEnabled = 0
        var stopped = false
    }
    private let state: Mutex<State>
    let msi: MsiCapability?
    let msix: MsixCapability?
    /// The MSI-X table emulation (nil without MSI-X).
    public let msixTable: MsixTable?
    let msixVectors: [any PassthroughVector]
    let msiVectors: [any PassthroughVector]
    let intx: (trigger: Int32, resample: Int32)?
    /// Interrupt pin (1 = INTA#) the guest sees; 0 without INTx.
    public let interruptPin: UInt8

    /// Reads the device's config space and regions and prepares the virtual view. `intxPin` is
    /// the IOAPIC pin for INTx (the guest sees it in the interrupt line register).
    public init(name: String, device: VFIODevice, platform: any PassthroughPlatform, intxPin: UInt8,
                onError: @escaping @Sendable (String) -> Void) throws {
        self.name = name
        self.vfio = device
        self.platform = platform
        self.onError = onError
        var config = [UInt8](repeating: 0, count: 256)
        for o in stride(from: 0, to: 256, by: 4) {
            let v = try device.readConfig(offset: o, size: 4)
            for i in 0..<4 { config[o + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))) }
        }
        func c16(_ o: Int) -> UInt16 { UInt16(config[o]) | UInt16(config[o + 1]) << 8 }
        func c32(_ o: Int) -> UInt32 { UInt32(c16(o)) | UInt32(c16(o + 2)) << 16 }
        guard c16(0) != 0xFFFF else { throw VFIOError("\(device.address): config space reads all-ones (device gone or powered off)") }
        guard config[PciRegister.headerType] & 0x7F == 0 else {
            throw VFIOError("\(device.address): header type \(config[PciRegister.headerType] & 0x7F) (a bridge); only endpoints can be passed through")
        }

        // BARs: sizes from VFIO's regions, type bits from the device's registers.
        var bars = PciConfigSpace(identity: .init(vendorID: 0, deviceID: 0, classCode: 0))
        var index = 0
        while index < 6 {
            let raw = c32(PciRegister.bar0 + 4 * index)
            let is64 = raw & 0x1 == 0 && (raw >> 1) & 0x3 == 0x2
            defer { index += is64 ? 2 : 1 }
            guard let region = device.regions[index], region.size >= 16, region.size & (region.size - 1) == 0 else { continue }
            // I/O BARs are not offered: PIO passthrough would need every access trapped, and
            // devices worth passing through have memory BARs (docs/vfio.md).
            if raw & 0x1 != 0 { continue }
            bars.addBar(PciBar(index: index, kind: is64 && index < 5 ? .memory64 : .memory32, size: region.size, prefetchable: raw & 0x8 != 0))
        }

        // Capabilities.
        var msi: MsiCapability? = nil
        var msix: MsixCapability? = nil
        if c16(PciRegister.status) & PciRegister.statusCapabilities != 0 {
            var at = Int(config[PciRegister.capabilitiesPointer] & 0xFC)
            var seen = 0
            while at >= 0x40 && at < 0xFF && seen < 48 {
                seen += 1
                switch config[at] {
                case 0x05:
                    let control = c16(at + 2)
                    msi = MsiCapability(offset: at, is64Bit: control & 0x80 != 0, perVectorMask: control & 0x100 != 0,
                                        maxVectors: 1 << Int((control >> 1) & 0x7))
                case 0x11:
                    let table = c32(at + 4), pba = c32(at + 8)
                    msix = MsixCapability(offset: at, tableBar: Int(table & 7), tableOffset: UInt64(table & ~7),
                                          pbaBar: Int(pba & 7), pbaOffset: UInt64(pba & ~7))
                default: break
                }
                at = Int(config[at + 1] & 0xFC)
            }
        }

        // Interrupts the kernel offers for each mode.
        let msixCount = msix != nil ? (device.irqInfo(VFIOPci.msixIRQ)?.count ?? 0) : 0
        let msiCount = msi != nil ? min(device.irqInfo(VFIOPci.msiIRQ)?.count ?? 0, msi!.maxVectors) : 0
        let hasINTx = config[PciRegister.interruptPin] != 0 && (device.irqInfo(VFIOPci.intxIRQ)?.count ?? 0) > 0
        if msix != nil && msixCount == 0 { msix = nil }
        if msi != nil && msiCount == 0 { msi = nil }
        self.msi = msi
        self.msix = msix
        msixVectors = msixCount > 0 ? try platform.makeVectors(count: msixCount, device: name) : []
        msiVectors = msiCount > 0 ? try platform.makeVectors(count: msiCount, device: name) : []
        intx = hasINTx ? try platform.makeINTx(pin: UInt32(intxPin), device: name) : nil
        interruptPin = hasINTx ? config[PciRegister.interruptPin] : 0
        msixTable = msixCount > 0 ? MsixTable(vectorCount: msixCount, sink: VectorSink(vectors: msixVectors)) : nil

        var s = State(bars: bars)
        s.command = c16(PciRegister.command)
        // The ROM BAR reads as absent: option ROMs are firmware's business, not a booted kernel's.
        for o in 0x30..<0x34 { s.overlay[o] = 0; s.overlayWritable[o] = 0 }
        s.overlay[PciRegister.interruptLine] = hasINTx ? intxPin : 0xFF
        s.overlayWritable[PciRegister.interruptLine] = 0xFF
        s.overlay[PciRegister.interruptPin] = interruptPin
        s.overlayWritable[PciRegister.interruptPin] = 0
        if let msi {
            // The guest programs a virtual MSI capability; the host kernel owns the real one.
            for o in (msi.offset + 2)..<(msi.offset + msi.length) { s.overlay[o] = 0; s.overlayWritable[o] = 0 }
            var control = c16(msi.offset + 2) & ~0x71  // disabled, one vector enabled
            // Advertise only as many vectors as VFIO can deliver.
            control = (control & ~0x0E) | UInt16(msiCount.trailingZeroBitCount << 1)
            s.overlay[msi.offset + 2] = UInt8(control & 0xFF); s.overlay[msi.offset + 3] = UInt8(control >> 8)
            s.overlayWritable[msi.offset + 2] = 0x71 // enable, multiple message enable
            for o in (msi.offset + 4)..<(msi.offset + 8) { s.overlayWritable[o] = 0xFF }
            s.overlayWritable[msi.offset + 4] = 0xFC
            if msi.is64Bit { for o in (msi.offset + 8)..<(msi.offset + 12) { s.overlayWritable[o] = 0xFF } }
            for o in msi.dataOffset..<(msi.dataOffset + 2) { s.overlayWritable[o] = 0xFF }
            if msi.perVectorMask { for o in msi.maskOffset..<(msi.maskOffset + 4) { s.overlayWritable[o] = 0xFF } }
        }
        if let msix {
            let control = c16(msix.offset + 2) & 0x07FF  // table size; enable and function mask virtual
            s.overlay[msix.offset + 2] = UInt8(control & 0xFF); s.overlay[msix.offset + 3] = UInt8(control >> 8)
            s.overlayWritable[msix.offset + 2] = 0; s.overlayWritable[msix.offset + 3] = 0xC0
        }

        // mmap what the kernel allows, minus the MSI-X table and PBA pages, page-aligned.
        let page: UInt64 = 4096
        for bar in bars.bars {
            guard let region = device.regions[bar.index] else { continue }
            var holes: [(UInt64, UInt64)] = []
            if let msix, let table = msixTable {
                if msix.tableBar == bar.index { holes.append((msix.tableOffset & ~(page - 1), (msix.tableOffset + table.tableSize + page - 1) & ~(page - 1))) }
                if msix.pbaBar == bar.index { holes.append((msix.pbaOffset & ~(page - 1), (msix.pbaOffset + table.pbaSize + page - 1) & ~(page - 1))) }
            }
            for area in region.mappableAreas {
                var pieces = [(start: (area.offset + page - 1) & ~(page - 1), end: (area.offset + area.size) & ~(page - 1))]
                for (hs, he) in holes {
                    pieces = pieces.flatMap { p -> [(start: UInt64, end: UInt64)] in
                        guard hs < p.end && he > p.start else { return [p] }
                        return [(p.start, min(p.end, hs)), (max(p.start, he), p.end)].filter { $0.0 < $0.1 }
                    }
                }
                for p in pieces where p.start < p.end {
                    let host = try device.kernel.mmap(device.fd, offset: region.offset + p.start, size: p.end - p.start)
                    s.areas.append(MappedArea(bar: bar.index, offset: p.start, size: p.end - p.start, host: host, mapped: nil))
                }
            }
        }
        state = Mutex(s)
    }

    struct VectorSink: MsiVectorSink {
        let vectors: [any PassthroughVector]
        func route(vector: Int, message: MsiMessage?) { vectors[vector].route(message) }
        func fire(vector: Int) {} // the hardware raises its vectors; nothing is emulated
    }

    // MARK: lifecycle

    /// Device reset, then INTx armed (the state a guest finds at power-on).
    public func start() throws {
        try vfio.reset()
        if intx != nil { try state.withLock { s in try setMode(.intx, &s) } }
    }

    /// Interrupts off, BAR slots and mmaps released, device reset and closed. Idempotent.
    public func stop() {
        state.withLock { s in
            guard !s.stopped else { return }
            s.stopped = true
            try? setMode(.none, &s)
            for i in s.areas.indices {
                if let m = s.areas[i].mapped { platform.unmapMMIO(m.handle) }
                vfio.kernel.munmap(s.areas[i].host, size: s.areas[i].size)
            }
            s.areas = []
        }
        _ = try? vfio.reset()
        vfio.close()
    }

    // MARK: PciDevice

    public var barState: (bars: [PciBar], memoryEnabled: Bool) {
        state.withLock { ($0.bars.bars, $0.command & PciRegister.commandMemory != 0) }
    }

    public func assignBar(index: Int, address: UInt64) {
        state.withLock { s in
            s.bars.setBarAddress(index: index, address: address)
            remap(&s)
        }
    }

    /// The guest-physical address each mapped BAR area is at (tests and logs).
    public var mappedAreas: [(bar: Int, offset: UInt64, size: UInt64, guestAddress: UInt64?)] {
        state.withLock { $0.areas.map { ($0.bar, $0.offset, $0.size, $0.mapped?.address) } }
    }

    public func readConfig(offset: Int, size: Int) -> UInt32 {
        guard offset >= 0, size > 0, size <= 4, offset + size <= 256 else { return UInt32.max }
        return state.withLock { s in
            if offset >= PciRegister.bar0 && offset < PciRegister.bar0 + 24 { return s.bars.read(offset: offset, size: size) }
            var live: UInt32 = 0
            if (offset..<(offset + size)).contains(where: { s.overlay[$0] == nil }) {
                do { live = try vfio.readConfig(offset: offset, size: size) } catch {
                    onError("\(name): config read at 0x\(String(offset, radix: 16)): \(error)")
                    return UInt32.max
                }
            }
            var v: UInt32 = 0
            for i in 0..<size {
                let b = s.overlay[offset + i] ?? UInt8(truncatingIfNeeded: live >> (8 * UInt32(i)))
                v |= UInt32(b) << (8 * UInt32(i))
            }
            return v
        }
    }

    public func writeConfig(offset: Int, size: Int, value: UInt32) {
        guard offset >= 0, size > 0, size <= 4, offset + size <= 256 else { return }
        state.withLock { s in
            if offset >= PciRegister.bar0 && offset < PciRegister.bar0 + 24 {
                s.bars.write(offset: offset, size: size, value: value)
                remap(&s)
                return
            }
            // Virtual bytes take the write through their mask; the rest goes to the device (the
            // kernel's vfio-pci filters what a user may change there).
            var passStart: Int? = nil
            func flush(_ end: Int) {
                guard let start = passStart else { return }
                passStart = nil
                let len = end - start
                let v = (value >> (8 * UInt32(start - offset))) & (len == 4 ? UInt32.max : (1 << (8 * UInt32(len))) - 1)
                // Unaligned remainders are written byte by byte (config space is byte-addressable).
                if len == 3 {
                    for k in 0..<3 { try? vfio.writeConfig(offset: start + k, size: 1, value: (v >> (8 * UInt32(k))) & 0xFF) }
                } else {
                    do { try vfio.writeConfig(offset: start, size: len, value: v) } catch {
                        onError("\(name): config write at 0x\(String(start, radix: 16)): \(error)")
                    }
                }
            }
            for i in 0..<size {
                let o = offset + i
                let b = UInt8(truncatingIfNeeded: value >> (8 * UInt32(i)))
                if let current = s.overlay[o] {
                    flush(o)
                    let m = s.overlayWritable[o] ?? 0
                    s.overlay[o] = (current & ~m) | (b & m)
                } else if passStart == nil {
                    passStart = o
                }
            }
            flush(offset + size)
            let touched = offset..<(offset + size)
            if touched.overlaps(PciRegister.command..<(PciRegister.command + 2)) {
                // Keep our copy of the command register: memory decoding decides the BAR slots.
                var command = s.command
                for i in 0..<size where offset + i == PciRegister.command || offset + i == PciRegister.command + 1 {
                    let shift = UInt16(8 * (offset + i - PciRegister.command))
                    command = (command & ~(0xFF << shift)) | (UInt16(truncatingIfNeeded: value >> (8 * UInt32(i))) & 0xFF) << shift
                }
                s.command = command
                remap(&s)
            }
            if let msi, touched.overlaps(msi.offset..<(msi.offset + msi.length)) { msiChanged(&s) }
            if let msix, touched.overlaps((msix.offset + 2)..<(msix.offset + 4)) { msixChanged(&s) }
        }
    }

    public func readBar(_ index: Int, offset: UInt64, size: Int) -> UInt64 {
        if let msix, let table = msixTable {
            if index == msix.tableBar && offset >= msix.tableOffset && offset < msix.tableOffset + table.tableSize {
                return table.readTable(offset: offset - msix.tableOffset, size: size)
            }
            if index == msix.pbaBar && offset >= msix.pbaOffset && offset < msix.pbaOffset + table.pbaSize {
                return table.readPBA(offset: offset - msix.pbaOffset, size: size)
            }
        }
        guard let region = vfio.regions[index], offset + UInt64(size) <= region.size, [1, 2, 4, 8].contains(size) else {
            return size >= 8 ? UInt64.max : (1 << (8 * UInt64(size))) - 1
        }
        do { return try vfio.kernel.readInteger(vfio.fd, offset: region.offset + offset, size: size) } catch {
            onError("\(name): BAR\(index) read at 0x\(String(offset, radix: 16)): \(error)")
            return size >= 8 ? UInt64.max : (1 << (8 * UInt64(size))) - 1
        }
    }

    public func writeBar(_ index: Int, offset: UInt64, size: Int, value: UInt64) {
        if let msix, let table = msixTable {
            if index == msix.tableBar && offset >= msix.tableOffset && offset < msix.tableOffset + table.tableSize {
                table.writeTable(offset: offset - msix.tableOffset, size: size, value: value)
                return
            }
            if index == msix.pbaBar && offset >= msix.pbaOffset && offset < msix.pbaOffset + table.pbaSize { return }
        }
        guard let region = vfio.regions[index], offset + UInt64(size) <= region.size, [1, 2, 4, 8].contains(size) else { return }
        do { try vfio.kernel.writeInteger(vfio.fd, offset: region.offset + offset, size: size, value: value) } catch {
            onError("\(name): BAR\(index) write at 0x\(String(offset, radix: 16)): \(error)")
        }
    }

    // MARK: BAR slots

    /// Puts every mmap'd area where its BAR is now (or nowhere while decoding is off).
    private func remap(_ s: inout State) {
        guard !s.stopped else { return }
        let decoding = s.command & PciRegister.commandMemory != 0
        for i in s.areas.indices {
            let area = s.areas[i]
            var want: UInt64? = nil
            if decoding, let bar = s.bars.bars.first(where: { $0.index == area.bar }), bar.address != 0 { want = bar.address + area.offset }
            if area.mapped?.address == want { continue }
            if let m = area.mapped { platform.unmapMMIO(m.handle); s.areas[i].mapped = nil }
            if let want {
                do {
                    let handle = try platform.mapMMIO(guestAddress: want, size: area.size, host: area.host, label: "\(name) BAR\(area.bar)+0x\(String(area.offset, radix: 16))")
                    s.areas[i].mapped = (want, handle)
                } catch {
                    // Accesses still work, through the trap path.
                    onError("\(name): mapping BAR\(area.bar) at 0x\(String(want, radix: 16)): \(error)")
                }
            }
        }
    }

    // MARK: interrupts

    private func overlay16(_ s: State, _ o: Int) -> UInt16 { UInt16(s.overlay[o] ?? 0) | UInt16(s.overlay[o + 1] ?? 0) << 8 }
    private func overlay32(_ s: State, _ o: Int) -> UInt32 { UInt32(overlay16(s, o)) | UInt32(overlay16(s, o + 2)) << 16 }

    private func msiChanged(_ s: inout State) {
        guard let msi else { return }
        let control = overlay16(s, msi.offset + 2)
        let enabled = control & 1 != 0
        if enabled {
            let wanted = min(1 << Int((control >> 4) & 0x7), msiVectors.count)
            if s.mode != .msi || s.msiVectorsEnabled != wanted {
                s.msiVectorsEnabled = wanted
                do { try setMode(.msi, &s, force: true) } catch { onError("\(name): enabling MSI: \(error)") }
            }
            routeMsi(s)
        } else if s.mode == .msi {
            do { try setMode(intx != nil ? .intx : .none, &s) } catch { onError("\(name): disabling MSI: \(error)") }
        }
    }

    private func routeMsi(_ s: State) {
        guard let msi else { return }
        let address = UInt64(overlay32(s, msi.offset + 4)) | (msi.is64Bit ? UInt64(overlay32(s, msi.offset + 8)) << 32 : 0)
        let data = UInt32(overlay16(s, msi.dataOffset))
        let mask = msi.perVectorMask ? overlay32(s, msi.maskOffset) : 0
        for (v, vector) in msiVectors.enumerated() {
            let live = s.mode == .msi && v < s.msiVectorsEnabled && mask & (1 << UInt32(v)) == 0
            // Multiple-message MSI: the device puts the vector number in the low data bits.
            let n = UInt32(max(s.msiVectorsEnabled, 1))
            vector.route(live ? MsiMessage(address: address, data: (data & ~(n - 1)) | UInt32(v)) : nil)
        }
    }

    private func msixChanged(_ s: inout State) {
        guard let msix, let table = msixTable else { return }
        let control = overlay16(s, msix.offset + 2)
        let enable = control & MsixTable.controlEnable != 0
        // Vectors route (and attach their irqfds) through the table before the device may fire.
        table.setControl(control)
        if enable && s.mode != .msix {
            do { try setMode(.msix, &s) } catch { onError("\(name): enabling MSI-X: \(error)") }
        } else if !enable && s.mode == .msix {
            do { try setMode(intx != nil ? .intx : .none, &s) } catch { onError("\(name): disabling MSI-X: \(error)") }
        }
    }

    /// Switches the device's interrupt mode through VFIO_DEVICE_SET_IRQS. vfio-pci allows one
    /// mode at a time, so the old one is torn down first.
    private func setMode(_ mode: InterruptMode, _ s: inout State, force: Bool = false) throws {
        if s.mode == mode && !force { return }
        let k = vfio.kernel, fd = vfio.fd
        switch s.mode {
        case .none: break
        case .intx: try k.setIRQs(fd, index: VFIOPci.intxIRQ, action: .trigger, start: 0, count: 0, eventfds: nil)
        case .msi:
            try k.setIRQs(fd, index: VFIOPci.msiIRQ, action: .trigger, start: 0, count: 0, eventfds: nil)
        case .msix: try k.setIRQs(fd, index: VFIOPci.msixIRQ, action: .trigger, start: 0, count: 0, eventfds: nil)
        }
        let old = s.mode
        s.mode = .none
        if old == .msi { for v in msiVectors { v.route(nil) } }
        switch mode {
        case .none: break
        case .intx:
            guard let intx else { return }
            try k.setIRQs(fd, index: VFIOPci.intxIRQ, action: .trigger, start: 0, count: 1, eventfds: [intx.trigger])
            try k.setIRQs(fd, index: VFIOPci.intxIRQ, action: .unmask, start: 0, count: 1, eventfds: [intx.resample])
        case .msi:
            let n = max(1, s.msiVectorsEnabled)
            try k.setIRQs(fd, index: VFIOPci.msiIRQ, action: .trigger, start: 0, count: n, eventfds: msiVectors.prefix(n).map(\.eventfd))
        case .msix:
            try k.setIRQs(fd, index: VFIOPci.msixIRQ, action: .trigger, start: 0, count: msixVectors.count, eventfds: msixVectors.map(\.eventfd))
        }
        s.mode = mode
        if mode == .msi { routeMsi(s) }
    }

    /// The interrupt mode VFIO currently delivers (tests, logs).
    public var interruptMode: String { state.withLock { "\($0.mode)" } }
}
