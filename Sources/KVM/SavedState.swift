import Arch
import CKVM
import SystemPackage
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A KVM structure copied byte for byte. These are the kernel's UAPI layouts, which never change
/// once released, so a snapshot keeps them as they are instead of re-modelling every field.
/// Encoded as base64 in JSON.
public struct KernelStructure: Codable, Sendable, Equatable {
    public var bytes: [UInt8]
    public init(bytes: [UInt8]) { self.bytes = bytes }

    init<T>(_ value: T) {
        var v = value
        bytes = withUnsafeBytes(of: &v) { Array($0) }
    }

    /// The structure as `T`; throws when the saved size is not `T`'s (a snapshot of another layout).
    func value<T>(as _: T.Type, zero: T, _ what: String) throws(SavedStateError) -> T {
        guard bytes.count == MemoryLayout<T>.size else {
            throw SavedStateError("\(what): \(bytes.count) bytes saved, this host's structure has \(MemoryLayout<T>.size)")
        }
        var v = zero
        withUnsafeMutableBytes(of: &v) { $0.copyBytes(from: bytes) }
        return v
    }

    /// Base64 in JSON, as `Data` is by default: decoding it as `Data` lets the decoder do the
    /// base64 itself, under half the time of a `String` then `Data(base64Encoded:)` (measured).
    public init(from decoder: any Decoder) throws {
        bytes = Array(try decoder.singleValueContainer().decode(Data.self))
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(Data(bytes))
    }
}

public struct SavedStateError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// One MSR as saved.
public struct SavedMSR: Codable, Sendable, Equatable {
    public var index: UInt32
    public var value: UInt64
    public init(index: UInt32, value: UInt64) { self.index = index; self.value = value }

    static let asyncPageFaultEnable: UInt32 = 0x4B56_4D02
    static let tscDeadline: UInt32 = 0x6E0

    /// The order KVM accepts them in (`VCPU.writeMSRs`), otherwise as saved.
    public static func restoreOrder(_ msrs: [SavedMSR]) -> [SavedMSR] {
        let late = [asyncPageFaultEnable, tscDeadline]
        return msrs.filter { $0.index == MSR.tsc } + msrs.filter { $0.index != MSR.tsc && !late.contains($0.index) }
            + late.flatMap { index in msrs.filter { $0.index == index } }
    }
}

/// Everything KVM holds for one vCPU. `capture` and `restore` encode the order the KVM API
/// requires (docs/snapshot.md); the vCPU must not be running.
public struct VCPUState: Codable, Sendable, Equatable {
    public var id: Int
    public var cpuid: [CPUIDEntry]
    public var mpState: UInt32
    public var regs: KernelStructure
    public var sregs: KernelStructure
    /// KVM_GET_XSAVE where the host has it, else the legacy FPU image.
    public var xsave: KernelStructure?
    public var fpu: KernelStructure?
    public var xcrs: KernelStructure?
    public var debugRegs: KernelStructure
    public var lapic: KernelStructure
    public var msrs: [SavedMSR]
    public var events: KernelStructure
    /// The guest's TSC rate; restored (scaled, where the host can) so its time runs at the same pace.
    public var tscKHz: UInt32?
}

