import Testing
@testable import Arch

// MARK: - Helpers

private func bit(_ n: Int) -> UInt32 { UInt32(1) << UInt32(n) }
private func bits(_ ns: [Int]) -> UInt32 { ns.reduce(0) { $0 | bit($1) } }

/// A host CPUID table where every feature register of the interesting leaves has all bits set,
/// so any bit the policy clears is visible.
private func allOnesHost() -> [CPUIDEntry] {
    [
        CPUIDEntry(function: 0, eax: 0x1F, ebx: 0x756E_6547, ecx: 0x6C65_746E, edx: 0x4965_6E69),
        CPUIDEntry(function: 1, eax: 0x000A_0655, ebx: 0xAABB_1234, ecx: 0xFFFF_FFFF, edx: 0xFFFF_FFFF),
        CPUIDEntry(function: 4, index: 0, eax: 0x1C00_4121, ebx: 0x01C0_003F, ecx: 0x3F, edx: 0),
        CPUIDEntry(function: 4, index: 1, eax: 0x1C00_4122, ebx: 0x01C0_003F, ecx: 0x3F, edx: 0),
        CPUIDEntry(function: 4, index: 4, eax: 0xFC00_0000, ebx: 0, ecx: 0, edx: 0), // type 0: no more caches
        CPUIDEntry(function: 7, index: 0, eax: 1, ebx: 0xFFFF_FFFF, ecx: 0xFFFF_FFFF, edx: 0xFFFF_FFFF),
        CPUIDEntry(function: 7, index: 1, eax: 0xFFFF_FFFF, ebx: 0xFFFF_FFFF, ecx: 0xFFFF_FFFF, edx: 0xFFFF_FFFF),
        CPUIDEntry(function: 0xB, index: 0, eax: 1, ebx: 2, ecx: 0x100, edx: 0xDEAD),
        CPUIDEntry(function: 0xB, index: 1, eax: 4, ebx: 8, ecx: 0x201, edx: 0xBEEF),
        CPUIDEntry(function: 0xD, index: 0, eax: 0x2E7, ebx: 0x980, ecx: 0xA88, edx: 0),
        CPUIDEntry(function: 0xD, index: 1, eax: 0xF, ebx: 0, ecx: 0, edx: 0),
        CPUIDEntry(function: 0x1F, index: 0, eax: 1, ebx: 2, ecx: 0x100, edx: 0x77),
        CPUIDEntry(function: 0x4000_0000, eax: 0x4000_0001, ebx: 0x4B4D_564B, ecx: 0x564B_4D56, edx: 0x4D),
        CPUIDEntry(function: 0x8000_0001, eax: 0, ebx: 0, ecx: 0xFFFF_FFFF, edx: 0xFFFF_FFFF),
    ]
}

private func entry(_ table: [CPUIDEntry], _ function: UInt32, _ index: UInt32 = 0) -> CPUIDEntry? {
    table.first { $0.function == function && $0.index == index }
}

// MARK: - Feature table

@Suite("CPUFeature table")
struct CPUFeatureTableTests {
    @Test func namesAreUniqueAndLookupIsCaseInsensitive() throws {
        #expect(Set(CPUFeature.all.map(\.name)).count == CPUFeature.all.count)
        let avx = try #require(CPUFeature.named("AVX"))
        #expect(avx.leaf == 1 && avx.subleaf == 0 && avx.register == .ecx && avx.bit == 28)
        #expect(CPUFeature.named("Cx16")?.bit == 13)
        #expect(CPUFeature.named("no-such-feature") == nil)
    }

    @Test func everyDependentIsAKnownFeature() {
        for feature in CPUFeature.all {
            for dependent in feature.dependents {
                #expect(CPUFeature.named(dependent) != nil, "\(feature.name) lists unknown dependent \(dependent)")
            }
        }
    }

