import CSandbox
import CSeccomp
import Posix
import SandboxMode
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

public struct SandboxError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

/// Per-thread seccomp filters for rtvisor-vmm (docs/sandbox.md). `prepare` once in the main
/// thread, before any other thread exists; then every thread calls `enterThread` (PosixThread
/// threads do it through the start hook) before it does its work, the vCPUs before KVM_RUN.
/// Nothing is filtered in a process that did not call `prepare` (tests running a Machine in-process).
public enum Sandbox {
    struct State: Sendable {
        var mode: SeccompMode = .off
        var prepared = false
        var testTarget: String?
        /// Each kind's filter, compiled once by `prepare` (while nothing is filtered: compiling
        /// needs a memfd, which the filters do not allow) and installed on every thread of the kind.
        var programs: [ThreadKind: FilterProgram] = [:]
    }
    static let state = Mutex(State())

    public static var mode: SeccompMode? { state.withLock { $0.prepared ? $0.mode : nil } }

    /// The SIGSYS report (stderr and the status file, opened now: a trapped thread may not
    /// open files), PosixThread's start hook, and no core dumps (guest memory stays private).
    /// `sharedMemoryBars`: the VM has channel devices, whose BAR2 memory slot follows the guest.
    public static func prepare(mode: SeccompMode, vmName: String, statusFile: String?, passthrough: Bool = false, sharedMemoryBars: Bool = false) throws {
        var target: String? = nil
        #if RTVISOR_TEST_HOOKS
        if let v = getenv("RTVISOR_TEST_FORBIDDEN_SYSCALL") { target = String(cString: v) }
        #endif
        var programs: [ThreadKind: FilterProgram] = [:]
        if mode != .off {
            for kind in [ThreadKind.vcpu, .io, .vmm] {
                programs[kind] = try FilterProgram.compile(SeccompPolicy.rules(for: kind, passthrough: passthrough, sharedMemoryBars: sharedMemoryBars),
                                                       defaultAction: defaultAction(mode))
            }
        }
        state.withLock { $0 = State(mode: mode, prepared: true, testTarget: target, programs: programs) }
        guard mode != .off else { return }
        var fd: Int32 = -1
        if let statusFile, mode == .enforce {
            fd = open(statusFile, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o640)
            if fd < 0 { throw SandboxError("--status-file \(statusFile): \(errnoMessage())") }
        }
        if mode == .enforce {
            guard csandbox_install_sigsys_handler(vmName, fd) == 0 else {
                throw SandboxError("sigaction(SIGSYS): \(errnoMessage())")
            }
            disableCoreDumps()
        }
        PosixThread.setStartHook { name in
            let kind = ThreadKind(threadName: name)
            // vCPU threads install theirs in the vCPU loop, after the real-time setup.
            if kind != .vcpu { enterThreadOrExit(kind, label: name) }
        }
    }

    /// Installs `kind`'s filter on the calling thread (only), in the prepared mode.
    public static func enterThread(_ kind: ThreadKind, label: String) throws {
        let (mode, prepared, target, program) = state.withLock { ($0.mode, $0.prepared, $0.testTarget, $0.programs[kind]) }
        guard prepared else { return }
        if mode != .off {
            guard let program else { throw SandboxError("no \(kind.rawValue) filter was compiled") }
            csandbox_set_thread_label(label, kind.rawValue)
            try program.install()
        }
        #if RTVISOR_TEST_HOOKS
        // Test builds only: a forbidden syscall on this thread (SeccompTests).
        if let target, target == kind.rawValue || target == label { issueForbiddenSyscall(kind, label: label, program: "rtvisor-vmm") }
        // Test builds only: heavy allocation churn on this thread, under its filter (SeccompTests).
        if let v = getenv("RTVISOR_TEST_MALLOC_CHURN"), String(cString: v) == kind.rawValue || String(cString: v) == label {
            csandbox_malloc_churn()
            writeStderr("rtvisor-vmm: test hook: thread \(label) (\(kind.rawValue)) churned malloc under its filter\n")
        }
        #else
        _ = target
        #endif
    }

    /// For threads that cannot report an error: a filter that cannot be installed ends the VMM
    /// (exit status 1) rather than let the thread run unfiltered.
    public static func enterThreadOrExit(_ kind: ThreadKind, label: String) {
        do { try enterThread(kind, label: label) } catch {
            writeStderr("rtvisor-vmm: seccomp filter of thread \(label) (\(kind.rawValue)): \(error)\n")
            _exit(1)
        }
    }

    /// Confines a whole single-threaded process (rtvisord's API front, docs/sandbox.md): the
    /// SIGSYS report (to stderr and `reportFD`, -1 for none) and `kind`'s filter on the calling
    /// thread, before any other thread exists, so that every thread created later (event loop,
    /// Swift-concurrency workers) inherits it. In log mode nothing is killed.
    public static func confineProcess(_ kind: ThreadKind, program: String, subject: String, reportFD: Int32, mode: SeccompMode) throws {
        guard mode != .off else { return }
        let threads = Jail.threadCount()
        guard threads == 1 else { throw SandboxError("\(program): \(threads) threads exist; the filter must be installed before the first one starts") }
        if mode == .enforce {
            guard csandbox_install_sigsys_report(program, subject, reportFD) == 0 else {
                throw SandboxError("sigaction(SIGSYS): \(errnoMessage())")
            }
            // A SIGSYS core would hold whatever the process was handling (request bodies).
            disableCoreDumps()
        }
        csandbox_set_thread_label("main", kind.rawValue)
        csandbox_set_process_kind(kind.rawValue)
        try FilterProgram.compile(SeccompPolicy.rules(for: kind), defaultAction: defaultAction(mode)).install()
    }

    static func defaultAction(_ mode: SeccompMode) -> UInt32 { mode == .enforce ? csandbox_act_trap() : csandbox_act_log() }

    /// RLIMIT_CORE 0: the SIGSYS kill writes no core (it would hold guest memory or request bodies).
    static func disableCoreDumps() {
        var none = rlimit(rlim_cur: 0, rlim_max: 0)
        _ = withUnsafePointer(to: &none) { setrlimit(__rlimit_resource_t(RLIMIT_CORE.rawValue), $0) }
    }

    /// Test builds only: a forbidden syscall (socket(AF_INET)) when `RTVISOR_TEST_FORBIDDEN_SYSCALL`
    /// names `kind`; rtvisord's API front calls it for one request target (SeccompTests).
    public static func testHook(_ kind: ThreadKind, label: String) {
        #if RTVISOR_TEST_HOOKS
        guard let v = getenv("RTVISOR_TEST_FORBIDDEN_SYSCALL"), String(cString: v) == kind.rawValue else { return }
        issueForbiddenSyscall(kind, label: label, program: "rtvisord-api")
        #endif
    }

    #if RTVISOR_TEST_HOOKS
    /// The test hooks' forbidden syscall, socket(AF_INET); what it returned only if it was let run.
    static func issueForbiddenSyscall(_ kind: ThreadKind, label: String, program: String) {
        let r = csandbox_forbidden_socket()
        writeStderr("\(program): test hook: thread \(label) (\(kind.rawValue)) issued socket(): \(r)\n")
    }
    #endif

    static func writeStderr(_ s: String) {
        var bytes = Array(s.utf8)
        _ = bytes.withUnsafeMutableBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
    }
}
