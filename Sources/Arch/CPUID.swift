/// One CPUID leaf/subleaf as KVM hands it around (`struct kvm_cpuid_entry2`), free of C types.
public struct CPUIDEntry: Equatable, Sendable {
    public var function: UInt32
    public var index: UInt32
    public var flags: UInt32
    public var eax: UInt32
    public var ebx: UInt32
    public var ecx: UInt32
    public var edx: UInt32

    public init(function: UInt32, index: UInt32 = 0, flags: UInt32 = 0,
                eax: UInt32 = 0, ebx: UInt32 = 0, ecx: UInt32 = 0, edx: UInt32 = 0) {
        self.function = function; self.index = index; self.flags = flags
        self.eax = eax; self.ebx = ebx; self.ecx = ecx; self.edx = edx
    }

    public enum Register: String, Sendable { case eax, ebx, ecx, edx }

    public subscript(register: Register) -> UInt32 {
        get {
            switch register {
            case .eax: eax
            case .ebx: ebx
            case .ecx: ecx
            case .edx: edx
            }
        }
        set {
            switch register {
            case .eax: eax = newValue
            case .ebx: ebx = newValue
            case .ecx: ecx = newValue
            case .edx: edx = newValue
            }
        }
    }
}

/// A CPU feature the VM definition can hide, by the name Linux uses in /proc/cpuinfo.
public struct CPUFeature: Hashable, Sendable, CustomStringConvertible {
    public let name: String
    public let leaf: UInt32
    public let subleaf: UInt32
    public let register: CPUIDEntry.Register
    public let bit: Int
    /// Features that make no sense without this one; hiding this hides them too.
    public let dependents: [String]

    public var description: String { "\(name) (CPUID.\(String(leaf, radix: 16))h.\(subleaf):\(register.rawValue.uppercased())[\(bit)])" }

