import Devices
import Foundation
import Memory
import Synchronization
import Testing
@testable import PCI
@testable import Virtio
import TestSupport

/// What a snapshot file does to a saved state: JSON out and back in.
func jsonRoundTrip<T: Codable>(_ value: T) throws -> T {
    try JSONDecoder().decode(T.self, from: JSONEncoder().encode(value))
}

@Suite("PCI snapshots")
struct PciStateTests {
    /// CONFIG_ADDRESS survives: a guest interrupted between its 0xCF8 and 0xCFC accesses reads
    /// the register it selected.
    @Test func rootConfigAddressSurvivesARestore() throws {
        let memory = try GuestMemory(regions: [try GuestMemoryRegion(start: GuestAddress(0), size: 1 << 20)])
        func root() throws -> PciRoot {
            try PciRoot(devices: [VirtioPciDevice(device: FakeDevice(), memory: memory, msiSink: RecordingSink(), intx: nil)],
                        windowBase: 0xC000_0000, windowSize: 0x1000_0000)
        }
        let original = try root()
        original.configAccess.write(offset: 0, size: 4, value: 0x8000_0800)   // slot 1, register 0
        let saved = try jsonRoundTrip(original.saveState())
        let restored = try root()
        #expect(restored.configAccess.read(offset: 4, size: 4) == 0xFFFF_FFFF)   // nothing selected yet
        restored.restoreState(saved)
        #expect(restored.configAccess.read(offset: 0, size: 4) == 0x8000_0800)
        #expect(restored.configAccess.read(offset: 4, size: 4) == 0x1042_1AF4)
    }

    /// Restoring routes exactly the vectors the table delivers (enabled, function and entry
    /// unmasked), removes the others' routes, keeps pending bits, and fires nothing.
    @Test func msixRestoreRoutesExactlyTheLiveVectors() throws {
        let sink = RecordingSink()
        let table = MsixTable(vectorCount: 4, sink: sink)
        for v in 0..<4 {
            let o = UInt64(v * MsixTable.entrySize)
            table.writeTable(offset: o, size: 8, value: 0xFEE0_0000 | UInt64(v) << 12)
            table.writeTable(offset: o + 8, size: 4, value: 0x40 + UInt64(v))
        }
        table.writeTable(offset: 12, size: 4, value: 0)          // vector 0 unmasked
        table.writeTable(offset: 2 * 16 + 12, size: 4, value: 0) // vector 2 unmasked
        table.setControl(MsixTable.controlEnable)
        table.signal(vector: 3)                                   // masked: pending
        let saved = try jsonRoundTrip(table.saveState())
        #expect(saved.pending == [false, false, false, true])

        let restoredSink = RecordingSink()
        let restored = MsixTable(vectorCount: 4, sink: restoredSink)
        try restored.restoreState(saved)
        let message = { (v: Int) in MsiMessage(address: 0xFEE0_0000 | UInt64(v) << 12, data: 0x40 + UInt32(v)) }
        #expect(restoredSink.routes.map(\.0) == [0, 1, 2, 3])
        #expect(restoredSink.routes.map(\.1) == [message(0), nil, message(2), nil])
        #expect(restoredSink.fired.isEmpty)
        #expect(restored.readPBA(offset: 0, size: 8) == 0b1000)
        #expect(restored.saveState() == saved)
        for o in stride(from: UInt64(0), to: 64, by: 4) { #expect(restored.readTable(offset: o, size: 4) == table.readTable(offset: o, size: 4)) }
        // It behaves as the original from here on: unmasking vector 3 delivers its pending bit.
        restored.writeTable(offset: 3 * 16 + 12, size: 4, value: 0)
        #expect(restoredSink.fired == [3])
        #expect(restoredSink.routes.last! == (3, message(3)))

        // Function-masked: nothing is routed.
        table.setControl(MsixTable.controlEnable | MsixTable.controlFunctionMask)
        let maskedSink = RecordingSink()
        try MsixTable(vectorCount: 4, sink: maskedSink).restoreState(try jsonRoundTrip(table.saveState()))
        #expect(maskedSink.routes.map(\.1) == [nil, nil, nil, nil])
        #expect(maskedSink.fired.isEmpty)
        // A table of another size is refused.
        #expect(throws: MsixTable.RestoreError.self) { try MsixTable(vectorCount: 3, sink: RecordingSink()).restoreState(saved) }
    }
}

// MARK: virtio-pci

/// A device that serves its queues like virtio-blk does (synchronously, on the notifying
/// thread, through `ActiveQueue`): each request's readable bytes come back in its writable
/// buffer, each plus one. PCITests cannot link VirtioBlock; this is the same queue handling.
final class EchoDevice: VirtioDevice {
    let deviceType = VirtioDeviceType.block
    let name = "echo0"
    let queueMaxSizes: [UInt16] = [64, 32]
    let availableFeatures: UInt64
    private struct State {
        var queues: [ActiveQueue]? = nil
        var paused = false
        var notifiedWhilePaused: Set<Int> = []
    }
    private let state = Mutex(State())

