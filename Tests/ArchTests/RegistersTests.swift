import Testing
@testable import Arch

@Suite("Segment descriptors")
struct SegmentDescriptorTests {
    @Test func bootSegmentsEncodeToTheClassicFlatDescriptors() {
        #expect(BootSegments.code64.gdtEntry == 0x00AF_9B00_0000_FFFF)
        #expect(BootSegments.code32.gdtEntry == 0x00CF_9B00_0000_FFFF)
        #expect(BootSegments.data.gdtEntry == 0x00CF_9300_0000_FFFF)
        // Busy 32-bit TSS, byte granular, limit 0x67.
        #expect(BootSegments.tss.gdtEntry == 0x0000_8B00_0000_0067)
    }

    @Test func baseIsSplitAcrossTheDescriptor() {
        let s = Segment(base: 0xAABB_CCDD, limit: 0xF_FFFF, selector: 0x28, type: 0x3, db: true, s: true, l: false, g: false)
        #expect(s.gdtEntry == 0xAA4F_93BB_CCDD_FFFF)
    }

    @Test func pageGranularLimitIsStoredInPages() {
        // 16 MiB - 1 with G: 0xFFF pages.
        let s = Segment(base: 0, limit: 0x00FF_FFFF, selector: 0x10, type: 0xB, db: true, s: true, l: false, g: true)
        #expect(s.gdtEntry & 0xFFFF == 0x0FFF)
        #expect((s.gdtEntry >> 48) & 0xF == 0)
        #expect(s.gdtEntry >> 55 & 1 == 1)
    }

    @Test func flagBitsLandInTheirPositions() {
        var s = Segment(base: 0, limit: 0, selector: 0, type: 0, present: false, dpl: 3, db: false, s: false, l: false, g: false)
        #expect(s.gdtEntry == 3 << 45)
        s.avl = true
        #expect(s.gdtEntry == (3 << 45) | (1 << 52))
        s.dpl = 7 // only two bits exist
        #expect(s.gdtEntry == (3 << 45) | (1 << 52))
        s.type = 0x1F // only four bits exist
        #expect((s.gdtEntry >> 40) & 0xF == 0xF)
        #expect((s.gdtEntry >> 44) & 1 == 0, "an oversized type must not leak into S")
    }

    @Test func gdtHasNullThenTheBootSegmentsAtTheirSelectors() {
        let gdt = BootSegments.gdt
        #expect(gdt.count == 5)
        #expect(gdt[0] == 0)
        for s in [BootSegments.code64, BootSegments.code32, BootSegments.data, BootSegments.tss] {
            #expect(gdt[Int(s.selector) / 8] == s.gdtEntry, "selector 0x\(String(s.selector, radix: 16))")
        }
        #expect(BootSegments.code64.selector == 0x08)
        #expect(BootSegments.code32.selector == 0x10)
        #expect(BootSegments.data.selector == 0x18)
        #expect(BootSegments.tss.selector == 0x20)
    }
}

