import Testing
import Arch

/// The platform's fixed addresses do not collide (docs/architecture.md repeats them).
@Suite struct GuestLayoutTests {
    typealias L = GuestLayout

    @Test func lowMemoryStructuresDoNotOverlap() {
        let areas: [(String, UInt64, UInt64)] = [
            ("gdt", L.gdt, 5 * 8), ("idt", L.idt, 8),
            ("pvh start info + modules + map", L.pvhStartInfo, L.zeroPage - L.pvhStartInfo),
            ("zero page", L.zeroPage, 0x1000), ("page tables", L.pageTables, 6 * 0x1000),
            ("command line", L.cmdline, UInt64(L.cmdlineMaxSize)), ("mp table", L.mpTable, UInt64(L.mpTableEBDASize)),
        ]
        let sorted = areas.sorted { $0.1 < $1.1 }
        for (a, b) in zip(sorted, sorted.dropFirst()) { #expect(a.1 + a.2 <= b.1, "\(a.0) runs into \(b.0)") }
        #expect(L.bootStack > L.zeroPage + 0x1000 && L.bootStack < L.pageTables)
        #expect(sorted.last!.1 + sorted.last!.2 <= L.highMemory)
    }

    @Test func theMMIOHoleHoldsThePCIWindowMarkerAndKVMPages() {
        #expect(L.mmioHoleStart <= L.pciWindowBase)
        #expect(L.pciWindowBase + L.pciWindowSize <= L.bootMarker)
        #expect(L.bootMarker + L.bootMarkerSize <= L.pciDecodeEnd)
        #expect(L.pciDecodeEnd <= L.ioapic && L.ioapic < L.lapic)
        #expect(L.lapic + 0x1000 <= L.kvmIdentityMap)
        #expect(L.kvmIdentityMap + 0x1000 == L.kvmTSS)
        #expect(L.kvmTSS + 3 * 0x1000 <= L.mmioHoleEnd)
    }

    @Test func portsDoNotOverlap() {
        let ports: [(String, UInt64, UInt64)] = [
            ("i8042", L.i8042Port, L.i8042PortCount), ("cmos", L.cmosPort, L.cmosPortCount), ("exit", L.exitPort, 1),
            ("com1", L.com1Port, L.com1PortCount), ("pci config", L.pciConfigPort, L.pciConfigPortCount),
        ]
        let sorted = ports.sorted { $0.1 < $1.1 }
        for (a, b) in zip(sorted, sorted.dropFirst()) { #expect(a.1 + a.2 <= b.1, "\(a.0) runs into \(b.0)") }
    }

    @Test func pciInterruptsStayAboveTheISAOnes() {
        #expect(L.firstPCIInterruptPin >= 16)
        #expect(L.i8042IRQ < 16 && L.com1IRQ < 16)
    }
}
