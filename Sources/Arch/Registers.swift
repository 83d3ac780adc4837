/// x86 register state the VMM sets before the first instruction, free of C types so it can be
/// built and checked without KVM. The KVM module converts these to `kvm_regs`/`kvm_sregs`.
public struct GeneralRegisters: Equatable, Sendable {
    public var rax: UInt64 = 0, rbx: UInt64 = 0, rcx: UInt64 = 0, rdx: UInt64 = 0
    public var rsi: UInt64 = 0, rdi: UInt64 = 0, rsp: UInt64 = 0, rbp: UInt64 = 0
    public var r8: UInt64 = 0, r9: UInt64 = 0, r10: UInt64 = 0, r11: UInt64 = 0
    public var r12: UInt64 = 0, r13: UInt64 = 0, r14: UInt64 = 0, r15: UInt64 = 0
    public var rip: UInt64 = 0
    /// Bit 1 is reserved and always set.
    public var rflags: UInt64 = 0x2
    public init() {}
}

/// A segment register as the CPU caches it (what `kvm_segment` holds).
public struct Segment: Equatable, Sendable {
    public var base: UInt64
    public var limit: UInt32
    public var selector: UInt16
    public var type: UInt8
    public var present: Bool
    public var dpl: UInt8
    public var db: Bool
    public var s: Bool
    public var l: Bool
    public var g: Bool
    public var avl: Bool = false
    public var unusable: Bool = false

    public init(base: UInt64, limit: UInt32, selector: UInt16, type: UInt8, present: Bool = true, dpl: UInt8 = 0,
                db: Bool, s: Bool, l: Bool, g: Bool) {
        self.base = base; self.limit = limit; self.selector = selector; self.type = type
        self.present = present; self.dpl = dpl; self.db = db; self.s = s; self.l = l; self.g = g
    }

    /// The 8-byte GDT descriptor for this segment.
    public var gdtEntry: UInt64 {
        // The descriptor's limit field is in pages when G is set.
        let rawLimit = UInt64(g ? (limit >> 12) : limit)
        var d: UInt64 = rawLimit & 0xFFFF
        d |= (base & 0xFF_FFFF) << 16
        d |= UInt64(type & 0xF) << 40
        d |= (s ? 1 : 0) << 44
        d |= UInt64(dpl & 3) << 45
        d |= (present ? 1 : 0) << 47
        d |= ((rawLimit >> 16) & 0xF) << 48
        d |= (avl ? 1 : 0) << 52
        d |= (l ? 1 : 0) << 53
        d |= (db ? 1 : 0) << 54
        d |= (g ? 1 : 0) << 55
        d |= ((base >> 24) & 0xFF) << 56
        return d
    }
}

public struct DescriptorTable: Equatable, Sendable {
    public var base: UInt64
    public var limit: UInt16
    public init(base: UInt64, limit: UInt16) { self.base = base; self.limit = limit }
}

public struct SpecialRegisters: Equatable, Sendable {
    public var cs, ds, es, fs, gs, ss, tr: Segment
    public var gdt: DescriptorTable
    public var idt: DescriptorTable
    public var cr0: UInt64
    public var cr3: UInt64
    public var cr4: UInt64
    public var efer: UInt64
}

public enum ControlBits {
    public static let cr0PE: UInt64 = 1 << 0
    public static let cr0ET: UInt64 = 1 << 4
    public static let cr0PG: UInt64 = 1 << 31
    public static let cr4PAE: UInt64 = 1 << 5
    public static let eferLME: UInt64 = 1 << 8
    public static let eferLMA: UInt64 = 1 << 10
}

/// Model-specific register numbers the VMM initialises.
public enum MSR {
    public static let sysenterCS: UInt32 = 0x174
    public static let sysenterESP: UInt32 = 0x175
    public static let sysenterEIP: UInt32 = 0x176
    public static let star: UInt32 = 0xC000_0081
    public static let lstar: UInt32 = 0xC000_0082
    public static let cstar: UInt32 = 0xC000_0083
    public static let syscallMask: UInt32 = 0xC000_0084
    public static let kernelGSBase: UInt32 = 0xC000_0102
    public static let tsc: UInt32 = 0x10
    public static let miscEnable: UInt32 = 0x1A0
    public static let miscEnableFastString: UInt64 = 1