    init(features: UInt64 = VirtioFeature.common) { availableFeatures = features }

    func readConfig(offset: Int, size: Int) -> UInt64 { 0 }
    func writeConfig(offset: Int, size: Int, value: UInt64) {}
    func activate(_ a: VirtioActivation) throws {
        state.withLock { $0.queues = a.queues.map { ActiveQueue(memory: a.memory, queue: $0, interrupt: a.interrupt) } }
    }
    func reset() { state.withLock { $0.queues = nil; $0.notifiedWhilePaused = [] } }
    func queueNotify(_ queue: Int) {
        state.withLock { s in
            if s.paused { s.notifiedWhilePaused.insert(queue); return }
            serve(&s, queue)
        }
    }
    private func serve(_ s: inout State, _ queue: Int) {
        guard s.queues != nil, queue < s.queues!.count else { return }
        s.queues![queue].serveAvailable(index: queue, device: name, role: "echo") { chain, memory in
            var reader = ChainReader(memory: memory, buffers: chain.readable)
            let bytes = try reader.read(Int(reader.remaining)) ?? []
            var writer = ChainWriter(memory: memory, buffers: chain.writable)
            _ = try writer.write(bytes.map { $0 &+ 1 })
            return writer.written
        }
    }
    func pause() { state.withLock { $0.paused = true } }
    func resume() {
        state.withLock { s in
            guard s.paused else { return }
            s.paused = false
            for q in s.notifiedWhilePaused.sorted() { serve(&s, q) }
            s.notifiedWhilePaused = []
        }
    }
    func queueStates() -> [VirtQueue]? { state.withLock { $0.queues?.map(\.queue) } }
    var isActive: Bool { state.withLock { $0.queues != nil } }
}

/// Records the doorbells a transport hands to its notify offload.
final class RecordingOffload: NotifyOffload {
    let attached = Mutex<[String: [UInt64]]>([:])
    func attach(_ device: String, doorbells: [(queue: Int, address: UInt64)], handler: @escaping @Sendable (Int) -> Void) {
        attached.withLock { $0[device] = doorbells.map(\.address) }
    }
    func detach(_ device: String) { attached.withLock { $0[device] = nil } }
}

/// The driver side of the split rings `Guest.initialise` sets up for queue `queue` (size 16).
struct Rings {
    let memory: GuestMemory
    let queue: Int
    var table: UInt64 { 0x1000 + UInt64(queue) * 0x1000 }
    var avail: UInt64 { 0x1400 + UInt64(queue) * 0x1000 }
    var used: UInt64 { 0x1800 + UInt64(queue) * 0x1000 }
    static let size: UInt16 = 16

