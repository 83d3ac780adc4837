import CKVM
import CSandbox
import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// The kinds of thread a filter is written for (docs/sandbox.md has the tables and the why).
public enum ThreadKind: String, CaseIterable, Sendable {
    /// `vcpuN`: KVM_RUN and the device work done on exits (virtio-blk I/O, virtio-net TX, MSI-X
    /// routes, console output). Also the parent of virtio-net's RX thread.
    case vcpu
    /// `netN-rx` (tap → guest) and `ioeventfd` (doorbells in the kernel, device work here).
    case io
    /// The VMM's main thread once the VM is set up, and its helpers: signal forwarder, console
    /// server, console input, real-time latency probe.
    case vmm
    /// rtvisord's API event-loop threads (SwiftNIO). Defined and tested as data; not installed
    /// (docs/sandbox.md explains why a per-thread filter cannot be confined to them).
    case api

    /// The kind of a thread from its name (PosixThread names, docs/sandbox.md).
    public init(threadName name: String) {
        if name.hasPrefix("vcpu") { self = .vcpu }
        else if name.hasSuffix("-rx") || name == "ioeventfd" { self = .io }
        else { self = .vmm }
    }
}

/// One condition on one syscall argument: `(arg & mask) == value`.
public struct ArgumentCheck: Sendable, Equatable {
    public let argument: UInt32
    public let mask: UInt64
    public let value: UInt64
    /// What the value means (an ioctl or prctl name), for the docs and test messages.
    public let label: String
    public init(argument: UInt32, mask: UInt64 = .max, value: UInt64, label: String) {
        self.argument = argument; self.mask = mask; self.value = value; self.label = label
    }
}

/// What the filter does with a listed syscall.
public enum RuleAction: Sendable, Equatable {
    case allow
    /// Fails with this errno without running (clone3 → ENOSYS: glibc falls back to clone,
    /// whose flags a filter can see).
    case fail(Int32)
}

/// A syscall a thread kind may make, with or without conditions on its arguments.
public struct SyscallRule: Sendable, Equatable {
    public let name: String
    /// nil: any arguments; otherwise allowed when any one check matches.
    public let anyOf: [ArgumentCheck]?
    public let action: RuleAction
    public init(_ name: String, anyOf: [ArgumentCheck]? = nil, action: RuleAction = .allow) {
        self.name = name; self.anyOf = anyOf; self.action = action
    }
}

/// The allow-lists, as data. x86-64 syscall names (libseccomp resolves them).
public enum SeccompPolicy {
    /// ioctl request numbers are 32-bit; compare only those bits (a caller passing an `int`
    /// request sign-extends it).
    static func ioctl(_ requests: [(UInt, String)]) -> SyscallRule {
        SyscallRule("ioctl", anyOf: requests.map { ArgumentCheck(argument: 1, mask: 0xFFFF_FFFF, value: UInt64($0.0), label: $0.1) })
    }

    /// What every filtered thread needs: the Swift runtime and malloc (memory, futexes, signal
    /// masks, time), thread exit, and the SIGSYS report itself (write).
    static func base(pid: pid_t) -> [SyscallRule] {
        let noExec = [ArgumentCheck(argument: 2, mask: UInt64(PROT_EXEC), value: 0, label: "without PROT_EXEC")]
        return [
            SyscallRule("futex"), SyscallRule("brk"), SyscallRule("madvise"), SyscallRule("munmap"), SyscallRule("mremap"),
            // No new executable memory: nothing in a running VMM generates code.
            SyscallRule("mmap", anyOf: noExec), SyscallRule("mprotect", anyOf: noExec),
            SyscallRule("rt_sigprocmask"), SyscallRule("rt_sigreturn"), SyscallRule("sigaltstack"),
            SyscallRule("clock_gettime"), SyscallRule("clock_nanosleep"), SyscallRule("nanosleep"), SyscallRule("sched_yield"),
            SyscallRule("gettid"), SyscallRule("getpid"), SyscallRule("getrandom"),
            // pthread_kill: the vCPU kick (SIGUSR2) and abort(); only threads of this process.
            SyscallRule("tgkill", anyOf: [ArgumentCheck(argument: 0, mask: 0xFFFF_FFFF, value: UInt64(UInt32(bitPattern: pid)), label: "this process")]),
            SyscallRule("write"),
            SyscallRule("exit"), SyscallRule("exit_group"), SyscallRule("restart_syscall"),
        ]
    }

