import CKVM
import CSandbox
import CSeccomp
import Config
import Foundation
import SandboxMode
import Testing
@testable import Sandbox
#if canImport(Glibc)
import Glibc
#endif

/// The filter tables as data: what each thread kind must be able to do, and what it must not.
struct PolicyTests {
    func names(_ kind: ThreadKind) -> Set<String> { Set(SeccompPolicy.rules(for: kind).map(\.name)) }
    func rule(_ kind: ThreadKind, _ name: String) -> SyscallRule? { SeccompPolicy.rules(for: kind).first { $0.name == name } }
    func ioctls(_ kind: ThreadKind) -> Set<UInt64> { Set(rule(kind, "ioctl")?.anyOf?.map(\.value) ?? []) }

    @Test(arguments: ThreadKind.allCases)
    func everySyscallNameIsKnownToLibseccomp(kind: ThreadKind) {
        for r in SeccompPolicy.rules(for: kind) {
            #expect(seccomp_syscall_resolve_name(r.name) >= 0, "\(kind): \(r.name)")
        }
    }

    @Test(arguments: ThreadKind.allCases)
    func noSyscallIsListedTwice(kind: ThreadKind) {
        let all = SeccompPolicy.rules(for: kind).map(\.name)
        #expect(all.count == Set(all).count, "\(kind): \(all.filter { n in all.filter { $0 == n }.count > 1 })")
    }

