import CSandbox
import CSeccomp
import Posix
#if canImport(Glibc)
import Glibc
#endif

/// One filter compiled to classic BPF by libseccomp (the compiler), kept as bytes so it is built
/// once and installed on every thread of its kind with one seccomp(2) call.
public struct FilterProgram: Equatable, Hashable, Sendable {
    /// `struct sock_filter` instructions, 8 bytes each, in host byte order.
    public let bytes: [UInt8]

    public init(bytes: [UInt8]) { self.bytes = bytes }

    public var instructionCount: Int { bytes.count / 8 }

    /// libseccomp builds the filter: the architecture check, one branch per rule, `defaultAction`.
    public static func compile(_ rules: [SyscallRule], defaultAction: UInt32) throws -> FilterProgram {
        guard let ctx = seccomp_init(defaultAction) else { throw SandboxError("seccomp_init failed") }
        defer { seccomp_release(ctx) }
        for rule in rules {
            let nr = csandbox_syscall_number(rule.name)
            guard nr >= 0 else { throw SandboxError("unknown syscall \(rule.name)") }
            let action: UInt32 = switch rule.action {
            case .allow: csandbox_act_allow()
            case let .fail(e): csandbox_act_errno(UInt16(e))
            }
            if let checks = rule.anyOf {
                for c in checks {
                    var cmp = scmp_arg_cmp(arg: c.argument, op: SCMP_CMP_MASKED_EQ, datum_a: c.mask, datum_b: c.value)
                    let rc = seccomp_rule_add_array(ctx, action, nr, 1, &cmp)
                    guard rc == 0 else { throw SandboxError("rule \(rule.name) (\(c.label)): \(errnoMessage(-rc))") }
                }
            } else {
                let rc = seccomp_rule_add_array(ctx, action, nr, 0, nil)
                guard rc == 0 else { throw SandboxError("rule \(rule.name): \(errnoMessage(-rc))") }
            }
        }
        var raw: UnsafeMutablePointer<UInt8>? = nil
        let length = csandbox_export_program(ctx, &raw)
        defer { free(raw) }
        guard length > 0, let raw else { throw SandboxError("seccomp_export_bpf: \(errnoMessage(Int32(-length)))") }
        return FilterProgram(bytes: Array(UnsafeBufferPointer(start: raw, count: length)))
    }

    /// On the calling thread only (no TSYNC): no_new_privs, then the filter.
    public func install() throws {
        let rc = bytes.withUnsafeBufferPointer { csandbox_load_program($0.baseAddress, $0.count) }
        guard rc == 0 else { throw SandboxError("seccomp(SECCOMP_SET_MODE_FILTER): \(errnoMessage(-rc))") }
    }
}