    /// Request `n` (0, 1, …) of this test: descriptors 2n (readable) and 2n+1 (writable), its
    /// buffers at a fixed place, published at avail slot n.
    func submit(_ n: UInt16, _ bytes: [UInt8]) throws {
        let head = (2 * n) % Self.size
        let input = 0x8_0000 + UInt64(queue) * 0x1_0000 + UInt64(n) * 0x200
        try memory.write(bytes, at: GuestAddress(input))
        try memory.fill(0, count: 0x100, at: GuestAddress(input + 0x100))
        func descriptor(_ i: UInt16, _ d: Descriptor) throws {
            let a = table + UInt64(i) * 16
            try memory.writeInteger(d.address, at: GuestAddress(a))
            try memory.writeInteger(d.length, at: GuestAddress(a + 8))
            try memory.writeInteger(d.flags, at: GuestAddress(a + 12))
            try memory.writeInteger(d.next, at: GuestAddress(a + 14))
        }
        try descriptor(head, Descriptor(address: input, length: UInt32(bytes.count), flags: Descriptor.flagNext, next: head + 1))
        try descriptor(head + 1, Descriptor(address: input + 0x100, length: 0x100, flags: Descriptor.flagWrite))
        try memory.writeInteger(head, at: GuestAddress(avail + 4 + 2 * UInt64(n % Self.size)))
        try memory.writeInteger(n &+ 1, at: GuestAddress(avail + 2))
    }

    func reply(_ n: UInt16, count: Int) throws -> [UInt8] {
        try memory.read(count, at: GuestAddress(0x8_0000 + UInt64(queue) * 0x1_0000 + UInt64(n) * 0x200 + 0x100))
    }
    var usedIndex: UInt16 { get throws { try memory.readInteger(UInt16.self, at: GuestAddress(used + 2)) } }
    /// The used element at ring index `i`: (head, length).
    func usedElement(_ i: UInt16) throws -> [UInt32] {
        let e = used + 4 + 8 * UInt64(i % Self.size)
        return [try memory.readInteger(UInt32.self, at: GuestAddress(e)), try memory.readInteger(UInt32.self, at: GuestAddress(e + 4))]
    }
}

/// An `EchoDevice` on a virtio-pci transport on a root bus, with recording sinks.
struct EchoRig {
    let device: EchoDevice
    let sink = RecordingSink()
    let line = RecordingLine()
    let offload = RecordingOffload()
    let transport: VirtioPciDevice
    let root: PciRoot
    let guest: Guest

    init(memory: GuestMemory, features: UInt64 = VirtioFeature.common) throws {
        device = EchoDevice(features: features)
        transport = VirtioPciDevice(device: device, memory: memory, msiSink: sink, intx: line, intxLine: 16, notifyOffload: offload)
        root = try PciRoot(devices: [transport], windowBase: 0xC000_0000, windowSize: 0x1000_0000)
        guest = Guest(root)
    }

    var common: UInt64 { guest.bar0() + UInt64(guest.virtioCaps(slot: 1)[1]!.offset) }
    func notify(_ queue: Int) {
        guest.write(guest.bar0() + UInt64(guest.virtioCaps(slot: 1)[2]!.offset) + 4 * UInt64(queue), size: 2, UInt64(queue))
    }
    var msixTable: UInt64 {
        let cap = Int(guest.cfgRead(slot: 1, 0x34, size: 1))
        return guest.bar0() + UInt64(guest.cfgRead(slot: 1, cap + 4) & ~7)
    }
}

@Suite("virtio-pci snapshots")
struct VirtioPciStateTests {
    static func memory() throws -> GuestMemory {
        try GuestMemory(regions: [try GuestMemoryRegion(start: GuestAddress(0), size: 1 << 20)])
    }

