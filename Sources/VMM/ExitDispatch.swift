import Arch
import CKVM
import Devices
import KVM
import Memory

/// What a vCPU thread does after one exit.
public enum ExitAction: Equatable, Sendable {
    /// Enter the guest again.
    case resume
    /// The run was cut short by a kick (`immediate_exit` or the kick signal): clear the flag, then
    /// enter again unless a stop is under way.
    case resumeAfterKick
    /// The VM ends for this reason.
    case stop(StopReason)
}

/// What the exit dispatch may ask of the vCPU that exited (only after the exits that end the VM).
/// `VCPU` is one; tests use a plain value.
public protocol ExitingVCPU {
    var id: Int { get }
    /// The guest's RIP, if it can be read.
    func instructionPointer() -> UInt64?
    /// A guest-linear address as guest-physical, if mapped.
    func physicalAddress(of linear: UInt64) -> UInt64?
}

extension VCPU: ExitingVCPU {
    public func instructionPointer() -> UInt64? { try? registers().rip }
    public func physicalAddress(of linear: UInt64) -> UInt64? { (try? translate(linear)) ?? nil }
}

/// Turns one `VCPUExit` into device accesses and an `ExitAction`. Port I/O and MMIO go straight
/// to the device on the bus, in the vCPU's own thread (no queue, no hand-off): an exit costs one
/// `KVM_RUN` round trip plus a binary search. Knows nothing of threads or stopping.
public struct ExitDispatch: Sendable {
    public let pio: Bus
    public let mmio: Bus
    /// For the failing instruction's bytes when KVM could not emulate it.
    public let memory: GuestMemory

    public init(pio: Bus, mmio: Bus, memory: GuestMemory) { self.pio = pio; self.mmio = mmio; self.memory = memory }

    @inline(__always)
    public func handle(_ exit: VCPUExit, on vcpu: some ExitingVCPU) -> ExitAction {
        switch exit {
        case let .portIO(io):
            let port = UInt64(io.port)
            for i in 0..<io.count {
                if io.isWrite { pio.write(port, size: io.size, value: UInt64(io.value(at: i))) }
                else { io.setValue(UInt32(truncatingIfNeeded: pio.read(port, size: io.size)), at: i) }
            }
            return .resume
        case let .mmio(m):
            if m.isWrite { mmio.write(m.address, size: m.size, value: m.value) }
            else { m.setValue(mmio.read(m.address, size: m.size)) }
            return .resume
        case .interrupted:
            return .resumeAfterKick
        case .halt:
            // Only without an in-kernel irqchip, which this VMM always creates.
            return .stop(.unexpectedExit(vcpu: vcpu.id, reason: UInt32(KVM_EXIT_HLT)))
        case .shutdown:
            return .stop(.tripleFault(vcpu: vcpu.id, rip: vcpu.instructionPointer()))
        case let .systemEvent(type):
            switch type {
            case SystemEventType.reset: return .stop(.reset)
            case SystemEventType.shutdown: return .stop(.powerOff)
            default: return .stop(.unexpectedExit(vcpu: vcpu.id, reason: UInt32(KVM_EXIT_SYSTEM_EVENT)))
            }
        case let .internalError(sub, data):
            return .stop(internalError(vcpu, suberror: sub, data: data))
        case let .failEntry(reason):
            return .stop(.entryFailure(vcpu: vcpu.id, reason: reason))
        case let .other(reason):
            return .stop(.unexpectedExit(vcpu: vcpu.id, reason: reason))
        }
    }

    /// The exit's kind and address, for the per-vCPU exit counts logged at debug level.
    public static func label(_ exit: VCPUExit) -> String {
        switch exit {
        case let .portIO(io): "pio 0x" + String(io.port, radix: 16)
        case let .mmio(m): "mmio\(m.isWrite ? "w" : "r") 0x" + String(m.address, radix: 16)
        case .interrupted: "interrupted"
        case .halt: "halt"
        case .shutdown: "shutdown"
        case .systemEvent: "system-event"
        case .internalError: "internal-error"
        case .failEntry: "fail-entry"
        case let .other(r): "exit \(r)"
        }
    }

    /// RIP and the failing instruction's bytes for an internal error.
    func internalError(_ vcpu: some ExitingVCPU, suberror: UInt32, data: [UInt64]) -> StopReason {
        let rip = vcpu.instructionPointer()
        var bytes: [UInt8] = []
        // With KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES, data[0] is the flags word and
        // data[1...] holds insn_size followed by up to 15 bytes.
        if suberror == InternalErrorSuberror.emulation, data.count >= 3, data[0] & 1 != 0 {
            var raw: [UInt8] = []
            for w in data[1...] { for i in 0..<8 { raw.append(UInt8(truncatingIfNeeded: w >> (8 * i))) } }
            let size = Int(raw[0])
            if size > 0 && size <= 15 && raw.count > size { bytes = Array(raw[1...size]) }
        }
        if bytes.isEmpty, let rip, let phys = vcpu.physicalAddress(of: rip) {
            // An instruction is at most 15 bytes; stop at the page end rather than fail.
            let n = Int(min(15, 0x1000 - (phys & 0xFFF)))
            bytes = (try? memory.read(n, at: GuestAddress(phys))) ?? []
        }
        let hint = suberror == InternalErrorSuberror.emulation ? EmulationFailureHint.diagnose(bytes) : nil
        return .internalError(vcpu: vcpu.id, suberror: suberror, rip: rip, instruction: bytes, hint: hint)
    }
}