    @Test func knownBitPositions() throws {
        // Spot checks against the Intel SDM.
        let expected: [(String, UInt32, UInt32, CPUIDEntry.Register, Int)] = [
            ("cx16", 1, 0, .ecx, 13), ("xsave", 1, 0, .ecx, 26), ("popcnt", 1, 0, .ecx, 23),
            ("hypervisor", 1, 0, .ecx, 31), ("smap", 7, 0, .ebx, 20), ("invpcid", 7, 0, .ebx, 10),
            ("avx2", 7, 0, .ebx, 5), ("xsaves", 0xD, 1, .eax, 3), ("rdtscp", 0x8000_0001, 0, .edx, 27),
            ("la57", 7, 0, .ecx, 16), ("tsc", 1, 0, .edx, 4),
        ]
        for (name, leaf, subleaf, register, bitNumber) in expected {
            let f = try #require(CPUFeature.named(name))
            #expect(f.leaf == leaf && f.subleaf == subleaf && f.register == register && f.bit == bitNumber, "\(name)")
        }
    }

    @Test func descriptionNamesLeafAndBit() throws {
        #expect(try #require(CPUFeature.named("avx")).description == "avx (CPUID.1h.0:ECX[28])")
        #expect(try #require(CPUFeature.named("xsaves")).description == "xsaves (CPUID.dh.1:EAX[3])")
    }

    @Test func registerSubscriptReadsAndWritesEachRegister() {
        var e = CPUIDEntry(function: 1, eax: 1, ebx: 2, ecx: 3, edx: 4)
        #expect(e[.eax] == 1 && e[.ebx] == 2 && e[.ecx] == 3 && e[.edx] == 4)
        e[.eax] = 10; e[.ebx] = 20; e[.ecx] = 30; e[.edx] = 40
        #expect(e == CPUIDEntry(function: 1, eax: 10, ebx: 20, ecx: 30, edx: 40))
    }
}

// MARK: - Template resolution and hidden features

@Suite("CPUIDPolicy templates")
struct CPUIDTemplateTests {
    @Test(arguments: [
        (CPUTemplate.auto, true, CPUTemplate.emulatingKVM),
        (.auto, false, .host),
        (.host, true, .host),
        (.host, false, .host),
        (.emulatingKVM, true, .emulatingKVM),
        (.emulatingKVM, false, .emulatingKVM),
    ])
    func effectiveTemplate(template: CPUTemplate, emulates: Bool, expected: CPUTemplate) {
        #expect(CPUIDPolicy(template: template).effectiveTemplate(hostEmulatesRing0: emulates) == expected)
    }

    @Test func templateRawValuesMatchTheDefinitionFormat() {
        #expect(CPUTemplate(rawValue: "emulating-kvm") == .emulatingKVM)
        #expect(CPUTemplate.allCases.map(\.rawValue) == ["auto", "host", "emulating-kvm"])
    }

    @Test func hostTemplateHidesNothingByItself() {
        #expect(CPUIDPolicy(template: .host).hiddenFeatures(hostEmulatesRing0: true).isEmpty)
        #expect(CPUIDPolicy(template: .auto).hiddenFeatures(hostEmulatesRing0: false).isEmpty)
    }

    @Test func emulatingTemplateHidesItsListAndDependents() {
        let names = Set(CPUIDPolicy(template: .emulatingKVM).hiddenFeatures(hostEmulatesRing0: false).map(\.name))
        for required in ["cx16", "xsave", "popcnt", "smap", "osxsave", "avx", "avx2", "fma", "f16c",
                         "avx512f", "avx512vl", "avx512vbmi", "mpx", "xsaveopt", "xsavec", "xgetbv1", "xsaves"] {
            #expect(names.contains(required), "emulating-kvm should hide \(required)")
        }
        for kept in ["pcid", "invpcid", "sse4_2", "rdrand", "x2apic", "rdtscp", "aes"] {
            #expect(!names.contains(kept), "emulating-kvm should not hide \(kept)")
        }
    }

