import Devices
#if canImport(Glibc)
import Glibc
#endif
import Memory
import Posix
import Synchronization
import Testing
@testable import PCI
@testable import Virtio
import TestSupport

final class RecordingSink: MsiVectorSink, @unchecked Sendable {
    let lock = Mutex<([(Int, MsiMessage?)], [Int])>(([], []))
    func route(vector: Int, message: MsiMessage?) { lock.withLock { $0.0.append((vector, message)) } }
    func fire(vector: Int) { lock.withLock { $0.1.append(vector) } }
    var fired: [Int] { lock.withLock { $0.1 } }
    var routes: [(Int, MsiMessage?)] { lock.withLock { $0.0 } }
}

/// A device with two queues that records what the transport does to it.
final class FakeDevice: VirtioDevice, @unchecked Sendable {
    let deviceType = VirtioDeviceType.block
    let name = "fake"
    let queueMaxSizes: [UInt16] = [64, 32]
    let availableFeatures: UInt64 = VirtioFeature.version1 | VirtioFeature.ringEventIndex | 0x5
    var activation: VirtioActivation?
    var notified: [Int] = []
    var resets = 0
    var failActivation = false
    func readConfig(offset: Int, size: Int) -> UInt64 { offset == 0 ? 0x1122_3344_5566_7788 >> 0 : UInt64(offset) }
    func writeConfig(offset: Int, size: Int, value: UInt64) {}
    func activate(_ a: VirtioActivation) throws {
        if failActivation { throw VirtQueueError.notReady }
        activation = a
    }
    func queueNotify(_ queue: Int) { notified.append(queue) }
    func reset() { resets += 1; activation = nil }
    // No I/O of its own: nothing to stop.
    func pause() {}
    func resume() {}
    func queueStates() -> [VirtQueue]? { activation?.queues }
}

/// Drives the root bus the way a guest does: CF8/CFC and MMIO into the BAR window.
struct Guest {
    let root: PciRoot
    let config: any BusDevice
    let window: any BusDevice

    init(_ root: PciRoot) { self.root = root; config = root.configAccess; window = root.mmioWindow }

    func cfgRead(slot: Int, _ offset: Int, size: Int = 4) -> UInt32 {
        config.write(offset: 0, size: 4, value: UInt64(0x8000_0000 | UInt32(slot) << 11 | UInt32(offset & 0xFC)))
        return UInt32(truncatingIfNeeded: config.read(offset: 4 + UInt64(offset & 3), size: size))
    }
    func cfgWrite(slot: Int, _ offset: Int, _ value: UInt32, size: Int = 4) {
        config.write(offset: 0, size: 4, value: UInt64(0x8000_0000 | UInt32(slot) << 11 | UInt32(offset & 0xFC)))
        config.write(offset: 4 + UInt64(offset & 3), size: size, value: UInt64(value))
    }
    func read(_ address: UInt64, size: Int) -> UInt64 { window.read(offset: address - root.windowBase, size: size) }
    func write(_ address: UInt64, size: Int, _ value: UInt64) { window.write(offset: address - root.windowBase, size: size, value: value) }

    func bar0(slot: Int = 1) -> UInt64 { UInt64(cfgRead(slot: slot, 0x10) & ~0xF) | UInt64(cfgRead(slot: slot, 0x14)) << 32 }

    /// Brings the device in `slot` to FEATURES_OK with both queues set up, then DRIVER_OK unless
    /// `start` is false; returns the common cfg base.
    @discardableResult
    func initialise(slot: Int = 1, features: UInt64 = VirtioFeature.version1, start: Bool = true) -> UInt64 {
        let caps = virtioCaps(slot: slot)
        let common = bar0(slot: slot) + UInt64(caps[1]!.offset)
        write(common + 20, size: 1, 0)
        write(common + 20, size: 1, 1 | 2)
        write(common + 8, size: 4, 0); write(common + 12, size: 4, UInt64(UInt32(truncatingIfNeeded: features)))
        write(common + 8, size: 4, 1); write(common + 12, size: 4, features >> 32)
        write(common + 20, size: 1, 1 | 2 | 8)
        for q in 0..<2 {
            write(common + 22, size: 2, UInt64(q))
            write(common + 24, size: 2, 16)
            write(common + 32, size: 4, 0x1000 + UInt64(q) * 0x1000)     // two 32-bit halves
            write(common + 36, size: 4, 0)
            write(common + 40, size: 8, 0x1400 + UInt64(q) * 0x1000)
            write(common + 48, size: 8, 0x1800 + UInt64(q) * 0x1000)
            write(common + 28, size: 2, 1)
        }
        if start { write(common + 20, size: 1, 1 | 2 | 8 | 4) }
        return common
    }

