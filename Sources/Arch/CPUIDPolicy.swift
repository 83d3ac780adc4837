/// Which built-in feature mask a VM starts from before its own `disable_features`.
public enum CPUTemplate: String, Sendable, CaseIterable {
    /// `emulating-kvm` when the host KVM emulates guest ring-0 code (nested `kvm_pvm`), else `host`.
    case auto
    /// Everything `KVM_GET_SUPPORTED_CPUID` reports.
    case host
    /// Hides what an instruction-emulating host KVM cannot execute (see `emulatingKVMHidden`).
    case emulatingKVM = "emulating-kvm"
}

/// Turns the host's supported CPUID into the CPUID one vCPU sees.
public struct CPUIDPolicy: Sendable, Equatable {
    /// Features the `emulating-kvm` template hides, each with the instruction that made it necessary.
    /// Measured on a nested KVM that emulates guest ring-0 code: each instruction below is missing
    /// from its emulator, so a guest kernel using it dies with `KVM internal error … emulation failure`.
    public static let emulatingKVMHidden: [(feature: String, why: String)] = [
        ("cx16", "SLUB's cmpxchg_double uses `lock cmpxchg16b`"),
        ("xsave", "FPU init uses `xrstor`/`xrstors` (AVX, AVX-512 and MPX need XSAVE and go with it)"),
        ("popcnt", "bitmap weights (hweight) use `popcnt`"),
        ("smap", "user-copy paths bracket accesses with `clac`/`stac`"),
        // SMP Linux hung at "Booting SMP configuration" with one vCPU in kvm_hypercall4 (PV IPI)
        // and the other in the queued-spinlock slow path (PV unhalt waits for a KICK_CPU
        // hypercall): this host does not complete hypercalls from emulated guest kernels.
        ("kvm-pv-ipi", "PV IPIs are sent with the KVM_HC_SEND_IPI hypercall"),
        ("kvm-pv-unhalt", "PV spinlocks wake waiters with the KVM_HC_KICK_CPU hypercall"),
        ("kvm-pv-sched-yield", "directed yield uses the KVM_HC_SCHED_YIELD hypercall"),
    ]

    /// Measured on the nested `kvm_pvm` host: its guests see XSAVE, POPCNT, SMAP (and AVX, RDRAND,
    /// RDSEED, FSGSBASE) as the host has them whatever KVM_SET_CPUID2 says; only CX16, PCID and
    /// INVPCID masks reach the guest. So for Linux guests the template also turns the features off
    /// from the kernel's side, with these command-line parameters (Linux applies them before it
    /// patches in the instructions).
    public static func linuxParameters(for hidden: [CPUFeature]) -> [String] {
        let names = Set(hidden.map(\.name))
        var params: [String] = []
        if names.contains("xsave") { params.append("noxsave") }
        let cleared = ["cx16", "popcnt", "smap"].filter { names.contains($0) }
        if !cleared.isEmpty { params.append("clearcpuid=" + cleared.joined(separator: ",")) }
        return params
    }

    /// Parameters to add to a Linux guest's command line (empty unless the template is `emulating-kvm`).
    /// Besides the hidden features, `highres=off`: where guest ring 0 is emulated a timer interrupt
    /// costs milliseconds (one took 33 ms), so the guest keeps the periodic tick it was tested
    /// with here rather than high-resolution one-shot timers (docs/cpu-templates.md).
    public func linuxCommandLineAdditions(hostEmulatesRing0: Bool) -> [String] {
        guard effectiveTemplate(hostEmulatesRing0: hostEmulatesRing0) == .emulatingKVM else { return [] }
        return Self.linuxParameters(for: hiddenFeatures(hostEmulatesRing0: hostEmulatesRing0)) + ["highres=off"]
    }

    public let template: CPUTemplate
    public let disabledFeatures: [String]

    public init(template: CPUTemplate = .auto, disabledFeatures: [String] = []) {
        self.template = template
        self.disabledFeatures = disabledFeatures
    }

    /// The template after resolving `auto` against the host.
    public func effectiveTemplate(hostEmulatesRing0: Bool) -> CPUTemplate {
        template == .auto ? (hostEmulatesRing0 ? .emulatingKVM : .host) : template
    }

    /// Every feature this policy hides, dependents included, in a stable order.
    public func hiddenFeatures(hostEmulatesRing0: Bool) -> [CPUFeature] {
        var names: [String] = disabledFeatures.map { $0.lowercased() }
        if effectiveTemplate(hostEmulatesRing0: hostEmulatesRing0) == .emulatingKVM {
            names = Self.emulatingKVMHidden.map(\.feature) + names
        }
        var seen = Set<String>()
        var result: [CPUFeature] = []
        var queue = names
        while !queue.isEmpty {
            let name = queue.removeFirst()
            guard !seen.contains(name), let feature = CPUFeature.named(name) else { continue }
            seen.insert(name)
            result.append(feature)
            queue.append(contentsOf: feature.dependents)
        }
        return result
    }