    /// What no thread of a running VMM may do: start programs, make processes, network
    /// sockets, debug other processes, change mounts, load kernel code, open KVM anew.
    @Test(arguments: ThreadKind.allCases)
    func dangerousSyscallsAreNotAllowed(kind: ThreadKind) {
        let forbidden = ["execve", "execveat", "fork", "vfork", "socket", "connect", "bind", "listen", "ptrace",
                         "process_vm_readv", "process_vm_writev", "mount", "umount2", "pivot_root", "chroot", "setns",
                         "unshare", "init_module", "finit_module", "kexec_load", "bpf", "perf_event_open", "keyctl",
                         "setuid", "setgid", "capset", "reboot", "swapon", "kill", "open_by_handle_at", "userfaultfd"]
        // Rules that fail a call without running it (clone3, the front's socket and listen) do not count.
        let allowed = Set(SeccompPolicy.rules(for: kind).filter { $0.action == .allow }.map(\.name))
        for f in forbidden { #expect(!allowed.contains(f), "\(kind) allows \(f)") }
    }

    /// The SIGSYS report needs write; every thread needs the runtime's memory and futexes.
    @Test(arguments: ThreadKind.allCases)
    func runtimeBasicsAndTheReportAreAllowed(kind: ThreadKind) {
        for n in ["write", "futex", "mmap", "munmap", "madvise", "rt_sigprocmask", "rt_sigreturn", "exit", "exit_group", "clock_gettime"] {
            #expect(names(kind).contains(n), "\(kind) lacks \(n)")
        }
    }

    @Test(arguments: ThreadKind.allCases)
    func noNewExecutableMemory(kind: ThreadKind) {
        for n in ["mmap", "mprotect"] {
            let checks = rule(kind, n)?.anyOf ?? []
            #expect(checks.count == 1 && checks[0].argument == 2 && checks[0].mask == UInt64(PROT_EXEC) && checks[0].value == 0, "\(kind) \(n)")
        }
    }

    @Test func vcpuIoctlsAreExactlyTheRunAndInterruptOnes() {
        let expected: Set<UInt64> = Set([CKVM_RUN, CKVM_IRQ_LINE, CKVM_SET_GSI_ROUTING, CKVM_SIGNAL_MSI, CKVM_IOEVENTFD, CKVM_IRQFD,
                                         CKVM_GET_REGS, CKVM_GET_SREGS, CKVM_TRANSLATE].map { UInt64($0) })
        let got = ioctls(.vcpu)
        #expect(got.isSuperset(of: expected))
        // Nothing that (re)configures the VM or a vCPU: memory slots, CPUID, registers, new vCPUs.
        for setup in [CKVM_CREATE_VM, CKVM_CREATE_VCPU, CKVM_SET_USER_MEMORY_REGION, CKVM_SET_CPUID2, CKVM_SET_REGS, CKVM_SET_SREGS,
                      CKVM_SET_MSRS, CKVM_GET_MSRS, CKVM_ENABLE_CAP, CKVM_SET_LAPIC, CKVM_GET_API_VERSION] {
            #expect(!got.contains(UInt64(setup)), "vcpu allows ioctl 0x\(String(setup, radix: 16))")
        }
        // ioctl is only allowed with a listed request.
        #expect(rule(.vcpu, "ioctl")?.anyOf?.allSatisfy { $0.argument == 1 && $0.mask == 0xFFFF_FFFF } == true)
    }

    @Test func ioThreadsHaveNoKVMRunAndNoThreads() {
        #expect(ioctls(.io) == [UInt64(CKVM_IRQ_LINE)])
        for n in ["clone", "clone3", "eventfd2", "epoll_create1"] { #expect(!names(.io).contains(n), "io allows \(n)") }
        // Files: an open fails (glibc's malloc tries one) without running; it never kills.
        #expect(rule(.io, "openat")?.action == .fail(EACCES) && rule(.vcpu, "openat")?.action == .fail(EACCES))
        for n in ["epoll_wait", "readv", "preadv", "pwritev", "fdatasync", "fallocate"] { #expect(names(.io).contains(n), "io lacks \(n)") }
    }

    @Test func vmmThreadsCannotRunTheGuest() {
        let got = ioctls(.vmm)
        #expect(!got.contains(UInt64(CKVM_RUN)))
        #expect(got.contains(UInt64(CKVM_IRQ_LINE)))   // Ctrl-Alt-Del from the signal thread
        for n in ["rt_sigtimedwait", "accept4", "poll", "openat", "rename"] { #expect(names(.vmm).contains(n), "vmm lacks \(n)") }
    }

    /// rtvisord's API front: sockets it was given, /proc read-only, threads; no ioctl, no
    /// writable files, no new sockets (AF_UNIX: EACCES, anything else: killed), no processes.
    @Test func theAPIFrontHasNoIoctlNoWritableFilesNoNewSockets() {
        for n in ["ioctl", "rename", "unlink", "ftruncate", "bind", "connect"] { #expect(!names(.api).contains(n), "api allows \(n)") }
        for n in ["epoll_wait", "accept4", "read", "writev", "getsockopt", "sendto"] { #expect(names(.api).contains(n), "api lacks \(n)") }
        let open = rule(.api, "openat")?.anyOf
        #expect(open?.count == 1 && open?.first?.argument == 2 && open?.first?.value == 0)
        #expect((open?.first?.mask ?? 0) & UInt64(O_ACCMODE | O_CREAT | O_TRUNC) == UInt64(O_ACCMODE | O_CREAT | O_TRUNC))
        let socket = rule(.api, "socket")
        #expect(socket?.action == .fail(EACCES) && socket?.anyOf?.map(\.value) == [UInt64(AF_UNIX)])
        #expect(rule(.api, "listen")?.action == .fail(0))
        #expect(rule(.api, "clone")?.anyOf?.first?.value == CSANDBOX_CLONE_THREAD)
        #expect(Set(rule(.api, "prctl")?.anyOf?.map(\.value) ?? []) == [CSANDBOX_PR_SET_NAME, CSANDBOX_PR_SET_NO_NEW_PRIVS, CSANDBOX_PR_SET_SECCOMP, CSANDBOX_PR_GET_NAME])
    }

    /// Threads that start threads may only make threads (CLONE_THREAD), never processes; clone3
    /// (flags behind a pointer) fails with ENOSYS so glibc falls back to clone.
    @Test(arguments: [ThreadKind.vcpu, .vmm])
    func threadCreationIsThreadsOnly(kind: ThreadKind) {
        let clone = rule(kind, "clone")
        #expect(clone?.anyOf?.count == 1 && clone?.anyOf?[0].argument == 0 && clone?.anyOf?[0].mask == CSANDBOX_CLONE_THREAD
                && clone?.anyOf?[0].value == CSANDBOX_CLONE_THREAD)
        #expect(rule(kind, "clone3")?.action == .fail(ENOSYS))
        #expect(Set(rule(kind, "prctl")?.anyOf?.map(\.value) ?? []) == [CSANDBOX_PR_SET_NAME, CSANDBOX_PR_SET_NO_NEW_PRIVS, CSANDBOX_PR_SET_SECCOMP])
    }

    @Test func tgkillOnlyToThisProcess() {
        for kind in ThreadKind.allCases {
            #expect(rule(kind, "tgkill")?.anyOf?.map(\.value) == [UInt64(UInt32(bitPattern: getpid()))], "\(kind)")
        }
    }

    /// VFIO passthrough adds its run-time ioctls to the vcpu and vmm lists only for a VM that has
    /// passthrough devices; never the container/group/DMA set-up ones. (The vmm list has
    /// KVM_SET_USER_MEMORY_REGION in every VM: a live migration turns dirty logging on with it.)
    @Test func passthroughIoctlsOnlyWhenTheVMHasPassthrough() {
        let vfio: Set<UInt64> = [CSANDBOX_VFIO_DEVICE_SET_IRQS, UInt64(CKVM_VFIO_DEVICE_RESET)]
        let slots = UInt64(CKVM_SET_USER_MEMORY_REGION)
        for kind in [ThreadKind.vcpu, .vmm] {
            let runtime = vfio.union([slots])
            let with = Set(SeccompPolicy.rules(for: kind, passthrough: true).first { $0.name == "ioctl" }?.anyOf?.map(\.value) ?? [])
            #expect(with.isSuperset(of: runtime), "\(kind)")
            #expect(ioctls(kind).isDisjoint(with: kind == .vmm ? vfio : runtime), "\(kind) without passthrough")
            #expect(ioctls(kind).contains(slots) == (kind == .vmm), "\(kind): memory slots only in the vmm list")
            for setup in [CKVM_VFIO_SET_IOMMU, CKVM_VFIO_GROUP_SET_CONTAINER, CKVM_VFIO_GROUP_GET_DEVICE_FD, CKVM_VFIO_IOMMU_MAP_DMA] {
                #expect(!with.contains(UInt64(setup)), "\(kind) allows VFIO set-up ioctl 0x\(String(setup, radix: 16))")
            }
        }
        #expect(Set(SeccompPolicy.rules(for: .io, passthrough: true).first { $0.name == "ioctl" }?.anyOf?.map(\.value) ?? []) == [UInt64(CKVM_IRQ_LINE)])
    }

    @Test func threadNamesMapToKinds() {
        #expect(ThreadKind(threadName: "vcpu0") == .vcpu)
        #expect(ThreadKind(threadName: "vcpu12") == .vcpu)
        #expect(ThreadKind(threadName: "net0-rx") == .io)
        #expect(ThreadKind(threadName: "ioeventfd") == .io)
        #expect(ThreadKind(threadName: "console-in") == .vmm)
        #expect(ThreadKind(threadName: "rt-probe") == .vmm)
    }
}

/// The definition's `sandbox` block.
struct SandboxSettingsTests {
    func parse(_ extra: String) -> Result<VMDefinition, DefinitionError> {
        let json = "{\"name\": \"s\", \"vcpus\": 1, \"memory_mib\": 64, \"kernel\": \"/dev/null\"\(extra)}"
        do { return .success(try VMDefinition.parse(Data(json.utf8), file: "s.json", baseDirectory: "/", checkFiles: false)) }
        catch { return .failure(error as! DefinitionError) }
    }

    @Test func enforcedByDefault() throws {
        #expect(try parse("").get().sandbox.seccomp == .enforce)
    }

    @Test(arguments: SeccompMode.allCases)
    func modes(mode: SeccompMode) throws {
        #expect(try parse(", \"sandbox\": {\"seccomp\": \"\(mode.rawValue)\"}").get().sandbox.seccomp == mode)
    }

    @Test func errorsNameThePath() {
        guard case let .failure(e) = parse(", \"sandbox\": {\"seccomp\": \"strict\", \"seccom\": 1}") else { Issue.record("accepted"); return }
        #expect(e.issues.contains { $0.path == "$.sandbox.seccomp" && $0.reason.contains("\"enforce\", \"log\", \"off\"") })
        #expect(e.issues.contains { $0.path == "$.sandbox.seccom" && $0.reason.contains("unknown key") })
        guard case let .failure(e2) = parse(", \"sandbox\": true") else { Issue.record("accepted"); return }
        #expect(e2.issues.contains { $0.path == "$.sandbox" && $0.reason.contains("must be an object") })
    }
}
