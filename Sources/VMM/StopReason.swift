import Arch
import KVM
import VMMInterface

/// Why a VM ended. Every case maps to a documented process exit status (docs/exit-status.md).
public enum StopReason: Equatable, Sendable, CustomStringConvertible {
    case powerOff
    case reset
    case guestFailure(code: UInt8)
    case tripleFault(vcpu: Int, rip: UInt64?)
    case internalError(vcpu: Int, suberror: UInt32, rip: UInt64?, instruction: [UInt8], hint: EmulationFailureHint?)
    case entryFailure(vcpu: Int, reason: UInt64)
    case unexpectedExit(vcpu: Int, reason: UInt32)
    case vmmError(String)
    case signal(Int32)
    /// Saved to a snapshot, then stopped on request.
    case savedAndStopped
    /// Moved to another VMM, which runs it now.
    case migrated

    /// The process exit status for this reason (the daemon↔VMM contract's).
    public var exitStatus: VMMExitStatus {
        switch self {
        case .powerOff: .guestPoweredOff
        case .vmmError: .vmmError
        case .reset: .guestReset
        case .tripleFault: .tripleFault
        case .internalError: .internalError
        case .guestFailure: .guestFailure
        case .entryFailure, .unexpectedExit: .vcpuFailure
        case let .signal(s): .signal(s)
        case .savedAndStopped: .savedAndStopped
        case .migrated: .migrated
        }
    }

    /// The exit-status file's contents for this reason.
    public var exitReport: VMMExitReport { VMMExitReport(status: exitStatus, reason: description) }

    public var description: String {
        func hex(_ v: UInt64?) -> String { v.map { "0x" + String($0, radix: 16) } ?? "unknown" }
        switch self {
        case .powerOff: return "guest powered off"
        case .reset: return "guest reset (reboot)"
        case let .guestFailure(code): return "guest reported failure code \(code) on the exit port"
        case let .tripleFault(v, rip): return "triple fault on vCPU \(v) (KVM_EXIT_SHUTDOWN), RIP \(hex(rip))"
        case let .internalError(v, sub, rip, bytes, hint):
            var s = "KVM internal error on vCPU \(v): \(InternalErrorSuberror.name(sub)) (suberror \(sub)), RIP \(hex(rip))"
            if !bytes.isEmpty { s += ", instruction bytes " + bytes.map { String(format2: $0) }.joined(separator: " ") }
            if let hint { s += "; \(hint)" }
            return s
        case let .entryFailure(v, r): return "vCPU \(v) failed to enter the guest (hardware reason 0x\(String(r, radix: 16)))"
        case let .unexpectedExit(v, r): return "vCPU \(v): unexpected KVM exit reason \(r)"
        case let .vmmError(m): return "VMM error: \(m)"
        case let .signal(s): return "stopped by signal \(s)"
        case .savedAndStopped: return "saved to a snapshot and stopped"
        case .migrated: return "migrated to another VMM"
        }
    }
}

extension String {
    init(format2 byte: UInt8) {
        let s = String(byte, radix: 16)
        self = s.count == 1 ? "0" + s : s
    }
}