@Suite("Boot register states")
struct BootRegisterStateTests {
    @Test func protectedModeIsPVHEntryState() {
        let s = BootSegments.protectedMode(gdtBase: 0x500, idtBase: 0x520)
        #expect(s.cr0 == ControlBits.cr0PE | ControlBits.cr0ET)
        #expect(s.cr0 & ControlBits.cr0PG == 0)
        #expect(s.cr3 == 0 && s.cr4 == 0 && s.efer == 0)
        #expect(s.cs == BootSegments.code32)
        #expect(s.cs.db && !s.cs.l)
        for seg in [s.ds, s.es, s.fs, s.gs, s.ss] { #expect(seg == BootSegments.data) }
        #expect(s.tr == BootSegments.tss)
        #expect(s.gdt == DescriptorTable(base: 0x500, limit: 39))
        #expect(s.idt == DescriptorTable(base: 0x520, limit: 7))
    }

    @Test func longModeHasPagingAndLongModeEnabled() {
        let s = BootSegments.longMode(gdtBase: 0x500, idtBase: 0x520, pml4: 0x9000)
        #expect(s.cr0 == ControlBits.cr0PE | ControlBits.cr0ET | ControlBits.cr0PG)
        #expect(s.cr3 == 0x9000)
        #expect(s.cr4 == ControlBits.cr4PAE)
        #expect(s.efer == ControlBits.eferLME | ControlBits.eferLMA)
        #expect(s.cs == BootSegments.code64)
        #expect(s.cs.l && !s.cs.db)
        #expect(s.ss == BootSegments.data)
        #expect(s.gdt.limit == UInt16(BootSegments.gdt.count * 8 - 1))
    }

    @Test func controlBitValues() {
        #expect(ControlBits.cr0PE == 0x1)
        #expect(ControlBits.cr0ET == 0x10)
        #expect(ControlBits.cr0PG == 0x8000_0000)
        #expect(ControlBits.cr4PAE == 0x20)
        #expect(ControlBits.eferLME == 0x100)
        #expect(ControlBits.eferLMA == 0x400)
    }

    @Test func generalRegistersStartZeroWithReservedFlagBit() {
        let r = GeneralRegisters()
        #expect(r.rflags == 0x2)
        #expect(r.rip == 0 && r.rsp == 0 && r.rsi == 0 && r.rbx == 0)
    }

    @Test func msrBootValuesEnableFastStringsAndZeroTheRest() {
        let values = Dictionary(uniqueKeysWithValues: MSR.bootValues.map { ($0.index, $0.value) })
        #expect(values.count == MSR.bootValues.count)
        #expect(values[0x1A0] == 1)
        for index in [MSR.sysenterCS, MSR.sysenterESP, MSR.sysenterEIP, MSR.star, MSR.lstar, MSR.cstar,
                      MSR.syscallMask, MSR.kernelGSBase, MSR.tsc] {
            #expect(values[index] == 0, "MSR 0x\(String(index, radix: 16))")
        }
    }
}

@Suite("IdentityPageTables")
struct IdentityPageTablesTests {
    @Test func layoutIsContiguousFromBase() {
        let t = IdentityPageTables(base: 0x9000)
        #expect(t.gib == 4)
        #expect(t.pml4Address == 0x9000)
        #expect(t.pdptAddress == 0xA000)
        #expect(t.pdAddress(0) == 0xB000)
        #expect(t.pdAddress(3) == 0xE000)
        #expect(t.totalSize == 0x6000)
    }

    @Test func defaultTablesMapTheFirstFourGiB() {
        let t = IdentityPageTables(base: 0x9000)
        let pages = t.pages()
        #expect(pages.count == 2 + 4)
        #expect(pages.allSatisfy { $0.count == 512 })

        let pml4 = pages[0]
        #expect(pml4[0] == 0xA000 | 0x3)
        #expect(pml4.dropFirst().allSatisfy { $0 == 0 })

        let pdpt = pages[1]
        for g in 0..<4 { #expect(pdpt[g] == t.pdAddress(g) | 0x3) }
        #expect(pdpt[4...].allSatisfy { $0 == 0 })

        for g in 0..<4 {
            let pd = pages[2 + g]
            for i in 0..<512 {
                let address = UInt64(g) << 30 | UInt64(i) << 21
                #expect(pd[i] == address | 0x83, "PD \(g)[\(i)]")
            }
        }
        // Spot values someone would check by hand.
        #expect(pages[2][0] == 0x83)
        #expect(pages[2][1] == 0x20_0083)
        #expect(pages[3][0] == 0x4000_0083)
        #expect(pages[5][511] == 0xFFE0_0083)
    }

    @Test func oneGiBTables() {
        let t = IdentityPageTables(base: 0x10_0000, gib: 1)
        let pages = t.pages()
        #expect(pages.count == 3)
        #expect(t.totalSize == 0x3000)
        #expect(pages[0][0] == 0x10_1003)
        #expect(pages[1][0] == 0x10_2003)
        #expect(pages[1][1] == 0)
        #expect(pages[2][511] == 0x3FE0_0083)
    }
}