    @Test func autoHidesTheEmulatingListOnlyOnAnEmulatingHost() {
        let policy = CPUIDPolicy(template: .auto)
        #expect(Set(policy.hiddenFeatures(hostEmulatesRing0: true).map(\.name))
            == Set(CPUIDPolicy(template: .emulatingKVM).hiddenFeatures(hostEmulatesRing0: true).map(\.name)))
        #expect(policy.hiddenFeatures(hostEmulatesRing0: false).isEmpty)
    }

    @Test func disabledFeaturesAreCaseInsensitiveDeduplicatedAndPullInDependents() {
        let hidden = CPUIDPolicy(template: .host, disabledFeatures: ["PCID", "avx", "xsave", "AVX", "bogus"])
            .hiddenFeatures(hostEmulatesRing0: false).map(\.name)
        #expect(hidden.count == Set(hidden).count, "no feature listed twice: \(hidden)")
        #expect(hidden.starts(with: ["pcid", "avx", "xsave"]))
        #expect(Set(hidden).isSuperset(of: ["invpcid", "avx2", "fma", "f16c", "osxsave", "avx512f", "avx512dq"]))
        #expect(!hidden.contains("bogus"))
    }

    @Test func hidingAFeatureHidesExactlyItAndItsDependents() {
        let hidden = Set(CPUIDPolicy(template: .host, disabledFeatures: ["avx512f"]).hiddenFeatures(hostEmulatesRing0: false).map(\.name))
        #expect(hidden == ["avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl", "avx512ifma", "avx512vbmi"])
    }
}

// MARK: - apply

@Suite("CPUIDPolicy.apply")
struct CPUIDApplyTests {
    @Test func hidingXsaveClearsItAndItsDependentsAndNothingElse() throws {
        let policy = CPUIDPolicy(template: .host, disabledFeatures: ["xsave"])
        let out = policy.apply(to: allOnesHost(), vcpuID: 0, vcpuCount: 1, hostEmulatesRing0: false)

        let l1 = try #require(entry(out, 1))
        // xsave 26, osxsave 27, avx 28, f16c 29, fma 12.
        #expect(l1.ecx == ~bits([12, 26, 27, 28, 29]))
        #expect(l1.edx == 0xFFFF_FFFF)

        let l7 = try #require(entry(out, 7, 0))
        // avx2 5, mpx 14, avx512f 16, dq 17, ifma 21, cd 28, bw 30, vl 31.
        #expect(l7.ebx == ~bits([5, 14, 16, 17, 21, 28, 30, 31]))
        #expect(l7.ecx == ~bit(1)) // avx512vbmi
        #expect(l7.edx == 0xFFFF_FFFF)
        #expect(l7.eax == 1)

        // Subleaf 7.1 is a different leaf: untouched.
        #expect(entry(out, 7, 1) == entry(allOnesHost(), 7, 1))
        // Leaf 0xD disappears entirely (both subleaves).
        #expect(!out.contains { $0.function == 0xD })
        // Extended leaf untouched.
        #expect(entry(out, 0x8000_0001) == entry(allOnesHost(), 0x8000_0001))
        #expect(entry(out, 0x4000_0000) == entry(allOnesHost(), 0x4000_0000))
    }

    @Test func hidingOnlyXsaveoptKeepsLeafDAndClearsTheSubleafBit() throws {
        let out = CPUIDPolicy(template: .host, disabledFeatures: ["xsaveopt"])
            .apply(to: allOnesHost(), vcpuID: 0, vcpuCount: 1, hostEmulatesRing0: false)
        #expect(entry(out, 0xD, 0) == entry(allOnesHost(), 0xD, 0))
        #expect(entry(out, 0xD, 1)?.eax == 0xE)
        #expect(entry(out, 1)?.ecx == 0xFFFF_FFFF)
    }

    @Test func extendedLeafFeaturesAreMasked() throws {
        let out = CPUIDPolicy(template: .host, disabledFeatures: ["rdtscp", "lahf_lm"])
            .apply(to: allOnesHost(), vcpuID: 0, vcpuCount: 1, hostEmulatesRing0: false)
        let e = try #require(entry(out, 0x8000_0001))
        #expect(e.edx == ~bit(27))
        #expect(e.ecx == ~bit(0))
    }