    public static let all: [CPUFeature] = [
        // Leaf 1 ECX
        .init(name: "sse3", leaf: 1, subleaf: 0, register: .ecx, bit: 0, dependents: []),
        .init(name: "pclmulqdq", leaf: 1, subleaf: 0, register: .ecx, bit: 1, dependents: []),
        .init(name: "monitor", leaf: 1, subleaf: 0, register: .ecx, bit: 3, dependents: []),
        .init(name: "vmx", leaf: 1, subleaf: 0, register: .ecx, bit: 5, dependents: []),
        .init(name: "ssse3", leaf: 1, subleaf: 0, register: .ecx, bit: 9, dependents: []),
        .init(name: "fma", leaf: 1, subleaf: 0, register: .ecx, bit: 12, dependents: []),
        .init(name: "cx16", leaf: 1, subleaf: 0, register: .ecx, bit: 13, dependents: []),
        .init(name: "pdcm", leaf: 1, subleaf: 0, register: .ecx, bit: 15, dependents: []),
        .init(name: "pcid", leaf: 1, subleaf: 0, register: .ecx, bit: 17, dependents: ["invpcid"]),
        .init(name: "sse4_1", leaf: 1, subleaf: 0, register: .ecx, bit: 19, dependents: []),
        .init(name: "sse4_2", leaf: 1, subleaf: 0, register: .ecx, bit: 20, dependents: []),
        .init(name: "x2apic", leaf: 1, subleaf: 0, register: .ecx, bit: 21, dependents: []),
        .init(name: "movbe", leaf: 1, subleaf: 0, register: .ecx, bit: 22, dependents: []),
        .init(name: "popcnt", leaf: 1, subleaf: 0, register: .ecx, bit: 23, dependents: []),
        .init(name: "tsc_deadline_timer", leaf: 1, subleaf: 0, register: .ecx, bit: 24, dependents: []),
        .init(name: "aes", leaf: 1, subleaf: 0, register: .ecx, bit: 25, dependents: []),
        .init(name: "xsave", leaf: 1, subleaf: 0, register: .ecx, bit: 26,
              dependents: ["osxsave", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512cd", "avx512bw",
                           "avx512vl", "avx512ifma", "avx512vbmi", "mpx", "xsaveopt", "xsavec", "xgetbv1", "xsaves"]),
        .init(name: "osxsave", leaf: 1, subleaf: 0, register: .ecx, bit: 27, dependents: []),
        .init(name: "avx", leaf: 1, subleaf: 0, register: .ecx, bit: 28, dependents: ["avx2", "fma", "f16c"]),
        .init(name: "f16c", leaf: 1, subleaf: 0, register: .ecx, bit: 29, dependents: []),
        .init(name: "rdrand", leaf: 1, subleaf: 0, register: .ecx, bit: 30, dependents: []),
        .init(name: "hypervisor", leaf: 1, subleaf: 0, register: .ecx, bit: 31, dependents: []),
        // Leaf 1 EDX
        .init(name: "tsc", leaf: 1, subleaf: 0, register: .edx, bit: 4, dependents: []),
        .init(name: "mtrr", leaf: 1, subleaf: 0, register: .edx, bit: 12, dependents: []),
        .init(name: "pat", leaf: 1, subleaf: 0, register: .edx, bit: 16, dependents: []),
        .init(name: "ht", leaf: 1, subleaf: 0, register: .edx, bit: 28, dependents: []),
        // Leaf 7.0 EBX
        .init(name: "fsgsbase", leaf: 7, subleaf: 0, register: .ebx, bit: 0, dependents: []),
        .init(name: "bmi1", leaf: 7, subleaf: 0, register: .ebx, bit: 3, dependents: []),
        .init(name: "hle", leaf: 7, subleaf: 0, register: .ebx, bit: 4, dependents: []),
        .init(name: "avx2", leaf: 7, subleaf: 0, register: .ebx, bit: 5, dependents: []),
        .init(name: "smep", leaf: 7, subleaf: 0, register: .ebx, bit: 7, dependents: []),
        .init(name: "bmi2", leaf: 7, subleaf: 0, register: .ebx, bit: 8, dependents: []),
        .init(name: "erms", leaf: 7, subleaf: 0, register: .ebx, bit: 9, dependents: []),
        .init(name: "invpcid", leaf: 7, subleaf: 0, register: .ebx, bit: 10, dependents: []),
        .init(name: "rtm", leaf: 7, subleaf: 0, register: .ebx, bit: 11, dependents: []),
        .init(name: "mpx", leaf: 7, subleaf: 0, register: .ebx, bit: 14, dependents: []),
        .init(name: "avx512f", leaf: 7, subleaf: 0, register: .ebx, bit: 16,
              dependents: ["avx512dq", "avx512cd", "avx512bw", "avx512vl", "avx512ifma", "avx512vbmi"]),
        .init(name: "avx512dq", leaf: 7, subleaf: 0, register: .ebx, bit: 17, dependents: []),
        .init(name: "rdseed", leaf: 7, subleaf: 0, register: .ebx, bit: 18, dependents: []),
        .init(name: "adx", leaf: 7, subleaf: 0, register: .ebx, bit: 19, dependents: []),
        .init(name: "smap", leaf: 7, subleaf: 0, register: .ebx, bit: 20, dependents: []),
        .init(name: "avx512ifma", leaf: 7, subleaf: 0, register: .ebx, bit: 21, dependents: []),
        .init(name: "clflushopt", leaf: 7, subleaf: 0, register: .ebx, bit: 23, dependents: []),
        .init(name: "clwb", leaf: 7, subleaf: 0, register: .ebx, bit: 24, dependents: []),
        .init(name: "avx512cd", leaf: 7, subleaf: 0, register: .ebx, bit: 28, dependents: []),
        .init(name: "sha_ni", leaf: 7, subleaf: 0, register: .ebx, bit: 29, dependents: []),
        .init(name: "avx512bw", leaf: 7, subleaf: 0, register: .ebx, bit: 30, dependents: []),
        .init(name: "avx512vl", leaf: 7, subleaf: 0, register: .ebx, bit: 31, dependents: []),
        // Leaf 7.0 ECX
        .init(name: "avx512vbmi", leaf: 7, subleaf: 0, register: .ecx, bit: 1, dependents: []),
        .init(name: "umip", leaf: 7, subleaf: 0, register: .ecx, bit: 2, dependents: []),
        .init(name: "pku", leaf: 7, subleaf: 0, register: .ecx, bit: 3, dependents: []),
        .init(name: "la57", leaf: 7, subleaf: 0, register: .ecx, bit: 16, dependents: []),
        .init(name: "rdpid", leaf: 7, subleaf: 0, register: .ecx, bit: 22, dependents: []),
        // Leaf 0xD.1 EAX (XSAVE extensions)
        .init(name: "xsaveopt", leaf: 0xD, subleaf: 1, register: .eax, bit: 0, dependents: []),
        .init(name: "xsavec", leaf: 0xD, subleaf: 1, register: .eax, bit: 1, dependents: []),
        .init(name: "xgetbv1", leaf: 0xD, subleaf: 1, register: .eax, bit: 2, dependents: []),
        .init(name: "xsaves", leaf: 0xD, subleaf: 1, register: .eax, bit: 3, dependents: []),
        // Leaf 0x80000001
        .init(name: "lahf_lm", leaf: 0x8000_0001, subleaf: 0, register: .ecx, bit: 0, dependents: []),
        .init(name: "abm", leaf: 0x8000_0001, subleaf: 0, register: .ecx, bit: 5, dependents: []),
        .init(name: "pdpe1gb", leaf: 0x8000_0001, subleaf: 0, register: .edx, bit: 26, dependents: []),
        .init(name: "rdtscp", leaf: 0x8000_0001, subleaf: 0, register: .edx, bit: 27, dependents: []),
        // KVM paravirtual features (leaf 0x40000001 EAX), named as QEMU names them.
        .init(name: "kvmclock", leaf: 0x4000_0001, subleaf: 0, register: .eax, bit: 3, dependents: []),
        .init(name: "kvm-asyncpf", leaf: 0x4000_0001, subleaf: 0, register: .eax, bit: 4, dependents: []),
        .init(name: "kvm-steal-time", leaf: 0x4000_0001, subleaf: 0, register: .eax, bit: 5, dependents: ["kvm-pv-tlb-flush"]),
        .init(name: "kvm-pv-eoi", leaf: 0x4000_0001, subleaf: 0, register: .eax, bit: 6, dependents: []),
        .init(name: "kvm-pv-unhalt", leaf: 0x4000_0001, subleaf: 0, register: .eax, bit: 7, dependents: []),
        .init(name: "kvm-pv-tlb-flush", leaf: 0x4000_0001, subleaf: 0, register: .eax, bit: 9, dependents: []),
        .init(name: "kvm-pv-ipi", leaf: 0x4000_0001, subleaf: 0, register: .eax, bit: 11, dependents: []),
        .init(name: "kvm-poll-control", leaf: 0x4000_0001, subleaf: 0, register: .eax, bit: 12, dependents: []),
        .init(name: "kvm-pv-sched-yield", leaf: 0x4000_0001, subleaf: 0, register: .eax, bit: 13, dependents: []),
    ]

    public static let byName: [String: CPUFeature] = Dictionary(uniqueKeysWithValues: all.map { ($0.name, $0) })

    public static func named(_ name: String) -> CPUFeature? { byName[name.lowercased()] }
}