    /// Starting a thread (glibc's pthread_create) and letting it install its own, narrower filter.
    static func threadCreation(prctl extra: [ArgumentCheck] = []) -> [SyscallRule] {
        [
            SyscallRule("clone3", action: .fail(ENOSYS)),
            SyscallRule("clone", anyOf: [ArgumentCheck(argument: 0, mask: CSANDBOX_CLONE_THREAD, value: CSANDBOX_CLONE_THREAD, label: "CLONE_THREAD (threads, never processes)")]),
            SyscallRule("set_robust_list"), SyscallRule("rseq"),
            SyscallRule("prctl", anyOf: [
                ArgumentCheck(argument: 0, mask: 0xFFFF_FFFF, value: CSANDBOX_PR_SET_NAME, label: "PR_SET_NAME"),
                ArgumentCheck(argument: 0, mask: 0xFFFF_FFFF, value: CSANDBOX_PR_SET_NO_NEW_PRIVS, label: "PR_SET_NO_NEW_PRIVS"),
                // Where seccomp(2) is refused (a systemd unit's SystemCallFilter=), filters load this way.
                ArgumentCheck(argument: 0, mask: 0xFFFF_FFFF, value: CSANDBOX_PR_SET_SECCOMP, label: "PR_SET_SECCOMP"),
            ] + extra),
            // A filter can only be narrowed by another: allowing seccomp() gives nothing away.
            SyscallRule("seccomp"),
        ]
    }

    /// glibc's malloc reads /proc/sys/vm/overcommit_memory the first time it shrinks a thread's
    /// arena, so a guest that makes a vCPU or I/O thread allocate and free a lot would make it
    /// open a file. Those threads may open nothing: the call fails (malloc then just uses
    /// MADV_DONTNEED) instead of killing the VMM (issue 16).
    static let noFiles = SyscallRule("openat", action: .fail(EACCES))

    static let blockIO = ["pread64", "preadv", "pwrite64", "pwritev", "fdatasync", "fsync", "fallocate"].map { SyscallRule($0) }
    /// The journal (JournaldLogHandler: one datagram per entry) when logging from this thread.
    static let journal = ["sendto", "sendmsg"].map { SyscallRule($0) }

    /// VFIO passthrough (docs/vfio.md), only in the filters of a VM that has it: the guest's
    /// interrupt enables (VFIO_DEVICE_SET_IRQS), BAR moves (the device's mmap'd BARs follow as KVM
    /// memory slots), function resets, and the device's config space and regions (pread/pwrite).
    static func passthrough(_ kind: ThreadKind) -> [(UInt, String)] {
        let irqsAndReset = [(UInt(CSANDBOX_VFIO_DEVICE_SET_IRQS), "VFIO_DEVICE_SET_IRQS"), (CKVM_VFIO_DEVICE_RESET, "VFIO_DEVICE_RESET")]
        switch kind {
        case .vcpu: return irqsAndReset + [(CKVM_SET_USER_MEMORY_REGION, "KVM_SET_USER_MEMORY_REGION")]
        case .vmm: return irqsAndReset  // KVM_SET_USER_MEMORY_REGION is in every vmm filter (migration)
        case .io, .api: return []
        }
    }