    @Test func emulatingTemplateMasksCx16PopcntSmapAndXsave() throws {
        let out = CPUIDPolicy(template: .auto).apply(to: allOnesHost(), vcpuID: 0, vcpuCount: 1, hostEmulatesRing0: true)
        let l1 = try #require(entry(out, 1))
        #expect(l1.ecx == ~bits([12, 13, 23, 26, 27, 28, 29]))
        let l7 = try #require(entry(out, 7))
        #expect(l7.ebx == ~bits([5, 14, 16, 17, 20, 21, 28, 30, 31]))
        #expect(!out.contains { $0.function == 0xD })
    }

    @Test func autoOnANormalHostPassesFeaturesThrough() throws {
        let host = allOnesHost()
        let out = CPUIDPolicy(template: .auto).apply(to: host, vcpuID: 0, vcpuCount: 1, hostEmulatesRing0: false)
        #expect(out.count == host.count)
        #expect(out.map(\.function) == host.map(\.function))
        #expect(out.map(\.index) == host.map(\.index))
        #expect(entry(out, 1)?.ecx == 0xFFFF_FFFF)
        #expect(entry(out, 7)?.ebx == 0xFFFF_FFFF)
        #expect(entry(out, 0xD, 0) == entry(host, 0xD, 0))
    }

    @Test func leafOneCarriesApicIdCountAndHypervisorBit() throws {
        var host = allOnesHost()
        host[1].ecx = 0           // host does not claim to be a guest
        host[1].edx = ~bit(28)   // no HTT
        let policy = CPUIDPolicy(template: .host)

        let single = try #require(entry(policy.apply(to: host, vcpuID: 0, vcpuCount: 1, hostEmulatesRing0: false), 1))
        #expect(single.ebx == 0x0001_1234)
        #expect(single.ecx == bit(31))
        #expect(single.edx == ~bit(28), "HTT stays clear with one vCPU")
        #expect(single.eax == 0x000A_0655)

        let third = try #require(entry(policy.apply(to: host, vcpuID: 2, vcpuCount: 4, hostEmulatesRing0: false), 1))
        #expect(third.ebx >> 24 == 2)
        #expect((third.ebx >> 16) & 0xFF == 4)
        #expect(third.ebx & 0xFFFF == 0x1234, "CLFLUSH size and brand index are kept")
        #expect(third.edx & bit(28) != 0, "HTT set when the count is meaningful")
        #expect(third.ecx & bit(31) != 0)
    }

    @Test func logicalProcessorCountSaturatesAt255() throws {
        let out = CPUIDPolicy(template: .host).apply(to: allOnesHost(), vcpuID: 253, vcpuCount: 300, hostEmulatesRing0: false)
        let l1 = try #require(entry(out, 1))
        #expect(l1.ebx >> 24 == 253)
        #expect((l1.ebx >> 16) & 0xFF == 255)
    }

    @Test func topologyLeavesReportTheX2ApicId() throws {
        let out = CPUIDPolicy(template: .host).apply(to: allOnesHost(), vcpuID: 5, vcpuCount: 8, hostEmulatesRing0: false)
        #expect(entry(out, 0xB, 0)?.edx == 5)
        #expect(entry(out, 0xB, 1)?.edx == 5)
        #expect(entry(out, 0x1F, 0)?.edx == 5)
        // The rest of leaf 0xB is kept.
        #expect(entry(out, 0xB, 1)?.ecx == 0x201)
        #expect(entry(out, 0xB, 0)?.ebx == 2)
    }

    @Test func cacheLeafReportsCoresPerPackage() throws {
        let out = CPUIDPolicy(template: .host).apply(to: allOnesHost(), vcpuID: 0, vcpuCount: 4, hostEmulatesRing0: false)
        let l4 = try #require(entry(out, 4, 0))
        #expect(l4.eax >> 26 == 3)
        #expect(l4.eax & 0x03FF_FFFF == 0x1C00_4121 & 0x03FF_FFFF)
        #expect(entry(out, 4, 1)?.eax.shiftedRight26 == 3)
        // A null cache descriptor (type 0) is left alone.
        #expect(entry(out, 4, 4)?.eax == 0xFC00_0000)

        let one = CPUIDPolicy(template: .host).apply(to: allOnesHost(), vcpuID: 0, vcpuCount: 1, hostEmulatesRing0: false)
        #expect(entry(one, 4, 0)?.eax.shiftedRight26 == 0)
    }

