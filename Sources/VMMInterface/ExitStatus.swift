/// rtvisor-vmm's process exit status (docs/exit-status.md): the one place both the VMM (which
/// exits with it) and rtvisord (which decides restarts on it) read the numbers from.
public enum VMMExitStatus: Equatable, Hashable, Sendable, CustomStringConvertible {
    /// 0: the guest powered off.
    case guestPoweredOff
    /// 1: the VMM could not set the VM up, or a KVM call failed.
    case vmmError
    /// 3: the guest reset the machine (reboot).
    case guestReset
    /// 4: the CPU shut down (triple fault).
    case tripleFault
    /// 5: KVM could not run the guest (e.g. an emulation failure).
    case internalError
    /// 6: the guest reported a failure on the exit port.
    case guestFailure
    /// 7: a vCPU failed to enter the guest, or an exit the VMM does not handle.
    case vcpuFailure
    /// 8: the VM was saved to a snapshot and stopped on request (`rtvisorctl snapshot --stop`).
    case savedAndStopped
    /// 9: the VM moved to another VMM (live migration) and runs there.
    case migrated
    /// 64: bad command-line arguments (swift-argument-parser's EX_USAGE).
    case usage
    /// 128 + N: stopped by signal N (as the shell reports it; a SIGSYS seccomp kill is 159).
    case signal(Int32)
    /// Any other status (not produced by rtvisor-vmm).
    case other(Int32)

    public init(code: Int32) {
        switch code {
        case 0: self = .guestPoweredOff
        case 1: self = .vmmError
        case 3: self = .guestReset
        case 4: self = .tripleFault
        case 5: self = .internalError
        case 6: self = .guestFailure
        case 7: self = .vcpuFailure
        case 8: self = .savedAndStopped
        case 9: self = .migrated
        case 64: self = .usage
        case 129...192: self = .signal(code - 128)
        default: self = .other(code)
        }
    }

    public var code: Int32 {
        switch self {
        case .guestPoweredOff: 0
        case .vmmError: 1
        case .guestReset: 3
        case .tripleFault: 4
        case .internalError: 5
        case .guestFailure: 6
        case .vcpuFailure: 7
        case .savedAndStopped: 8
        case .migrated: 9
        case .usage: 64
        case let .signal(s): 128 + s
        case let .other(c): c
        }
    }

    public var description: String {
        switch self {
        case .guestPoweredOff: "guest powered off"
        case .vmmError: "VMM error"
        case .guestReset: "guest reset"
        case .tripleFault: "triple fault"
        case .internalError: "KVM internal error"
        case .guestFailure: "guest-reported failure"
        case .vcpuFailure: "vCPU entry failure or unexpected exit"
        case .savedAndStopped: "saved to a snapshot and stopped"
        case .migrated: "migrated to another VMM"
        case .usage: "usage error"
        case let .signal(s): "signal \(s)"
        case let .other(c): "status \(c)"
        }
    }
}