/// The CPUID table and the MSRs, the two long lists of a vCPU's state, are packed little-endian
/// (base64 in JSON: 7 × u32 per CPUID entry, u32 index + u64 value per MSR): as arrays of keyed
/// objects they took half of the state's encoding and decoding time, part of a migration's
/// downtime (0.45 of about 1 ms, measured). Snapshot format 2.
extension VCPUState {
    enum CodingKeys: String, CodingKey {
        case id, cpuid, mpState, regs, sregs, xsave, fpu, xcrs, debugRegs, lapic, msrs, events, tscKHz
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        id = try c.decode(Int.self, forKey: .id)
        let cpuidBytes = [UInt8](try c.decode(Data.self, forKey: .cpuid))
        let msrBytes = [UInt8](try c.decode(Data.self, forKey: .msrs))
        guard cpuidBytes.count % 28 == 0, msrBytes.count % 12 == 0 else {
            throw DecodingError.dataCorruptedError(forKey: .cpuid, in: c, debugDescription: "packed CPUID (\(cpuidBytes.count) bytes) or MSRs (\(msrBytes.count)) of a wrong size")
        }
        func u32(_ b: [UInt8], _ at: Int) -> UInt32 { (0..<4).reduce(UInt32(0)) { $0 | UInt32(b[at + $1]) << (8 * UInt32($1)) } }
        cpuid = stride(from: 0, to: cpuidBytes.count, by: 28).map { o in
            CPUIDEntry(function: u32(cpuidBytes, o), index: u32(cpuidBytes, o + 4), flags: u32(cpuidBytes, o + 8), eax: u32(cpuidBytes, o + 12),
                       ebx: u32(cpuidBytes, o + 16), ecx: u32(cpuidBytes, o + 20), edx: u32(cpuidBytes, o + 24))
        }
        msrs = stride(from: 0, to: msrBytes.count, by: 12).map { o in
            SavedMSR(index: u32(msrBytes, o), value: UInt64(u32(msrBytes, o + 4)) | UInt64(u32(msrBytes, o + 8)) << 32)
        }
        mpState = try c.decode(UInt32.self, forKey: .mpState)
        regs = try c.decode(KernelStructure.self, forKey: .regs)
        sregs = try c.decode(KernelStructure.self, forKey: .sregs)
        xsave = try c.decodeIfPresent(KernelStructure.self, forKey: .xsave)
        fpu = try c.decodeIfPresent(KernelStructure.self, forKey: .fpu)
        xcrs = try c.decodeIfPresent(KernelStructure.self, forKey: .xcrs)
        debugRegs = try c.decode(KernelStructure.self, forKey: .debugRegs)
        lapic = try c.decode(KernelStructure.self, forKey: .lapic)
        events = try c.decode(KernelStructure.self, forKey: .events)
        tscKHz = try c.decodeIfPresent(UInt32.self, forKey: .tscKHz)
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        func le<T: FixedWidthInteger>(_ v: T, into out: inout [UInt8]) {
            for i in 0..<MemoryLayout<T>.size { out.append(UInt8(truncatingIfNeeded: v >> (8 * i))) }
        }
        var packed: [UInt8] = []
        packed.reserveCapacity(cpuid.count * 28)
        for e in cpuid { for v in [e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx] { le(v, into: &packed) } }
        try c.encode(id, forKey: .id)
        try c.encode(Data(packed), forKey: .cpuid)
        packed = []
        packed.reserveCapacity(msrs.count * 12)
        for m in msrs { le(m.index, into: &packed); le(m.value, into: &packed) }
        try c.encode(Data(packed), forKey: .msrs)
        try c.encode(mpState, forKey: .mpState)
        try c.encode(regs, forKey: .regs)
        try c.encode(sregs, forKey: .sregs)
        try c.encodeIfPresent(xsave, forKey: .xsave)
        try c.encodeIfPresent(fpu, forKey: .fpu)
        try c.encodeIfPresent(xcrs, forKey: .xcrs)
        try c.encode(debugRegs, forKey: .debugRegs)
        try c.encode(lapic, forKey: .lapic)
        try c.encode(events, forKey: .events)
        try c.encodeIfPresent(tscKHz, forKey: .tscKHz)
    }
}