    /// Virtio capabilities of a slot: cfg_type → (bar, offset, length, cap offset).
    func virtioCaps(slot: Int) -> [UInt8: (bar: UInt8, offset: UInt32, length: UInt32, at: Int)] {
        var caps: [UInt8: (UInt8, UInt32, UInt32, Int)] = [:]
        var p = Int(cfgRead(slot: slot, 0x34, size: 1))
        var guardCount = 0
        while p != 0 && guardCount < 48 {
            let id = cfgRead(slot: slot, p, size: 1)
            if id == 0x09 {
                let type = UInt8(cfgRead(slot: slot, p + 3, size: 1))
                caps[type] = (UInt8(cfgRead(slot: slot, p + 4, size: 1)), cfgRead(slot: slot, p + 8), cfgRead(slot: slot, p + 12), p)
            }
            p = Int(cfgRead(slot: slot, p + 1, size: 1))
            guardCount += 1
        }
        return caps
    }
}

struct Rig {
    let device = FakeDevice()
    let sink = RecordingSink()
    let line = RecordingLine()
    let transport: VirtioPciDevice
    let root: PciRoot
    let guest: Guest
    let memory = try! GuestMemory(regions: [try! GuestMemoryRegion(start: GuestAddress(0), size: 1 << 20)])
    var bar0: UInt64 { guest.bar0() }

    init() throws {
        transport = VirtioPciDevice(device: device, memory: memory, msiSink: sink, intx: line, intxLine: 16)
        root = try PciRoot(devices: [transport], windowBase: 0xC000_0000, windowSize: 0x1000_0000)
        guest = Guest(root)
        guest.cfgWrite(slot: 1, 0x04, 0x6, size: 2) // memory + bus master
    }

    /// Brings the device to DRIVER_OK with both queues set up; returns the common cfg base.
    @discardableResult
    func initialise(features: UInt64 = VirtioFeature.version1) -> UInt64 { guest.initialise(features: features) }
}

@Suite("PCI root bus")
struct PciRootTests {
    @Test func enumerationThroughConfigMechanism1() throws {
        let rig = try Rig()
        let g = rig.guest
        #expect(g.cfgRead(slot: 0, 0) == 0x0D57_8086)                // host bridge
        #expect(g.cfgRead(slot: 0, 0x08) >> 8 == 0x06_00_00)
        #expect(g.cfgRead(slot: 1, 0) == 0x1042_1AF4)                // virtio-blk, modern
        #expect(g.cfgRead(slot: 1, 0x08) >> 8 == 0x01_80_00)
        #expect(g.cfgRead(slot: 1, 0x2C) == 0x0040_1AF4)
        #expect(g.cfgRead(slot: 2, 0) == 0xFFFF_FFFF)                // empty slot
        #expect(g.cfgRead(slot: 1, 0x3D, size: 1) == 1)              // INTA#
        #expect(g.cfgRead(slot: 1, 0x3C, size: 1) == 16)
        // Disabled config cycles and other buses read as all-ones.
        g.config.write(offset: 0, size: 4, value: 0x0000_0800)
        #expect(g.config.read(offset: 4, size: 4) == 0xFFFF_FFFF)
        g.config.write(offset: 0, size: 4, value: 0x8001_0800)
        #expect(g.config.read(offset: 4, size: 4) == 0xFFFF_FFFF)
        // Read-only identity registers ignore writes.
        g.cfgWrite(slot: 1, 0, 0)
        #expect(g.cfgRead(slot: 1, 0) == 0x1042_1AF4)
    }