    /// The CPUID table for vCPU `vcpuID` of `vcpuCount`.
    public func apply(to supported: [CPUIDEntry], vcpuID: Int, vcpuCount: Int,
                      hostEmulatesRing0: Bool) -> [CPUIDEntry] {
        let hidden = hiddenFeatures(hostEmulatesRing0: hostEmulatesRing0)
        let xsaveHidden = hidden.contains { $0.name == "xsave" }
        var entries: [CPUIDEntry] = []
        for var entry in supported {
            // Without XSAVE the XSAVE state-component leaf must not advertise anything either.
            if xsaveHidden && entry.function == 0xD { continue }
            for feature in hidden where feature.leaf == entry.function && feature.subleaf == entry.index {
                entry[feature.register] &= ~(UInt32(1) << UInt32(feature.bit))
            }
            switch entry.function {
            case 1:
                // EBX[31:24] initial APIC ID, EBX[23:16] logical processors per package.
                entry.ebx = (entry.ebx & 0x0000_FFFF) | (UInt32(vcpuID) << 24) | (UInt32(min(vcpuCount, 255)) << 16)
                if vcpuCount > 1 { entry.edx |= 1 << 28 } // HTT: the count above is valid
                entry.ecx |= 1 << 31 // we are a hypervisor guest
            case 0xB, 0x1F:
                entry.edx = UInt32(vcpuID) // x2APIC ID
            case 0x4:
                // EAX[31:26]: cores per package − 1; keep the cache description, fix the topology.
                if entry.eax & 0x1F != 0 {
                    entry.eax = (entry.eax & 0x03FF_FFFF) | (UInt32(max(vcpuCount - 1, 0) & 0x3F) << 26)
                }
            default:
                break
            }
            entries.append(entry)
        }
        return entries
    }
}

/// What an emulation failure's instruction bytes tell a user: the instruction and how to avoid it.
public struct EmulationFailureHint: Equatable, Sendable, CustomStringConvertible {
    public let instruction: String
    /// The CPUID feature whose hiding stops the guest from using it, if one does.
    public let feature: String?
    public let advice: String

    public var description: String {
        if let feature { return "\(instruction): hide CPU feature \"\(feature)\" (\(advice))" }
        return "\(instruction): \(advice)"
    }

    /// Decodes the first instruction of `bytes` far enough to name the usual suspects.
    public static func diagnose(_ bytes: [UInt8]) -> EmulationFailureHint? {
        var i = 0
        var rep: UInt8? = nil
        var rexW = false
        var opsize = false
        // Legacy prefixes, then REX.
        while i < bytes.count {
            let b = bytes[i]
            if b == 0xF0 || b == 0x2E || b == 0x36 || b == 0x3E || b == 0x26 || b == 0x64 || b == 0x65 || b == 0x67 {
                i += 1
            } else if b == 0xF2 || b == 0xF3 { rep = b; i += 1 }
            else if b == 0x66 { opsize = true; i += 1 }
            else { break }
        }
        if i < bytes.count, bytes[i] & 0xF0 == 0x40 { rexW = bytes[i] & 0x08 != 0; i += 1 }
        guard i < bytes.count else { return nil }
        let op = bytes[i]
        func modrmReg(_ at: Int) -> UInt8? { at < bytes.count ? (bytes[at] >> 3) & 7 : nil }
        func modrmMod(_ at: Int) -> UInt8? { at < bytes.count ? bytes[at] >> 6 : nil }
        let customHint = "needs a guest kernel change (see guests/linux/patches)"
        switch op {
        case 0xCC: return .init(instruction: "int3", feature: nil, advice: customHint)
        case 0x9B: return .init(instruction: "fwait", feature: nil, advice: customHint)
        case 0x0F:
            guard i + 1 < bytes.count else { return nil }
            let op2 = bytes[i + 1]
            switch op2 {
            case 0xC7:
                switch modrmReg(i + 2) {
                case 1 where rexW: return .init(instruction: "cmpxchg16b", feature: "cx16", advice: "SLUB cmpxchg_double")
                case 3 where modrmMod(i + 2) != 3: return .init(instruction: "xrstors", feature: "xsave", advice: "FPU state")
                case 5 where modrmMod(i + 2) != 3: return .init(instruction: "xsaves", feature: "xsave", advice: "FPU state")
                case 6 where modrmMod(i + 2) == 3: return .init(instruction: "rdrand", feature: "rdrand", advice: "random numbers")
                case 7 where modrmMod(i + 2) == 3: return .init(instruction: "rdseed", feature: "rdseed", advice: "random numbers")
                default: return nil
                }
            case 0xAE:
                let reg = modrmReg(i + 2)
                if rep == 0xF3, modrmMod(i + 2) == 3, let r = reg, r <= 3 {
                    return .init(instruction: "rd/wr fs/gs base", feature: "fsgsbase", advice: "FS/GS base access")
                }
                guard modrmMod(i + 2) != 3 else { return nil }
                switch reg {
                case 4: return .init(instruction: "xsave", feature: "xsave", advice: "FPU state")
                case 5: return .init(instruction: "xrstor", feature: "xsave", advice: "FPU state")
                case 6: return .init(instruction: "xsaveopt", feature: "xsave", advice: "FPU state")
                default: return nil
                }
            case 0xB8 where rep == 0xF3:
                return .init(instruction: "popcnt", feature: "popcnt", advice: "bitmap weights")
            case 0x01:
                guard i + 2 < bytes.count else { return nil }
                switch bytes[i + 2] {
                case 0xCA: return .init(instruction: "clac", feature: "smap", advice: "user-copy paths")
                case 0xCB: return .init(instruction: "stac", feature: "smap", advice: "user-copy paths")
                case 0xD0: return .init(instruction: "xgetbv", feature: "xsave", advice: "XSAVE state query")
                case 0xD1: return .init(instruction: "xsetbv", feature: "xsave", advice: "XSAVE enable")
                default: return nil
                }
            case 0x00 where modrmReg(i + 2) == 5:
                return .init(instruction: "verw", feature: nil, advice: "CPU bug mitigations: boot with mitigations=off")
            case 0x38 where opsize && i + 2 < bytes.count && bytes[i + 2] == 0x82:
                return .init(instruction: "invpcid", feature: "invpcid", advice: "TLB flushes")
            default:
                return nil
            }
        default:
            return nil
        }
    }
}