    @Test func hypervisorBitIsSetEvenWhenHidden() throws {
        // The policy itself marks the guest; hiding "hypervisor" cannot produce a guest that thinks it is bare metal.
        let out = CPUIDPolicy(template: .host, disabledFeatures: ["hypervisor"])
            .apply(to: allOnesHost(), vcpuID: 0, vcpuCount: 1, hostEmulatesRing0: false)
        #expect(try #require(entry(out, 1)).ecx & bit(31) != 0)
    }

    @Test func eachVCPUGetsItsOwnId() {
        let policy = CPUIDPolicy(template: .emulatingKVM)
        for id in 0..<4 {
            let out = policy.apply(to: allOnesHost(), vcpuID: id, vcpuCount: 4, hostEmulatesRing0: false)
            #expect(entry(out, 1)?.ebx.apicID == UInt32(id))
            #expect(entry(out, 0xB, 0)?.edx == UInt32(id))
        }
    }
}

private extension UInt32 {
    var shiftedRight26: UInt32 { self >> 26 }
    var apicID: UInt32 { self >> 24 }
}

// MARK: - Linux command line

@Suite("CPUIDPolicy Linux command line")
struct LinuxCommandLineTests {
    @Test func emulatingTemplateAddsNoxsaveClearcpuidAndHighresOff() {
        let expected = ["noxsave", "clearcpuid=cx16,popcnt,smap", "highres=off"]
        #expect(CPUIDPolicy(template: .emulatingKVM).linuxCommandLineAdditions(hostEmulatesRing0: false) == expected)
        #expect(CPUIDPolicy(template: .auto).linuxCommandLineAdditions(hostEmulatesRing0: true) == expected)
        #expect(CPUIDPolicy(template: .emulatingKVM, disabledFeatures: ["pcid"]).linuxCommandLineAdditions(hostEmulatesRing0: true) == expected)
    }

    @Test func otherTemplatesAddNothing() {
        #expect(CPUIDPolicy(template: .auto).linuxCommandLineAdditions(hostEmulatesRing0: false).isEmpty)
        #expect(CPUIDPolicy(template: .host).linuxCommandLineAdditions(hostEmulatesRing0: true).isEmpty)
        #expect(CPUIDPolicy(template: .host, disabledFeatures: ["xsave", "cx16"]).linuxCommandLineAdditions(hostEmulatesRing0: true).isEmpty)
    }

    @Test func parametersFollowTheHiddenSet() throws {
        let popcnt = try #require(CPUFeature.named("popcnt"))
        let xsave = try #require(CPUFeature.named("xsave"))
        let smap = try #require(CPUFeature.named("smap"))
        let pcid = try #require(CPUFeature.named("pcid"))
        #expect(CPUIDPolicy.linuxParameters(for: []) == [])
        #expect(CPUIDPolicy.linuxParameters(for: [pcid]) == [])
        #expect(CPUIDPolicy.linuxParameters(for: [popcnt]) == ["clearcpuid=popcnt"])
        #expect(CPUIDPolicy.linuxParameters(for: [xsave]) == ["noxsave"])
        #expect(CPUIDPolicy.linuxParameters(for: [smap, xsave, popcnt]) == ["noxsave", "clearcpuid=popcnt,smap"])
    }

    @Test func everyEmulatingHiddenFeatureExistsAndSaysWhy() {
        #expect(CPUIDPolicy.emulatingKVMHidden.map(\.feature)
            == ["cx16", "xsave", "popcnt", "smap", "kvm-pv-ipi", "kvm-pv-unhalt", "kvm-pv-sched-yield"])
        for (feature, why) in CPUIDPolicy.emulatingKVMHidden {
            #expect(CPUFeature.named(feature) != nil)
            #expect(!why.isEmpty)
        }
    }
}

// MARK: - Emulation failure hints