    @Test func barSizingAndRelocation() throws {
        let rig = try Rig()
        let g = rig.guest
        let original = rig.bar0
        #expect(original >= 0xC000_0000 && original < 0xD000_0000)
        #expect(g.cfgRead(slot: 1, 0x10) & 0xF == 0x4)               // 64-bit, non-prefetchable memory
        g.cfgWrite(slot: 1, 0x10, 0xFFFF_FFFF)
        g.cfgWrite(slot: 1, 0x14, 0xFFFF_FFFF)
        #expect(g.cfgRead(slot: 1, 0x10) == 0xFFFF_8004)             // 32 KiB
        #expect(g.cfgRead(slot: 1, 0x14) == 0xFFFF_FFFF)
        // Move it; the MMIO window follows.
        g.cfgWrite(slot: 1, 0x10, 0xC800_0000)
        g.cfgWrite(slot: 1, 0x14, 0)
        #expect(rig.bar0 == 0xC800_0000)
        let caps = g.virtioCaps(slot: 1)
        #expect(g.read(0xC800_0000 + UInt64(caps[1]!.offset) + 18, size: 2) == 2) // num_queues
        #expect(g.read(original + UInt64(caps[1]!.offset) + 18, size: 2) == 0xFFFF)
        // Memory decoding off: nothing answers.
        g.cfgWrite(slot: 1, 0x04, 0, size: 2)
        #expect(g.read(0xC800_0000 + 18, size: 2) == 0xFFFF)
    }

    @Test func capabilityListHasMsixAndAllVirtioStructures() throws {
        let rig = try Rig()
        let g = rig.guest
        #expect(g.cfgRead(slot: 1, 0x04) >> 16 & 0x10 != 0)          // capabilities list bit
        let first = Int(g.cfgRead(slot: 1, 0x34, size: 1))
        #expect(g.cfgRead(slot: 1, first, size: 1) == 0x11)
        #expect(g.cfgRead(slot: 1, first + 2, size: 2) & 0x7FF == 2)  // 3 vectors
        let caps = g.virtioCaps(slot: 1)
        #expect(Set(caps.keys) == [1, 2, 3, 4, 5])
        for (type, c) in caps where type != 5 {
            #expect(c.bar == 0)
            #expect(UInt64(c.offset) + UInt64(c.length) <= 0x8000)
        }
        #expect(g.cfgRead(slot: 1, caps[2]!.at + 16) == 4)           // notify_off_multiplier
    }

    /// Issue 16: a BAR decodes wherever the guest places it inside the ranges the platform routes
    /// to the bus (the VMM's `pci-bars` window and `pci-bars-high` from above the boot-marker page
    /// up to the IOAPIC, Sources/VMM/MachinePhases.swift); elsewhere (RAM, above 4 GiB, the
    /// IOAPIC) it is simply not routed, its register keeps what the guest wrote, and the other
    /// devices keep working. Moving it back brings it back.
    @Test func barsDecodeAnywhereInTheRoutedRangesAndNowhereElse() throws {
        let memory = try GuestMemory(regions: [try GuestMemoryRegion(start: GuestAddress(0), size: 1 << 20)])
        let transports = (0..<2).map { _ in VirtioPciDevice(device: FakeDevice(), memory: memory, msiSink: RecordingSink(), intx: nil) }
        let root = try PciRoot(devices: transports, windowBase: 0xC000_0000, windowSize: 0x1000_0000)
        let aboveMarker: UInt64 = 0xD000_1000, decodeEnd: UInt64 = 0xFEC0_0000
        let bus = try Bus(name: "mmio", ranges: [
            .init(base: 0xC000_0000, length: 0x1000_0000, name: "pci-bars", device: root.mmioWindow),
            .init(base: aboveMarker, length: decodeEnd - aboveMarker, name: "pci-bars-high", device: root.barDecoder(base: aboveMarker)),
        ])
        let g = Guest(root)
        for slot in 1...2 { g.cfgWrite(slot: slot, 0x04, 0x2, size: 2) }
        let numQueues = UInt64(g.virtioCaps(slot: 1)[1]!.offset) + 18
        let other = g.bar0(slot: 2)
        func place(_ address: UInt64) {
            g.cfgWrite(slot: 1, 0x10, UInt32(truncatingIfNeeded: address))
            g.cfgWrite(slot: 1, 0x14, UInt32(truncatingIfNeeded: address >> 32))
        }
        // Inside: every 16 MiB of both ranges, and their first and last 32 KiB.
        let inside = Array(stride(from: UInt64(0xC000_0000), to: 0xD000_0000, by: 0x100_0000))
            + Array(stride(from: UInt64(0xD100_0000), to: decodeEnd, by: 0x100_0000))
            + [0xC000_0000 + 0x8000, 0xCFFF_8000, 0xD000_8000, decodeEnd - 0x8000]
        for base in inside where base != other {
            place(base)
            #expect(g.bar0() == base)
            #expect(bus.read(base + numQueues, size: 2) == 2, "BAR at 0x\(String(base, radix: 16)) does not decode")
            #expect(bus.read(other + numQueues, size: 2) == 2)
        }
        // Outside the routed ranges: RAM, the boot-marker page's 32 KiB, above 4 GiB, the IOAPIC.
        for base: UInt64 in [0x10_0000, 0xD000_0000, 0x1_0000_0000, 0x40_0000_0000, decodeEnd, 0xFFFF_8000] {
            place(base)
            #expect(g.bar0() == base)                                  // the register is the guest's
            #expect(bus.read(base + numQueues, size: 2) == 0xFFFF)     // not routed: all-ones
            #expect(bus.read(other + numQueues, size: 2) == 2)          // the other device is untouched
        }
        place(0xE000_0000)
        #expect(bus.read(0xE000_0000 + numQueues, size: 2) == 2)
    }