extension VCPU {
    /// Saves this vCPU. The order is KVM's: MP state first (reading it accepts pending INIT/SIPI
    /// into the LAPIC), the events last (the other reads may change pending-event state).
    public func captureState(msrIndices: [UInt32], system: KVMSystem) throws -> VCPUState {
        var mp = kvm_mp_state()
        try IOCtl.call(fd, CKVM_GET_MP_STATE, "KVM_GET_MP_STATE", &mp)
        var regs = kvm_regs()
        try IOCtl.call(fd, CKVM_GET_REGS, "KVM_GET_REGS", &regs)
        var sregs = kvm_sregs()
        try IOCtl.call(fd, CKVM_GET_SREGS, "KVM_GET_SREGS", &sregs)
        var xsave: KernelStructure? = nil, fpu: KernelStructure? = nil, xcrs: KernelStructure? = nil
        if system.checkExtension(KVMCapability.xsave) > 0 {
            var x = kvm_xsave()
            try IOCtl.call(fd, CKVM_GET_XSAVE, "KVM_GET_XSAVE", &x)
            xsave = KernelStructure(x)
        } else {
            var f = kvm_fpu()
            try IOCtl.call(fd, CKVM_GET_FPU, "KVM_GET_FPU", &f)
            fpu = KernelStructure(f)
        }
        if system.checkExtension(KVMCapability.xcrs) > 0 {
            var x = kvm_xcrs()
            try IOCtl.call(fd, CKVM_GET_XCRS, "KVM_GET_XCRS", &x)
            xcrs = KernelStructure(x)
        }
        var debug = kvm_debugregs()
        try IOCtl.call(fd, CKVM_GET_DEBUGREGS, "KVM_GET_DEBUGREGS", &debug)
        var lapic = kvm_lapic_state()
        try IOCtl.call(fd, CKVM_GET_LAPIC, "KVM_GET_LAPIC", &lapic)
        let khz = try? IOCtl.call(fd, CKVM_GET_TSC_KHZ, "KVM_GET_TSC_KHZ", value: 0)
        let msrs = try readMSRs(msrIndices)
        var events = kvm_vcpu_events()
        try IOCtl.call(fd, CKVM_GET_VCPU_EVENTS, "KVM_GET_VCPU_EVENTS", &events)
        return VCPUState(id: id, cpuid: try cpuid(), mpState: mp.mp_state, regs: KernelStructure(regs), sregs: KernelStructure(sregs),
                         xsave: xsave, fpu: fpu, xcrs: xcrs, debugRegs: KernelStructure(debug), lapic: KernelStructure(lapic),
                         msrs: msrs, events: KernelStructure(events), tscKHz: khz.map { UInt32($0) })
    }