    /// A running device with MSI-X set up and a BAR the guest moved, three requests served and a
    /// fourth made available but not yet notified; paused and saved. Returns the rig and state.
    static func runningAndSaved(memory: GuestMemory, features: UInt64 = VirtioFeature.version1) throws
        -> (EchoRig, VirtioPciDevice.SavedState, PciRoot.SavedState) {
        let rig = try EchoRig(memory: memory)
        let g = rig.guest
        g.cfgWrite(slot: 1, 0x10, 0xC800_0000)                     // the guest moves BAR0
        g.cfgWrite(slot: 1, 0x14, 0)
        g.cfgWrite(slot: 1, 0x04, 0x6, size: 2)
        g.initialise(features: features)
        // MSI-X: queue 0 → vector 1 (unmasked), queue 1 → vector 2 (masked), config → vector 0 (masked).
        let table = rig.msixTable
        g.write(table + 16, size: 8, 0xFEE0_1000); g.write(table + 24, size: 4, 0x51); g.write(table + 28, size: 4, 0)
        g.write(table + 32, size: 8, 0xFEE0_2000); g.write(table + 40, size: 4, 0x52)
        let common = rig.common
        g.write(common + 16, size: 2, 0)
        g.write(common + 22, size: 2, 0); g.write(common + 26, size: 2, 1)
        g.write(common + 22, size: 2, 1); g.write(common + 26, size: 2, 2)
        let cap = Int(g.cfgRead(slot: 1, 0x34, size: 1))
        g.cfgWrite(slot: 1, cap + 2, UInt32(MsixTable.controlEnable), size: 2)

        let rings = Rings(memory: memory, queue: 0)
        for n: UInt16 in 0..<3 { try rings.submit(n, [10 * UInt8(n), 1, 2]); rig.notify(0) }
        #expect(try rings.usedIndex == 3)
        #expect(try rings.reply(2, count: 3) == [21, 2, 3])
        // Without EVENT_IDX every completion interrupts.
        if features & VirtioFeature.ringEventIndex == 0 { #expect(rig.sink.fired == [1, 1, 1]) }
        try rings.submit(3, [30, 31])                                  // available, not notified
        rig.transport.pause()
        return (rig, try jsonRoundTrip(rig.transport.saveState()), try jsonRoundTrip(rig.root.saveState()))
    }

    /// Issue 18: save → JSON → restore into a fresh transport and device over the same memory;
    /// after resume the guest's next notification is served from the saved indices: used.idx goes
    /// on from 3, the requests land in ring slots 3 and 4 with the right data, and the BAR the
    /// guest moved decodes where it put it.
    @Test func restoredDeviceServesTheNextRequestFromTheSavedIndices() throws {
        let memory = try Self.memory()
        let (original, saved, savedRoot) = try Self.runningAndSaved(memory: memory)
        #expect(saved.active)
        #expect(saved.deviceQueues?.first?.nextAvailable == 3)
        #expect(saved.deviceQueues?.first?.nextUsed == 3)

        let rig = try EchoRig(memory: memory)
        #expect(rig.guest.bar0() != 0xC800_0000)                        // the root placed it elsewhere
        try rig.transport.restoreState(saved)
        rig.root.restoreState(savedRoot)
        #expect(rig.guest.bar0() == 0xC800_0000)
        #expect(rig.guest.read(0xC800_0000 + 18, size: 2) == 2, "BAR0 decodes where the guest had put it (num_queues)")
        // Configuration space, common configuration and MSI-X table read as on the original.
        for offset in stride(from: 0, to: 256, by: 4) {
            #expect(rig.guest.cfgRead(slot: 1, offset) == original.guest.cfgRead(slot: 1, offset), "config 0x\(String(offset, radix: 16))")
        }
        for q: UInt64 in [0, 1] {
            original.guest.write(original.common + 22, size: 2, q); rig.guest.write(rig.common + 22, size: 2, q)
            for offset: UInt64 in stride(from: 0, to: 0x38, by: 2) {
                #expect(rig.guest.read(rig.common + offset, size: 2) == original.guest.read(original.common + offset, size: 2),
                        "common 0x\(String(offset, radix: 16)), queue \(q)")
            }
        }
        for offset: UInt64 in stride(from: 0, to: 48, by: 4) {
            #expect(rig.guest.read(rig.msixTable + offset, size: 4) == original.guest.read(original.msixTable + offset, size: 4))
        }
        // The sink was told every vector's route, and nothing fired.
        #expect(rig.sink.routes.map(\.0) == [0, 1, 2])
        #expect(rig.sink.routes.map(\.1) == [nil, MsiMessage(address: 0xFEE0_1000, data: 0x51), nil])
        #expect(rig.sink.fired.isEmpty)
        #expect(rig.line.levels.isEmpty)
        // Doorbells at the restored BAR, as activation attaches them.
        #expect(rig.offload.attached.withLock { $0["echo0"] } == [0xC800_3000, 0xC800_3004])
        #expect(rig.device.queueStates()?.map(\.nextUsed) == [3, 0])

        // Paused until resumed: a notification waits.
        let rings = Rings(memory: memory, queue: 0)
        rig.notify(0)
        #expect(try rings.usedIndex == 3)
        rig.transport.resume()
        #expect(try rings.usedIndex == 4)
        #expect(try rings.usedElement(3) == [6, 2])                     // head 6 (request 3), 2 bytes
        #expect(try rings.reply(3, count: 2) == [31, 32])
        try rings.submit(4, [40])
        rig.notify(0)
        #expect(try rings.usedIndex == 5)
        #expect(try rings.usedElement(4) == [8, 1])
        #expect(try rings.reply(4, count: 1) == [41])
        #expect(try rings.usedElement(2) == [4, 3], "the served entries before the snapshot are untouched")
        #expect(rig.sink.fired == [1, 1])
    }