    @Test func windowExhaustion() {
        let devices = (0..<3).map { _ in VirtioPciDevice(device: FakeDevice(), memory: try! GuestMemory(regions: []), msiSink: RecordingSink(), intx: nil) }
        #expect(throws: PciError.self) { try PciRoot(devices: devices, windowBase: 0xC000_0000, windowSize: 0x10000) }
    }
}

/// A device whose activation takes a moment (like starting an I/O thread) and which counts its
/// running workers: one per activation, none after reset. Thread-safe, for the race tests.
final class WorkerDevice: VirtioDevice {
    let deviceType = VirtioDeviceType.net
    let name = "worker"
    let queueMaxSizes: [UInt16] = [64, 32]
    let availableFeatures: UInt64 = VirtioFeature.version1
    let workers = Mutex(0)
    func readConfig(offset: Int, size: Int) -> UInt64 { 0 }
    func writeConfig(offset: Int, size: Int, value: UInt64) {}
    func activate(_ a: VirtioActivation) throws {
        usleep(20)
        workers.withLock { $0 += 1 }
    }
    func queueNotify(_ queue: Int) {}
    func reset() { workers.withLock { $0 = 0 } }
    func pause() {}
    func resume() {}
    func queueStates() -> [VirtQueue]? { nil }
}

@Suite("virtio-pci transport")
struct VirtioPciTests {
    /// Issue 16: the guest writes DRIVER_OK on one vCPU while another resets the device. The
    /// activation ran after the reset, leaving a running device (and its I/O thread) behind a
    /// status of 0. Whatever the interleaving, the device runs iff the status says DRIVER_OK.
    @Test func driverOKRacingResetLeavesTheDeviceRunningOnlyIfStarted() throws {
        let device = WorkerDevice()
        let memory = try GuestMemory(regions: [try GuestMemoryRegion(start: GuestAddress(0), size: 1 << 20)])
        let transport = VirtioPciDevice(device: device, memory: memory, msiSink: RecordingSink(), intx: nil)
        let g = Guest(try PciRoot(devices: [transport], windowBase: 0xC000_0000, windowSize: 0x1000_0000))
        g.cfgWrite(slot: 1, 0x04, 0x2, size: 2)
        for round in 0..<300 {
            let common = g.initialise(start: false)
            let start = StartLine()
            let a = try PosixThread(name: "driver-ok") { start.wait(); g.write(common + 20, size: 1, 1 | 2 | 8 | 4) }
            let b = try PosixThread(name: "reset") { start.wait(); g.write(common + 20, size: 1, 0) }
            a.join(); b.join()
            let status = UInt8(g.read(common + 20, size: 1))
            let running = status & VirtioStatus.driverOK != 0 && status & VirtioStatus.needsReset == 0
            let workers = device.workers.withLock { $0 }
            #expect(workers == (running ? 1 : 0), "round \(round): \(workers) workers, status 0x\(String(status, radix: 16))")
            if workers != (running ? 1 : 0) { break }
        }
    }

