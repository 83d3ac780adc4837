// Its own module so that Config (the definition's `sandbox.seccomp`) and Sandbox (which installs
// the filters) share the type without Sandbox depending on all of Config, or Config on libseccomp.

/// What a thread's seccomp filter does with a syscall that is not on its list.
public enum SeccompMode: String, CaseIterable, Sendable, Codable {
    /// The default: the process dies by SIGSYS after reporting the syscall (status file, stderr).
    case enforce
    /// The syscall runs and the kernel logs it (audit/kernel log): for finding a missing entry.
    case log
    /// No filters at all.
    case off
}
