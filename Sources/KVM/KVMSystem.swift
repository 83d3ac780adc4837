import Arch
import CKVM
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// An open `/dev/kvm`.
public final class KVMSystem: Sendable {
    public let fd: FileDescriptor
    public static let expectedAPIVersion: Int32 = 12

    public init(path: String = "/dev/kvm") throws {
        do {
            fd = try FileDescriptor.open(FilePath(path), .readWrite, options: [.closeOnExec])
        } catch let e as Errno {
            let hint: String = switch e {
            case .noSuchFileOrDirectory: "no KVM on this host (is the kvm module loaded, and is virtualization enabled?)"
            case .permissionDenied: "no permission (run as root or add the user to the kvm group)"
            default: "cannot use KVM"
            }
            throw KVMError("open(\(path))", e, hint: hint)
        }
        let version = try IOCtl.call(fd, CKVM_GET_API_VERSION, "KVM_GET_API_VERSION", value: 0)
        guard version == Self.expectedAPIVersion else {
            try? fd.close()
            throw KVMError("KVM_GET_API_VERSION", .notSupported, hint: "API version \(version), need \(Self.expectedAPIVersion)")
        }
    }

    deinit { try? fd.close() }

    public func checkExtension(_ cap: Int32) -> Int32 {
        (try? IOCtl.call(fd, CKVM_CHECK_EXTENSION, "KVM_CHECK_EXTENSION", value: UInt(cap))) ?? 0
    }

    /// Fails with a message naming the capability when the host lacks one the VMM needs.
    public func require(_ cap: Int32, _ name: String) throws {
        if checkExtension(cap) <= 0 { throw KVMError("KVM_CHECK_EXTENSION(\(name))", .notSupported, hint: "host KVM lacks \(name)") }
    }

    public func vcpuMmapSize() throws -> Int {
        Int(try IOCtl.call(fd, CKVM_GET_VCPU_MMAP_SIZE, "KVM_GET_VCPU_MMAP_SIZE", value: 0))
    }

    public func supportedCPUID() throws -> [CPUIDEntry] {
        var table = ckvm_cpuid2()
        table.nent = UInt32(CKVM_MAX_CPUID_ENTRIES)
        try IOCtl.call(fd, CKVM_GET_SUPPORTED_CPUID, "KVM_GET_SUPPORTED_CPUID", &table)
        return CPUIDEntry.from(&table)
    }

    public func createVM() throws -> VirtualMachine {
        let raw = try IOCtl.call(fd, CKVM_CREATE_VM, "KVM_CREATE_VM", value: 0)
        return VirtualMachine(fd: FileDescriptor(rawValue: raw), system: self)
    }

    /// True when the host KVM emulates guest ring-0 code (the nested `kvm_pvm` module), which
    /// lacks some instructions: the `emulating-kvm` CPU template exists for such hosts.
    public static var hostEmulatesRing0: Bool {
        access("/sys/module/kvm_pvm", F_OK) == 0
    }
}

/// Capability numbers the VMM checks (from <linux/kvm.h>).
public enum KVMCapability {
    public static let irqchip = Int32(KVM_CAP_IRQCHIP)
    public static let userMemory = Int32(KVM_CAP_USER_MEMORY)
    public static let setTSSAddress = Int32(KVM_CAP_SET_TSS_ADDR)
    public static let pit2 = Int32(KVM_CAP_PIT2)
    public static let extCPUID = Int32(KVM_CAP_EXT_CPUID)
    public static let irqfd = Int32(KVM_CAP_IRQFD)
    public static let irqRouting = Int32(KVM_CAP_IRQ_ROUTING)
    public static let ioeventfd = Int32(KVM_CAP_IOEVENTFD)
    public static let maxVCPUs = Int32(KVM_CAP_MAX_VCPUS)
    public static let immediateExit = Int32(KVM_CAP_IMMEDIATE_EXIT)
    public static let xsave = Int32(KVM_CAP_XSAVE)
    public static let xcrs = Int32(KVM_CAP_XCRS)
    public static let tscControl = Int32(KVM_CAP_TSC_CONTROL)
    public static let adjustClock = Int32(KVM_CAP_ADJUST_CLOCK)
    /// Returns the KVM_X86_DISABLE_EXITS_* bits this host can disable.
    public static let x86DisableExits = Int32(KVM_CAP_X86_DISABLE_EXITS)
}

extension CPUIDEntry {
    static func from(_ table: inout ckvm_cpuid2) -> [CPUIDEntry] {
        let n = Int(min(table.nent, UInt32(CKVM_MAX_CPUID_ENTRIES)))
        return withUnsafeBytes(of: &table.entries) { raw in
            let entries = raw.bindMemory(to: kvm_cpuid_entry2.self)
            return (0..<n).map { i in
                let e = entries[i]
                return CPUIDEntry(function: e.function, index: e.index, flags: e.flags,
                                  eax: e.eax, ebx: e.ebx, ecx: e.ecx, edx: e.edx)
            }
        }
    }
}