    @Test func featureNegotiationAndActivation() throws {
        let rig = try Rig()
        let common = rig.initialise(features: VirtioFeature.version1 | VirtioFeature.ringEventIndex)
        let g = rig.guest
        #expect(g.read(common + 20, size: 1) == 0xF)
        let a = try #require(rig.device.activation)
        #expect(a.features == VirtioFeature.version1 | VirtioFeature.ringEventIndex)
        #expect(a.queues.map(\.size) == [16, 16])
        #expect(a.queues[0].descriptorTable == GuestAddress(0x1000))
        #expect(a.queues[1].usedRing == GuestAddress(0x2800))
        #expect(a.queues.allSatisfy { $0.eventIndex })
        // device_feature, both halves.
        g.write(common, size: 4, 0); #expect(g.read(common + 4, size: 4) == 0x2000_0005)
        g.write(common, size: 4, 1); #expect(g.read(common + 4, size: 4) == 1)
        g.write(common, size: 4, 7); #expect(g.read(common + 4, size: 4) == 0)
        // Queue registers are frozen once enabled.
        g.write(common + 22, size: 2, 0); g.write(common + 24, size: 2, 4)
        #expect(g.read(common + 24, size: 2) == 16)
        // Notify: offset = queue_notify_off * multiplier.
        let caps = g.virtioCaps(slot: 1)
        g.write(rig.bar0 + UInt64(caps[2]!.offset) + 4, size: 2, 1)
        #expect(rig.device.notified == [1])
    }

    @Test func featuresWithoutVersion1OrUnofferedAreRefused() throws {
        for bad in [UInt64(0x1), VirtioFeature.version1 | (1 << 40)] {
            let rig = try Rig()
            let common = rig.initialise(features: bad)
            #expect(rig.guest.read(common + 20, size: 1) & 8 == 0)       // FEATURES_OK did not stick
            #expect(rig.device.activation == nil)
            #expect(rig.transport.status & VirtioStatus.needsReset != 0)  // DRIVER_OK without FEATURES_OK
        }
    }

    @Test func resetClearsEverything() throws {
        let rig = try Rig()
        let common = rig.initialise()
        let before = rig.device.resets
        rig.guest.write(common + 20, size: 1, 0)
        #expect(rig.guest.read(common + 20, size: 1) == 0)
        #expect(rig.device.resets == before + 1)
        #expect(rig.device.activation == nil)
        rig.guest.write(common + 22, size: 2, 0)
        #expect(rig.guest.read(common + 28, size: 2) == 0)                 // queue_enable
        #expect(rig.guest.read(common + 32, size: 8) == 0)
        #expect(rig.guest.read(common + 26, size: 2) == 0xFFFF)            // NO_VECTOR
    }

    @Test func queuesOutsideRAMFailActivationWithNeedsReset() throws {
        let rig = try Rig()
        let g = rig.guest
        let caps = g.virtioCaps(slot: 1)
        let common = rig.bar0 + UInt64(caps[1]!.offset)
        g.write(common + 20, size: 1, 3)
        g.write(common + 8, size: 4, 1); g.write(common + 12, size: 4, 1)
        g.write(common + 20, size: 1, 11)
        g.write(common + 22, size: 2, 0)
        g.write(common + 32, size: 8, 0x4000_0000)                       // beyond 1 MiB of RAM
        g.write(common + 28, size: 2, 1)
        g.write(common + 20, size: 1, 15)
        #expect(rig.device.activation == nil)
        #expect(g.read(common + 20, size: 1) & 0x40 != 0)
        // Notifications to a device that needs reset are dropped.
        g.write(rig.bar0 + UInt64(caps[2]!.offset), size: 2, 0)
        #expect(rig.device.notified.isEmpty)
    }