    /// A device that was not started (the snapshot caught the driver mid-initialisation) comes
    /// back with the registers it had, and the driver can finish.
    @Test func inactiveDeviceRestoresItsRegisters() throws {
        let memory = try Self.memory()
        let original = try EchoRig(memory: memory)
        original.guest.cfgWrite(slot: 1, 0x04, 0x6, size: 2)
        original.guest.initialise(start: false)
        original.transport.pause()
        let saved = try jsonRoundTrip(original.transport.saveState())
        #expect(!saved.active && saved.deviceQueues == nil)
        let rig = try EchoRig(memory: memory)
        try rig.transport.restoreState(saved)
        rig.root.restoreState(try jsonRoundTrip(original.root.saveState()))
        rig.transport.resume()
        #expect(!rig.device.isActive)
        #expect(rig.guest.read(rig.common + 20, size: 1) == 0xB)      // ACKNOWLEDGE | DRIVER | FEATURES_OK
        rig.guest.write(rig.common + 20, size: 1, 0xF)
        #expect(rig.device.isActive)
        #expect(rig.device.queueStates()?.map(\.descriptorTable) == [GuestAddress(0x1000), GuestAddress(0x2000)])
    }

    /// INTx: a set ISR holds the line; the restored device raises it again.
    @Test func pendingIntxIsAssertedAgain() throws {
        let memory = try Self.memory()
        let original = try EchoRig(memory: memory)
        original.guest.cfgWrite(slot: 1, 0x04, 0x6, size: 2)
        original.guest.initialise()
        let rings = Rings(memory: memory, queue: 0)
        try rings.submit(0, [1])
        original.notify(0)
        #expect(original.line.high)
        original.transport.pause()
        let saved = try jsonRoundTrip(original.transport.saveState())
        #expect(saved.isr == 1)
        let rig = try EchoRig(memory: memory)
        try rig.transport.restoreState(saved)
        #expect(rig.line.levels == [true])
        rig.root.refreshBarDecoding()
        let isr = rig.guest.bar0() + UInt64(rig.guest.virtioCaps(slot: 1)[3]!.offset)
        #expect(rig.guest.read(isr, size: 1) == 1)
        #expect(!rig.line.high)
    }