    /// Reading the VM's state for a snapshot or a migration, from the control server's thread
    /// with the vCPUs parked (docs/snapshot.md), telling kvmclock about the pause, and a
    /// migration's dirty log (docs/migration.md).
    static let snapshotIoctls: [(UInt, String)] = [
        (CKVM_GET_MSR_INDEX_LIST, "KVM_GET_MSR_INDEX_LIST"), (CKVM_GET_IRQCHIP, "KVM_GET_IRQCHIP"), (CKVM_GET_PIT2, "KVM_GET_PIT2"),
        (CKVM_GET_CLOCK, "KVM_GET_CLOCK"), (CKVM_GET_MP_STATE, "KVM_GET_MP_STATE"), (CKVM_GET_REGS, "KVM_GET_REGS"),
        (CKVM_GET_SREGS, "KVM_GET_SREGS"), (CKVM_GET_XSAVE, "KVM_GET_XSAVE"), (CKVM_GET_FPU, "KVM_GET_FPU"),
        (CKVM_GET_XCRS, "KVM_GET_XCRS"), (CKVM_GET_DEBUGREGS, "KVM_GET_DEBUGREGS"), (CKVM_GET_LAPIC, "KVM_GET_LAPIC"),
        (CKVM_GET_TSC_KHZ, "KVM_GET_TSC_KHZ"), (CKVM_GET_MSRS, "KVM_GET_MSRS"), (CKVM_GET_VCPU_EVENTS, "KVM_GET_VCPU_EVENTS"),
        (CKVM_GET_CPUID2, "KVM_GET_CPUID2"), (CKVM_CHECK_EXTENSION, "KVM_CHECK_EXTENSION"), (CKVM_KVMCLOCK_CTRL, "KVM_KVMCLOCK_CTRL"),
        // live migration: dirty logging turned on and off per memory slot, and read
        (CKVM_SET_USER_MEMORY_REGION, "KVM_SET_USER_MEMORY_REGION"), (CKVM_GET_DIRTY_LOG, "KVM_GET_DIRTY_LOG"),
    ]