    @Test func msixDeliveryMaskingAndPendingBits() throws {
        let rig = try Rig()
        let common = rig.initialise()
        let g = rig.guest
        let cap = Int(g.cfgRead(slot: 1, 0x34, size: 1))
        let table = rig.bar0 + UInt64(g.cfgRead(slot: 1, cap + 4) & ~7)
        let pba = rig.bar0 + UInt64(g.cfgRead(slot: 1, cap + 8) & ~7)
        // Vector 1: address/data, unmasked. Queue 0 → vector 1, config → vector 0.
        g.write(table + 16, size: 4, 0xFEE0_0000); g.write(table + 20, size: 4, 0)
        g.write(table + 24, size: 4, 0x41); g.write(table + 28, size: 4, 0)
        g.write(common + 22, size: 2, 0); g.write(common + 26, size: 2, 1)
        #expect(g.read(common + 26, size: 2) == 1)
        g.write(common + 26 - 10, size: 2, 7)                             // config vector 7 does not exist
        #expect(g.read(common + 16, size: 2) == 0xFFFF)
        g.cfgWrite(slot: 1, cap + 2, UInt32(MsixTable.controlEnable), size: 2)
        #expect(rig.sink.routes.last! == (1, MsiMessage(address: 0xFEE0_0000, data: 0x41)))
        let irq = try #require(rig.device.activation?.interrupt)
        irq.signalUsedQueue(0)
        #expect(rig.sink.fired == [1])
        #expect(!rig.line.high)
        // Masked: pending bit, delivered on unmask.
        g.write(table + 28, size: 4, 1)
        irq.signalUsedQueue(0)
        #expect(rig.sink.fired == [1])
        #expect(g.read(pba, size: 8) == 0b10)
        g.write(table + 28, size: 4, 0)
        #expect(rig.sink.fired == [1, 1])
        #expect(g.read(pba, size: 8) == 0)
        // Function mask works the same way.
        g.cfgWrite(slot: 1, cap + 2, UInt32(MsixTable.controlEnable | MsixTable.controlFunctionMask), size: 2)
        irq.signalUsedQueue(0)
        #expect(rig.sink.fired == [1, 1])
        g.cfgWrite(slot: 1, cap + 2, UInt32(MsixTable.controlEnable), size: 2)
        #expect(rig.sink.fired == [1, 1, 1])
        // Table size is read-only.
        #expect(g.cfgRead(slot: 1, cap + 2, size: 2) & 0x7FF == 2)
    }

    @Test func intxWhenMsixIsOff() throws {
        let rig = try Rig()
        rig.initialise()
        let g = rig.guest
        let caps = g.virtioCaps(slot: 1)
        let isr = rig.bar0 + UInt64(caps[3]!.offset)
        let irq = try #require(rig.device.activation?.interrupt)
        irq.signalUsedQueue(1)
        #expect(rig.line.high)
        #expect(rig.sink.fired.isEmpty)
        #expect(g.read(isr, size: 1) == 1)                                // read clears and lowers
        #expect(!rig.line.high)
        #expect(g.read(isr, size: 1) == 0)
        irq.deviceNeedsReset(reason: "test")
        #expect(g.read(isr, size: 1) == 2)                                // configuration change
        // INTx disable in the command register keeps the line low.
        g.cfgWrite(slot: 1, 0x04, 0x406, size: 2)
        irq.signalUsedQueue(0)
        #expect(!rig.line.high)
    }

    @Test func pciConfigAccessCapabilityReachesTheBar() throws {
        let rig = try Rig()
        let g = rig.guest
        let caps = g.virtioCaps(slot: 1)
        let at = caps[5]!.at
        g.cfgWrite(slot: 1, at + 4, 0, size: 1)                          // bar 0
        g.cfgWrite(slot: 1, at + 8, caps[1]!.offset + 18)                 // num_queues
        g.cfgWrite(slot: 1, at + 12, 2)
        #expect(g.cfgRead(slot: 1, at + 16, size: 2) == 2)
        g.cfgWrite(slot: 1, at + 12, 3)                                   // bad length: plain config read
        #expect(g.cfgRead(slot: 1, at + 16, size: 2) == 0)
    }

    @Test func deviceConfigurationReadsPassThrough() throws {
        let rig = try Rig()
        let caps = rig.guest.virtioCaps(slot: 1)
        #expect(rig.guest.read(rig.bar0 + UInt64(caps[4]!.offset) + 8, size: 4) == 8)
    }
}