    /// A device offering less than the snapshot negotiated (another definition, a tap without
    /// offloads) is refused, and left reset.
    @Test func negotiatedFeaturesTheDeviceDoesNotOfferAreRefused() throws {
        let memory = try Self.memory()
        let (_, saved, _) = try Self.runningAndSaved(memory: memory, features: VirtioFeature.version1 | VirtioFeature.ringEventIndex)
        let rig = try EchoRig(memory: memory, features: VirtioFeature.version1 | VirtioFeature.ringIndirectDescriptors)
        let error = try #require(throws: VirtioPciDevice.RestoreError.self) { try rig.transport.restoreState(saved) }
        #expect(error.description.hasPrefix("echo0: the snapshot negotiated features 0x20000000 this device does not offer ("))
        expectReset(rig)
    }

    /// A state that does not fit the device or is corrupt is refused with the device and field
    /// named, before anything changes; the device is left reset.
    @Test(arguments: [
        ("queue count", "echo0: the snapshot has 1 queues, this device has 2"),
        ("device queue count", "echo0: the snapshot's active device has 3 queue states, this device has 2 queues"),
        ("queue size", "echo0: queue 0: queue size 24 is not a power of two in 1...64"),
        ("ring outside RAM", "echo0: queue 0: used ring at 0x40000000+0x86 is outside guest RAM"),
        ("vector", "echo0: queue 1 MSI-X vector 9 does not exist (3 vectors)"),
        ("config length", "echo0: PCI configuration: configuration space of 255 bytes, expected 256"),
        ("config identity", "echo0: PCI configuration: configuration space differs at read-only offset 0x2: 0x41, this device has 0x42"),
    ])
    func corruptStatesAreRefused(field: String, message: String) throws {
        let memory = try Self.memory()
        let (_, good, _) = try Self.runningAndSaved(memory: memory)
        var saved = good
        switch field {
        case "queue count": saved.queues.removeLast()
        case "device queue count": saved.deviceQueues!.append(saved.deviceQueues![0])
        case "queue size": saved.deviceQueues![0].size = 24; saved.queues[0].size = 24
        case "ring outside RAM": saved.deviceQueues![0].usedRing = 0x4000_0000; saved.queues[0].usedRing = 0x4000_0000
        case "vector": saved.vectors[1] = 9
        default:
            // The configuration space can only be damaged in the file.
            var json = try JSONSerialization.jsonObject(with: JSONEncoder().encode(saved)) as! [String: Any]
            var config = json["config"] as! [String: Any]
            var bytes = (config["bytes"] as! [Any]).map { ($0 as! NSNumber).intValue }
            if field == "config length" { bytes.removeLast() } else { bytes[2] = 0x41 }
            config["bytes"] = bytes
            json["config"] = config
            saved = try JSONDecoder().decode(VirtioPciDevice.SavedState.self, from: JSONSerialization.data(withJSONObject: json))
        }
        let rig = try EchoRig(memory: memory)
        let error = try #require(throws: VirtioPciDevice.RestoreError.self) { try rig.transport.restoreState(saved) }
        #expect(error.description == message)
        expectReset(rig)
        // The same device takes the good state afterwards.
        try rig.transport.restoreState(good)
        #expect(rig.device.isActive)
    }

    func expectReset(_ rig: EchoRig) {
        #expect(!rig.device.isActive)
        #expect(rig.transport.status == 0)
        #expect(rig.sink.fired.isEmpty)
        #expect(rig.sink.routes.allSatisfy { $0.1 == nil })
        #expect(rig.offload.attached.withLock { $0.isEmpty })
        #expect(rig.guest.cfgRead(slot: 1, 0x04) & 0x6 == 0, "the configuration space is the fresh one")
    }
}