    /// What a freshly reset CPU would hold; guests expect these zeroed, fast strings on.
    public static let bootValues: [(index: UInt32, value: UInt64)] = [
        (sysenterCS, 0), (sysenterESP, 0), (sysenterEIP, 0),
        (star, 0), (cstar, 0), (kernelGSBase, 0), (syscallMask, 0), (lstar, 0),
        (tsc, 0), (miscEnable, miscEnableFastString),
    ]
}

/// The flat segments and boot GDT every boot mode uses. Entry 1 = 64-bit code, 2 = 32-bit code,
/// 3 = data, 4 = TSS; selectors are the index × 8.
public enum BootSegments {
    public static let code64 = Segment(base: 0, limit: 0xFFFF_FFFF, selector: 0x08, type: 0xB, db: false, s: true, l: true, g: true)
    public static let code32 = Segment(base: 0, limit: 0xFFFF_FFFF, selector: 0x10, type: 0xB, db: true, s: true, l: false, g: true)
    public static let data = Segment(base: 0, limit: 0xFFFF_FFFF, selector: 0x18, type: 0x3, db: true, s: true, l: false, g: true)
    /// A busy 32-bit TSS: VMX refuses to enter a guest whose TR is unusable.
    public static let tss = Segment(base: 0, limit: 0x67, selector: 0x20, type: 0xB, db: false, s: false, l: false, g: false)

    public static var gdt: [UInt64] { [0, code64.gdtEntry, code32.gdtEntry, data.gdtEntry, tss.gdtEntry] }

    /// 32-bit protected mode, paging off: the PVH entry state.
    public static func protectedMode(gdtBase: UInt64, idtBase: UInt64) -> SpecialRegisters {
        SpecialRegisters(cs: code32, ds: data, es: data, fs: data, gs: data, ss: data, tr: tss,
                         gdt: DescriptorTable(base: gdtBase, limit: UInt16(gdt.count * 8 - 1)),
                         idt: DescriptorTable(base: idtBase, limit: 7),
                         cr0: ControlBits.cr0PE | ControlBits.cr0ET, cr3: 0, cr4: 0, efer: 0)
    }

    /// 64-bit long mode with paging through `pml4`: the Linux 64-bit boot protocol's entry state.
    public static func longMode(gdtBase: UInt64, idtBase: UInt64, pml4: UInt64) -> SpecialRegisters {
        SpecialRegisters(cs: code64, ds: data, es: data, fs: data, gs: data, ss: data, tr: tss,
                         gdt: DescriptorTable(base: gdtBase, limit: UInt16(gdt.count * 8 - 1)),
                         idt: DescriptorTable(base: idtBase, limit: 7),
                         cr0: ControlBits.cr0PE | ControlBits.cr0ET | ControlBits.cr0PG, cr3: pml4,
                         cr4: ControlBits.cr4PAE, efer: ControlBits.eferLME | ControlBits.eferLMA)
    }
}

/// Identity-mapping page tables for the 64-bit boot protocol: PML4 → one PDPT → `gib` page
/// directories of 2 MiB pages, laid out contiguously starting at `base`.
public struct IdentityPageTables: Sendable {
    public let base: UInt64
    public let gib: Int

    public init(base: UInt64, gib: Int = 4) {
        precondition(gib >= 1 && gib <= 512)
        self.base = base; self.gib = gib
    }

    public var pml4Address: UInt64 { base }
    public var pdptAddress: UInt64 { base + 0x1000 }
    public func pdAddress(_ i: Int) -> UInt64 { base + 0x2000 + UInt64(i) * 0x1000 }
    public var totalSize: Int { 0x2000 + gib * 0x1000 }

    /// Page table contents as 64-bit entries, one array per 4 KiB page, in address order.
    public func pages() -> [[UInt64]] {
        let present: UInt64 = 0x3 // present | writable
        var pml4 = [UInt64](repeating: 0, count: 512)
        pml4[0] = pdptAddress | present
        var pdpt = [UInt64](repeating: 0, count: 512)
        var dirs: [[UInt64]] = []
        for g in 0..<gib {
            pdpt[g] = pdAddress(g) | present
            var pd = [UInt64](repeating: 0, count: 512)
            for i in 0..<512 {
                pd[i] = (UInt64(g) << 30 | UInt64(i) << 21) | present | 0x80 // PS: 2 MiB page
            }
            dirs.append(pd)
        }
        return [pml4, pdpt] + dirs
    }
}