@Suite("EmulationFailureHint.diagnose")
struct EmulationFailureHintTests {
    struct Case: Sendable, CustomTestStringConvertible {
        let bytes: [UInt8]
        let instruction: String
        let feature: String?
        var testDescription: String { bytes.map { String($0, radix: 16) }.joined(separator: " ") + " → \(instruction)" }
    }

    static let known: [Case] = [
        .init(bytes: [0xF0, 0x48, 0x0F, 0xC7, 0x0E], instruction: "cmpxchg16b", feature: "cx16"),        // lock cmpxchg16b (%rsi)
        .init(bytes: [0xF0, 0x49, 0x0F, 0xC7, 0x4D, 0x00], instruction: "cmpxchg16b", feature: "cx16"),  // lock cmpxchg16b 0(%r13)
        .init(bytes: [0x48, 0x0F, 0xAE, 0x2F], instruction: "xrstor", feature: "xsave"),               // xrstor64 (%rdi)
        .init(bytes: [0x0F, 0xAE, 0x2F], instruction: "xrstor", feature: "xsave"),                     // xrstor (%rdi)
        .init(bytes: [0x0F, 0xAE, 0x27], instruction: "xsave", feature: "xsave"),                      // xsave (%rdi)
        .init(bytes: [0x48, 0x0F, 0xAE, 0x37], instruction: "xsaveopt", feature: "xsave"),             // xsaveopt64 (%rdi)
        .init(bytes: [0x0F, 0xC7, 0x1F], instruction: "xrstors", feature: "xsave"),                    // xrstors (%rdi)
        .init(bytes: [0x48, 0x0F, 0xC7, 0x1F], instruction: "xrstors", feature: "xsave"),              // xrstors64 (%rdi)
        .init(bytes: [0x48, 0x0F, 0xC7, 0x2F], instruction: "xsaves", feature: "xsave"),               // xsaves64 (%rdi)
        .init(bytes: [0xF3, 0x48, 0x0F, 0xB8, 0xC7], instruction: "popcnt", feature: "popcnt"),        // popcnt %rdi,%rax
        .init(bytes: [0xF3, 0x0F, 0xB8, 0xC7], instruction: "popcnt", feature: "popcnt"),              // popcnt %edi,%eax
        .init(bytes: [0x66, 0xF3, 0x0F, 0xB8, 0xC7], instruction: "popcnt", feature: "popcnt"),        // popcnt %di,%ax
        .init(bytes: [0x0F, 0x01, 0xCA], instruction: "clac", feature: "smap"),
        .init(bytes: [0x0F, 0x01, 0xCB], instruction: "stac", feature: "smap"),
        .init(bytes: [0x0F, 0x01, 0xD0], instruction: "xgetbv", feature: "xsave"),
        .init(bytes: [0x0F, 0x01, 0xD1], instruction: "xsetbv", feature: "xsave"),
        .init(bytes: [0x48, 0x0F, 0xC7, 0xF0], instruction: "rdrand", feature: "rdrand"),              // rdrand %rax
        .init(bytes: [0x0F, 0xC7, 0xF8], instruction: "rdseed", feature: "rdseed"),                    // rdseed %eax
        .init(bytes: [0xF3, 0x48, 0x0F, 0xAE, 0xD8], instruction: "rd/wr fs/gs base", feature: "fsgsbase"), // wrgsbase %rax
        .init(bytes: [0x66, 0x0F, 0x38, 0x82, 0x07], instruction: "invpcid", feature: "invpcid"),      // invpcid (%rdi),%eax
        .init(bytes: [0xCC], instruction: "int3", feature: nil),
        .init(bytes: [0x9B], instruction: "fwait", feature: nil),
        .init(bytes: [0x0F, 0x00, 0x2D, 0x34, 0x12, 0x00, 0x00], instruction: "verw", feature: nil),    // verw 0x1234(%rip)
        .init(bytes: [0x2E, 0x0F, 0x00, 0x2D, 0x34, 0x12, 0x00, 0x00], instruction: "verw", feature: nil), // with CS prefix
    ]

