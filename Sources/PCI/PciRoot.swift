import Devices
import Synchronization

public enum PciError: Error, Equatable, CustomStringConvertible {
    case noFreeSlot(device: String)
    case windowExhausted(device: String, bar: Int, size: UInt64)
    public var description: String {
        switch self {
        case let .noFreeSlot(d): "no free PCI slot for \(d) (31 devices at most)"
        case let .windowExhausted(d, b, s): "PCI MMIO window exhausted placing BAR\(b) (\(s) bytes) of \(d)"
        }
    }
}

/// Bus 0 with a host bridge in slot 0 and up to 31 devices. Guests reach configuration space
/// through configuration mechanism #1 (ports 0xCF8/0xCFC, `configAccess`) and BARs through one
/// MMIO window (`mmioWindow`) that follows wherever the guest moves them.
public final class PciRoot: Sendable {

    public let windowBase: UInt64
    public let windowSize: UInt64
    private let slots: [(any PciDevice)?]
    /// Enabled memory BARs: (base, size, slot, bar index), refreshed after every config write.
    private let decoded: Mutex<[(base: UInt64, size: UInt64, slot: Int, bar: Int)]>
    private let hostBridge = Mutex(PciConfigSpace(identity: .init(vendorID: 0x8086, deviceID: 0x0D57, classCode: 0x06_00_00)))

    /// Assigns slots 1… in order and places every BAR in the window (naturally aligned).
    public init(devices: [any PciDevice], windowBase: UInt64, windowSize: UInt64) throws {
        guard devices.count <= 31 else { throw PciError.noFreeSlot(device: devices[31].name) }
        self.windowBase = windowBase
        self.windowSize = windowSize
        var next = windowBase
        for device in devices {
            // Largest BARs first keeps alignment padding small.
            for bar in device.barState.bars.sorted(by: { $0.size > $1.size }) where bar.kind != .io {
                let base = (next + bar.size - 1) & ~(bar.size - 1)
                guard base + bar.size <= windowBase + windowSize else {
                    throw PciError.windowExhausted(device: device.name, bar: bar.index, size: bar.size)
                }
                device.assignBar(index: bar.index, address: base)
                next = base + bar.size
            }
        }
        slots = [nil] + devices.map { Optional($0) } + Array(repeating: nil, count: 31 - devices.count)
        decoded = Mutex([])
        refreshBarDecoding()
    }

    /// Slot numbers of the devices, in order (for the MP table's interrupt entries and logs).
    public var occupiedSlots: [(slot: Int, device: any PciDevice)] {
        slots.enumerated().compactMap { i, d in d.map { (i, $0) } }
    }

    // MARK: configuration mechanism #1

    /// The 0xCF8–0xCFF port range: CONFIG_ADDRESS (dword at 0xCF8) and CONFIG_DATA (0xCFC–0xCFF).
    public var configAccess: any BusDevice { ConfigMechanism1(root: self) }
    /// The CONFIG_ADDRESS register.
    let configAddress = Mutex<UInt32>(0)

    func configRead(address: UInt32, byte: Int, size: Int) -> UInt32 {
        guard let (slot, function, register) = decode(address) else { return UInt32.max }
        let offset = register + byte
        if slot == 0 && function == 0 { return hostBridge.withLock { $0.read(offset: offset, size: size) } }
        guard function == 0, let device = slots[slot] else { return sizeMask(size) }
        return device.readConfig(offset: offset, size: size)
    }

    func configWrite(address: UInt32, byte: Int, size: Int, value: UInt32) {
        guard let (slot, function, register) = decode(address), function == 0 else { return }
        if slot == 0 { return } // the host bridge has nothing to configure
        guard let device = slots[slot] else { return }
        device.writeConfig(offset: register + byte, size: size, value: value)
        refresh(slot)
    }

    private func sizeMask(_ size: Int) -> UInt32 { size >= 4 ? UInt32.max : (1 << (8 * UInt32(size))) - 1 }

    /// Enable bit, bus 0, and the register; other buses do not exist.
    private func decode(_ address: UInt32) -> (Int, Int, Int)? {
        guard address & 0x8000_0000 != 0, (address >> 16) & 0xFF == 0 else { return nil }
        return (Int((address >> 11) & 0x1F), Int((address >> 8) & 0x7), Int(address & 0xFC))
    }

