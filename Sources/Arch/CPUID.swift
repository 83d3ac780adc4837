/// One CPUID leaf/subleaf as KVM hands it around (`struct kvm_cpuid_entry2`), free of C types.
public struct CPUIDEntry: Equatable, Sendable, Codable {
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

    /// Every feature, in this order: the bits of each CPUID register below, its leaf, subleaf and
    /// register written once for all of them.
    public static let all: [CPUFeature] = registers.flatMap { r in
        r.bits.map { CPUFeature(name: $0.name, leaf: r.leaf, subleaf: r.subleaf, register: r.register, bit: $0.bit,
                                dependents: dependentsByName[$0.name] ?? []) }
    }

    private static let registers: [(leaf: UInt32, subleaf: UInt32, register: CPUIDEntry.Register, bits: [(name: String, bit: Int)])] = [
        // Leaf 1 ECX
        (1, 0, .ecx, [("sse3", 0), ("pclmulqdq", 1), ("monitor", 3), ("vmx", 5), ("ssse3", 9), ("fma", 12),
                      ("cx16", 13), ("pdcm", 15), ("pcid", 17), ("sse4_1", 19), ("sse4_2", 20), ("x2apic", 21),
                      ("movbe", 22), ("popcnt", 23), ("tsc_deadline_timer", 24), ("aes", 25), ("xsave", 26),
                      ("osxsave", 27), ("avx", 28), ("f16c", 29), ("rdrand", 30), ("hypervisor", 31)]),
        // Leaf 1 EDX
        (1, 0, .edx, [("tsc", 4), ("mtrr", 12), ("pat", 16), ("ht", 28)]),
        // Leaf 7.0 EBX
        (7, 0, .ebx, [("fsgsbase", 0), ("bmi1", 3), ("hle", 4), ("avx2", 5), ("smep", 7), ("bmi2", 8), ("erms", 9),
                      ("invpcid", 10), ("rtm", 11), ("mpx", 14), ("avx512f", 16), ("avx512dq", 17), ("rdseed", 18),
                      ("adx", 19), ("smap", 20), ("avx512ifma", 21), ("clflushopt", 23), ("clwb", 24),
                      ("avx512cd", 28), ("sha_ni", 29), ("avx512bw", 30), ("avx512vl", 31)]),
        // Leaf 7.0 ECX
        (7, 0, .ecx, [("avx512vbmi", 1), ("umip", 2), ("pku", 3), ("la57", 16), ("rdpid", 22)]),
        // Leaf 0xD.1 EAX (XSAVE extensions)
        (0xD, 1, .eax, [("xsaveopt", 0), ("xsavec", 1), ("xgetbv1", 2), ("xsaves", 3)]),
        // Leaf 0x80000001 ECX
        (0x8000_0001, 0, .ecx, [("lahf_lm", 0), ("abm", 5)]),
        // Leaf 0x80000001 EDX
        (0x8000_0001, 0, .edx, [("pdpe1gb", 26), ("rdtscp", 27)]),
        // KVM paravirtual features (leaf 0x40000001 EAX), named as QEMU names them.
        (0x4000_0001, 0, .eax, [("kvmclock", 3), ("kvm-asyncpf", 4), ("kvm-steal-time", 5), ("kvm-pv-eoi", 6),
                                ("kvm-pv-unhalt", 7), ("kvm-pv-tlb-flush", 9), ("kvm-pv-ipi", 11),
                                ("kvm-poll-control", 12), ("kvm-pv-sched-yield", 13)]),
    ]

    /// Each feature's `dependents`, for the few that have any.
    private static let dependentsByName: [String: [String]] = [
        "pcid": ["invpcid"],
        "xsave": ["osxsave", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl",
                  "avx512ifma", "avx512vbmi", "mpx", "xsaveopt", "xsavec", "xgetbv1", "xsaves"],
        "avx": ["avx2", "fma", "f16c"],
        "avx512f": ["avx512dq", "avx512cd", "avx512bw", "avx512vl", "avx512ifma", "avx512vbmi"],
        "kvm-steal-time": ["kvm-pv-tlb-flush"],
    ]

    public static let byName: [String: CPUFeature] = Dictionary(uniqueKeysWithValues: all.map { ($0.name, $0) })

    public static func named(_ name: String) -> CPUFeature? { byName[name.lowercased()] }
}