    @Test(arguments: known)
    func recognisesTheInstruction(_ c: Case) throws {
        let hint = try #require(EmulationFailureHint.diagnose(c.bytes))
        #expect(hint.instruction == c.instruction)
        #expect(hint.feature == c.feature)
        #expect(!hint.advice.isEmpty)
    }

    static let unrelated: [[UInt8]] = [
        [],
        [0x90],                         // nop
        [0x48, 0x89, 0xE5],             // mov %rsp,%rbp
        [0x0F, 0xC7, 0x0E],             // cmpxchg8b (%rsi): no REX.W
        [0x0F, 0xAE, 0xE8],             // lfence: register form of 0F AE /5
        [0x0F, 0xAE, 0xF0],             // mfence
        [0x0F, 0xB8, 0xC7],             // 0F B8 without F3 is not popcnt
        [0x0F, 0x01, 0xD9],             // vmmcall
        [0x0F, 0x00, 0xD8],             // ltr %ax (0F 00 /3)
        [0x0F, 0x38, 0x82, 0x07],       // invpcid needs the 66 prefix
        [0x0F],                         // truncated
        [0x0F, 0x01],                   // truncated
        [0xF0],                         // prefix only
        [0xF0, 0x48],                   // prefix and REX only
        [0x0F, 0xC7],                   // no ModRM
        [0xC3],                         // ret
    ]

    @Test(arguments: unrelated)
    func unrelatedBytesGiveNoHint(_ bytes: [UInt8]) {
        #expect(EmulationFailureHint.diagnose(bytes) == nil)
    }

    @Test func verwAdvisesTurningMitigationsOff() throws {
        let hint = try #require(EmulationFailureHint.diagnose([0x0F, 0x00, 0x2D, 0, 0, 0, 0]))
        #expect(hint.advice.contains("mitigations=off"))
    }

    @Test func descriptionNamesTheFeatureToHide() throws {
        let hint = try #require(EmulationFailureHint.diagnose([0xF0, 0x48, 0x0F, 0xC7, 0x0E]))
        #expect(hint.description == "cmpxchg16b: hide CPU feature \"cx16\" (SLUB cmpxchg_double)")
        let int3 = try #require(EmulationFailureHint.diagnose([0xCC]))
        #expect(int3.description == "int3: " + int3.advice)
        #expect(!int3.description.contains("hide CPU feature"))
    }

    @Test func everyHintedFeatureIsOneADefinitionCanHide() {
        for c in Self.known {
            if let f = EmulationFailureHint.diagnose(c.bytes)?.feature {
                #expect(CPUFeature.named(f) != nil, "\(f)")
            }
        }
    }
}

@Suite("CPUIDPolicy KVM paravirtual leaf")
struct KVMParavirtLeafTests {
    @Test func emulatingTemplateHidesHypercallFeaturesOnly() {
        // All 32 feature bits of leaf 0x40000001 set on the host.
        let host = [CPUIDEntry(function: 0x4000_0001, eax: 0xFFFF_FFFF)]
        let out = CPUIDPolicy(template: .emulatingKVM).apply(to: host, vcpuID: 0, vcpuCount: 2, hostEmulatesRing0: true)
        let eax = out[0].eax
        #expect(eax & (1 << 7) == 0)   // PV unhalt
        #expect(eax & (1 << 11) == 0)  // PV send IPI
        #expect(eax & (1 << 13) == 0)  // PV sched yield
        #expect(eax & (1 << 3) != 0)   // kvmclock stays
        #expect(eax & (1 << 5) != 0)   // steal time stays
        #expect(eax == 0xFFFF_FFFF & ~UInt32((1 << 7) | (1 << 11) | (1 << 13)))
    }

    @Test func hostTemplateKeepsThem() {
        let host = [CPUIDEntry(function: 0x4000_0001, eax: 0xFFFF_FFFF)]
        let out = CPUIDPolicy(template: .host).apply(to: host, vcpuID: 0, vcpuCount: 2, hostEmulatesRing0: true)
        #expect(out[0].eax == 0xFFFF_FFFF)
    }
}