    /// Loads a saved state into this fresh vCPU. CPUID first (it decides which MSRs and XSAVE
    /// components exist), TSC rate before the TSC; REGS before EVENTS (SET_REGS clears pending
    /// exceptions, EVENTS restores them); SREGS before LAPIC (SREGS sets the APIC base); LAPIC
    /// before MSRs (the TSC deadline MSR only takes with the LAPIC set up); EVENTS last.
    public func restoreState(_ s: VCPUState, system: KVMSystem) throws {
        try setCPUID(s.cpuid)
        if let khz = s.tscKHz, system.checkExtension(KVMCapability.tscControl) > 0 {
            let current = try? IOCtl.call(fd, CKVM_GET_TSC_KHZ, "KVM_GET_TSC_KHZ", value: 0)
            if current.map(UInt32.init) != khz { try IOCtl.call(fd, CKVM_SET_TSC_KHZ, "KVM_SET_TSC_KHZ", value: UInt(khz)) }
        }
        var mp = kvm_mp_state()
        mp.mp_state = s.mpState
        try IOCtl.call(fd, CKVM_SET_MP_STATE, "KVM_SET_MP_STATE", &mp)
        var regs = try s.regs.value(as: kvm_regs.self, zero: kvm_regs(), "vCPU \(id) registers")
        try IOCtl.call(fd, CKVM_SET_REGS, "KVM_SET_REGS", &regs)
        var sregs = try s.sregs.value(as: kvm_sregs.self, zero: kvm_sregs(), "vCPU \(id) special registers")
        try IOCtl.call(fd, CKVM_SET_SREGS, "KVM_SET_SREGS", &sregs)
        if let saved = s.xsave {
            var x = try saved.value(as: kvm_xsave.self, zero: kvm_xsave(), "vCPU \(id) XSAVE area")
            try IOCtl.call(fd, CKVM_SET_XSAVE, "KVM_SET_XSAVE", &x)
        } else if let saved = s.fpu {
            var f = try saved.value(as: kvm_fpu.self, zero: kvm_fpu(), "vCPU \(id) FPU")
            try IOCtl.call(fd, CKVM_SET_FPU, "KVM_SET_FPU", &f)
        }
        if let saved = s.xcrs {
            var x = try saved.value(as: kvm_xcrs.self, zero: kvm_xcrs(), "vCPU \(id) XCRs")
            try IOCtl.call(fd, CKVM_SET_XCRS, "KVM_SET_XCRS", &x)
        }
        var debug = try s.debugRegs.value(as: kvm_debugregs.self, zero: kvm_debugregs(), "vCPU \(id) debug registers")
        try IOCtl.call(fd, CKVM_SET_DEBUGREGS, "KVM_SET_DEBUGREGS", &debug)
        var lapic = try s.lapic.value(as: kvm_lapic_state.self, zero: kvm_lapic_state(), "vCPU \(id) LAPIC")
        try IOCtl.call(fd, CKVM_SET_LAPIC, "KVM_SET_LAPIC", &lapic)
        try writeMSRs(s.msrs)
        var events = try s.events.value(as: kvm_vcpu_events.self, zero: kvm_vcpu_events(), "vCPU \(id) pending events")
        try IOCtl.call(fd, CKVM_SET_VCPU_EVENTS, "KVM_SET_VCPU_EVENTS", &events)
    }

    /// Reads every MSR of `indices` this vCPU has. KVM_GET_MSRS stops at the first MSR it cannot
    /// read (one the list names but this CPU lacks): that one is left out and the rest read on.
    func readMSRs(_ indices: [UInt32]) throws -> [SavedMSR] {
        var saved: [SavedMSR] = []
        var rest = indices[...]
        while !rest.isEmpty {
            let chunk = Array(rest.prefix(Int(CKVM_MAX_MSR_ENTRIES)))
            var table = ckvm_msrs()
            table.nmsrs = UInt32(chunk.count)
            withUnsafeMutableBytes(of: &table.entries) { raw in
                let e = raw.bindMemory(to: kvm_msr_entry.self)
                for (i, index) in chunk.enumerated() { e[i] = kvm_msr_entry(); e[i].index = index }
            }
            let read = Int(try IOCtl.call(fd, CKVM_GET_MSRS, "KVM_GET_MSRS", &table))
            withUnsafeBytes(of: &table.entries) { raw in
                let e = raw.bindMemory(to: kvm_msr_entry.self)
                for i in 0..<read { saved.append(SavedMSR(index: e[i].index, value: e[i].data)) }
            }
            rest = rest.dropFirst(read < chunk.count ? read + 1 : read)
        }
        return saved
    }

    /// Writes saved MSRs in the order KVM accepts them, in chunks of the shim's table: the TSC
    /// first and the TSC deadline last (KVM arms the deadline against the TSC it has then), and
    /// async page faults enabled after their interrupt vector is set (KVM refuses
    /// MSR_KVM_ASYNC_PF_EN with interrupt delivery before MSR_KVM_ASYNC_PF_INT).
    func writeMSRs(_ msrs: [SavedMSR]) throws {
        var rest = SavedMSR.restoreOrder(msrs)[...]
        while !rest.isEmpty {
            let chunk = rest.prefix(Int(CKVM_MAX_MSR_ENTRIES))
            try setMSRs(chunk.map { ($0.index, $0.value) })
            rest = rest.dropFirst(chunk.count)
        }
    }