    /// `passthrough`: the VM has VFIO devices (their ioctls join the vcpu and vmm lists).
    /// `sharedMemoryBars`: the VM has channels (docs/channels.md); a vCPU thread moves BAR2's
    /// memory slot when the guest moves the BAR or turns memory decoding off and on.
    public static func rules(for kind: ThreadKind, pid: pid_t = getpid(), passthrough vfio: Bool = false, sharedMemoryBars: Bool = false) -> [SyscallRule] {
        var extra = vfio ? passthrough(kind) : []
        if sharedMemoryBars && kind == .vcpu && !extra.contains(where: { $0.0 == CKVM_SET_USER_MEMORY_REGION }) {
            extra.append((CKVM_SET_USER_MEMORY_REGION, "KVM_SET_USER_MEMORY_REGION"))
        }
        var r = base(pid: pid)
        switch kind {
        case .vcpu:
            r += [ioctl([(CKVM_RUN, "KVM_RUN"), (CKVM_IRQ_LINE, "KVM_IRQ_LINE"), (CKVM_SET_GSI_ROUTING, "KVM_SET_GSI_ROUTING"),
                         (CKVM_SIGNAL_MSI, "KVM_SIGNAL_MSI"), (CKVM_IOEVENTFD, "KVM_IOEVENTFD"), (CKVM_IRQFD, "KVM_IRQFD"),
                         (CKVM_GET_REGS, "KVM_GET_REGS"), (CKVM_GET_SREGS, "KVM_GET_SREGS"), (CKVM_TRANSLATE, "KVM_TRANSLATE"),
                         (CLINUX_TUNSETOFFLOAD, "TUNSETOFFLOAD")] + extra)]
            r += blockIO
            r += ["read", "readv", "writev", "close", "fstat", "newfstatat", "lseek"].map { SyscallRule($0) }
            // Virtio-net's RX thread is started here when the driver sets DRIVER_OK (eventfd,
            // epoll, thread), and inherits this filter under its own: it needs epoll_wait and readv.
            r += ["eventfd2", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait"].map { SyscallRule($0) }
            r += threadCreation()
            r += journal
            r.append(noFiles)
        case .io:
            r += [ioctl([(CKVM_IRQ_LINE, "KVM_IRQ_LINE")])]   // INTx for drivers without MSI-X
            r += blockIO
            r += ["read", "readv", "writev", "close", "fstat", "newfstatat", "lseek", "epoll_wait", "epoll_pwait"].map { SyscallRule($0) }
            r += journal
            r.append(noFiles)
        case .vmm:
            r += [ioctl([(CKVM_IRQ_LINE, "KVM_IRQ_LINE"), (CKVM_IOEVENTFD, "KVM_IOEVENTFD"), (CKVM_SET_GSI_ROUTING, "KVM_SET_GSI_ROUTING"),
                         (CKVM_IRQFD, "KVM_IRQFD"),
                         (UInt(TCGETS), "TCGETS"), (UInt(TCSETS), "TCSETS"), (UInt(TCSETSW), "TCSETSW"), (UInt(TCSETSF), "TCSETSF")] + snapshotIoctls + extra)]
            // snapshots: the memory file (written at offsets, holes left) and the pause's waits
            r += ["pread64", "pwrite64"].map { SyscallRule($0) }
            r += ["read", "readv", "writev", "close", "fstat", "newfstatat", "lseek", "fsync", "fdatasync",
                  // exit-status and latency files (temporary file + rename), real-time cgroup/IRQ files
                  "openat", "rename", "renameat", "unlink", "unlinkat", "rmdir", "getdents64", "fcntl", "ftruncate",
                  // console socket server and sigwait
                  "poll", "ppoll", "accept4", "recvfrom", "rt_sigtimedwait",
                  // the control socket: its peer's uid, requests, the snapshot files passed with them (SCM_RIGHTS)
                  "getsockopt", "recvmsg",
                  // journal entries too big for a datagram go through a sealed memfd
                  "memfd_create",
                  // real-time latency probe threads and the partition's undo
                  "sched_setaffinity", "sched_getaffinity", "sched_setscheduler", "sched_getscheduler", "sched_getparam", "munlockall",
                  // a VMM that keeps root (--no-jail) undoes or hands over its real-time partition
                  // itself: the cpuset and partition-state locks, and which IRQs still exist
                  "flock", "access",
                  // resuming after a snapshot or a migration's pause restarts virtio-net's receive
                  // thread from here: its epoll and kick, and (filters stack) what it then calls
                  "eventfd2", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait",
            ].map { SyscallRule($0) }
            r += threadCreation()
            r += journal
        case .api:
            // rtvisord's API front process (every thread: the filter is installed before the
            // first one starts). SwiftNIO's event loop on the inherited listening socket (epoll,
            // eventfd/timerfd wake-ups, accept, I/O; peers' credentials and groups by
            // getsockopt SO_PEERCRED/SO_PEERGROUPS), the control socket to rtvisord. openat stays
            // read-only: peers' groups no longer need /proc/PID/status (issue 16), but no strace
            // run has yet shown that nothing else in the front opens a file.
            r += ["read", "readv", "writev", "close", "epoll_create1", "epoll_wait", "epoll_pwait", "epoll_ctl", "eventfd2",
                  "timerfd_create", "timerfd_settime", "accept4", "recvfrom", "recvmsg", "shutdown", "getsockopt",
                  "setsockopt", "getsockname", "getpeername", "fcntl", "fstat", "newfstatat", "lseek",
                  "sched_getaffinity", "memfd_create", "epoll_create",
                  // libdispatch: its workers' priorities (only lowered: raising needs a capability)
                  "setpriority",
                  // SIGSYS stays deadly: the kernel resets an ignored SIGSYS to the default action
                  "rt_sigaction"].map { SyscallRule($0) }
            r += [SyscallRule("openat", anyOf: [ArgumentCheck(argument: 2, mask: UInt64(O_ACCMODE | O_CREAT | O_TRUNC), value: 0, label: "read-only, existing files")])]
            // libdispatch tries syslog's /dev/log once; it is told no. Other families stay forbidden.
            r += [SyscallRule("socket", anyOf: [ArgumentCheck(argument: 0, mask: 0xFFFF_FFFF, value: UInt64(AF_UNIX), label: "AF_UNIX")], action: .fail(EACCES))]
            // NIO's server channel calls listen() on the (already listening) socket: it is told
            // yes without the call running.
            r += [SyscallRule("listen", action: .fail(0))]
            // libdispatch reads its threads' names back.
            r += threadCreation(prctl: [ArgumentCheck(argument: 0, mask: 0xFFFF_FFFF, value: CSANDBOX_PR_GET_NAME, label: "PR_GET_NAME")])
            r += journal
        }
        return r
    }
}