    private func refresh(_ slot: Int) {
        guard let device = slots[slot] else { return }
        let (bars, enabled) = device.barState
        decoded.withLock { list in
            list.removeAll { $0.slot == slot }
            guard enabled else { return }
            for bar in bars where bar.kind != .io && bar.address != 0 {
                list.append((bar.address, bar.size, slot, bar.index))
            }
        }
    }

    // MARK: snapshot

    /// The root bus's own state: CONFIG_ADDRESS (the host bridge has nothing writable, and each
    /// device saves its own configuration space).
    public struct SavedState: Codable, Sendable, Equatable {
        public var configAddress: UInt32
        public init(configAddress: UInt32) { self.configAddress = configAddress }
    }

    public func saveState() -> SavedState { SavedState(configAddress: configAddress.withLock { $0 }) }

    /// Restores CONFIG_ADDRESS and decodes every device's BARs where its configuration space now
    /// places them. Call it after restoring the devices: the root only learns of BAR moves from
    /// configuration writes that pass through it, and a device's restore does not.
    public func restoreState(_ saved: SavedState) {
        configAddress.withLock { $0 = saved.configAddress }
        refreshBarDecoding()
    }

    /// Re-reads every device's BARs and memory-decoding bit (after devices changed them without
    /// a configuration write through the root, as a restore does).
    public func refreshBarDecoding() {
        for slot in 1..<32 { refresh(slot) }
    }

    // MARK: BAR access

    /// The BAR window as a bus device; offsets are relative to `windowBase`.
    public var mmioWindow: any BusDevice { BarWindow(root: self, base: windowBase) }

    /// A bus device answering for BARs wherever the guest moved them in [base, base + size):
    /// guests may reassign BARs anywhere in the MMIO hole, not only where the VMM placed them.
    public func barDecoder(base: UInt64) -> any BusDevice { BarWindow(root: self, base: base) }

    func barAccess(_ address: UInt64) -> (device: any PciDevice, bar: Int, offset: UInt64)? {
        let hit = decoded.withLock { list in list.first { address >= $0.base && address - $0.base < $0.size } }
        guard let hit, let device = slots[hit.slot] else { return nil }
        return (device, hit.bar, address - hit.base)
    }
}

final class ConfigMechanism1: BusDevice {
    let root: PciRoot
    init(root: PciRoot) { self.root = root }

    func read(offset: UInt64, size: Int) -> UInt64 {
        if offset < 4 {
            // CONFIG_ADDRESS is only a dword register; byte accesses to 0xCF8–0xCFB are other
            // legacy ports on real chipsets (e.g. 0xCF9 reset control), which we do not have.
            return size == 4 && offset == 0 ? UInt64(root.configAddress.withLock { $0 }) : (size >= 8 ? UInt64.max : (1 << (8 * UInt64(size))) - 1)
        }
        let a = root.configAddress.withLock { $0 }
        return UInt64(root.configRead(address: a, byte: Int(offset - 4), size: min(size, 8 - Int(offset))))
    }

    func write(offset: UInt64, size: Int, value: UInt64) {
        if offset < 4 {
            if size == 4 && offset == 0 { root.configAddress.withLock { $0 = UInt32(truncatingIfNeeded: value) } }
            return
        }
        let a = root.configAddress.withLock { $0 }
        root.configWrite(address: a, byte: Int(offset - 4), size: min(size, 8 - Int(offset)), value: UInt32(truncatingIfNeeded: value))
    }
}

final class BarWindow: BusDevice {
    let root: PciRoot
    let base: UInt64
    init(root: PciRoot, base: UInt64) { self.root = root; self.base = base }

    func read(offset: UInt64, size: Int) -> UInt64 {
        guard let hit = root.barAccess(base + offset) else { return size >= 8 ? UInt64.max : (1 << (8 * UInt64(size))) - 1 }
        return hit.device.readBar(hit.bar, offset: hit.offset, size: size)
    }

    func write(offset: UInt64, size: Int, value: UInt64) {
        guard let hit = root.barAccess(base + offset) else { return }
        hit.device.writeBar(hit.bar, offset: hit.offset, size: size, value: value)
    }
}