    /// Tells the guest's kvmclock it was paused (PVCLOCK_GUEST_STOPPED), so its watchdogs do not
    /// take the pause for a lock-up. Best effort: a guest without kvmclock refuses it.
    public func notifyClockPaused() { _ = try? IOCtl.call(fd, CKVM_KVMCLOCK_CTRL, "KVM_KVMCLOCK_CTRL", value: 0) }
}

/// What KVM holds for the VM as a whole: the two PICs and the IOAPIC, the PIT, kvmclock.
public struct VMState: Codable, Sendable, Equatable {
    /// KVM_IRQCHIP_PIC_MASTER, _SLAVE, _IOAPIC, in that order.
    public var irqchips: [KernelStructure]
    public var pit: KernelStructure
    public var clock: KernelStructure
}

extension VirtualMachine {
    public func captureState() throws -> VMState {
        var chips: [KernelStructure] = []
        for id in UInt32(0)..<3 {
            var chip = kvm_irqchip()
            chip.chip_id = id
            try IOCtl.call(fd, CKVM_GET_IRQCHIP, "KVM_GET_IRQCHIP(\(id))", &chip)
            chips.append(KernelStructure(chip))
        }
        var pit = kvm_pit_state2()
        try IOCtl.call(fd, CKVM_GET_PIT2, "KVM_GET_PIT2", &pit)
        var clock = kvm_clock_data()
        try IOCtl.call(fd, CKVM_GET_CLOCK, "KVM_GET_CLOCK", &clock)
        return VMState(irqchips: chips, pit: KernelStructure(pit), clock: KernelStructure(clock))
    }

    /// Before the vCPUs are restored (their LAPICs route through these chips). With
    /// `advanceClock`, kvmclock moves on by the wall-clock time since the capture where the host
    /// records it (KVM_CLOCK_REALTIME): the guest does not live in the past.
    public func restoreState(_ s: VMState, advanceClock: Bool) throws {
        guard s.irqchips.count == 3 else { throw SavedStateError("VM: \(s.irqchips.count) interrupt controllers saved, expected 3") }
        for (i, saved) in s.irqchips.enumerated() {
            var chip = try saved.value(as: kvm_irqchip.self, zero: kvm_irqchip(), "interrupt controller \(i)")
            guard chip.chip_id == UInt32(i) else { throw SavedStateError("interrupt controller \(i): saved as chip \(chip.chip_id)") }
            try IOCtl.call(fd, CKVM_SET_IRQCHIP, "KVM_SET_IRQCHIP(\(i))", &chip)
        }
        var pit = try s.pit.value(as: kvm_pit_state2.self, zero: kvm_pit_state2(), "PIT")
        try IOCtl.call(fd, CKVM_SET_PIT2, "KVM_SET_PIT2", &pit)
        var clock = try s.clock.value(as: kvm_clock_data.self, zero: kvm_clock_data(), "kvmclock")
        // Only KVM_CLOCK_REALTIME is accepted on input; the other flags describe a reading.
        let realtime = UInt32(KVM_CLOCK_REALTIME)
        clock.flags = advanceClock && clock.flags & realtime != 0 ? realtime : 0
        try IOCtl.call(fd, CKVM_SET_CLOCK, "KVM_SET_CLOCK", &clock)
    }
}

extension KVMSystem {
    /// The MSRs KVM can save and restore for a vCPU (KVM_GET_MSR_INDEX_LIST), in the order it lists them.
    public func msrIndexList() throws -> [UInt32] {
        let list = UnsafeMutablePointer<ckvm_msr_list>.allocate(capacity: 1)
        defer { list.deallocate() }
        list.pointee.nmsrs = UInt32(CKVM_MAX_MSR_INDICES)
        try IOCtl.call(fd, CKVM_GET_MSR_INDEX_LIST, "KVM_GET_MSR_INDEX_LIST", UnsafeMutableRawPointer(list))
        let n = Int(list.pointee.nmsrs)
        return withUnsafeBytes(of: &list.pointee.indices) { Array($0.bindMemory(to: UInt32.self).prefix(n)) }
    }
}
