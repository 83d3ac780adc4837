import Arch
import Memory
import Testing
@testable import Boot

/// Images crafted to overflow offset arithmetic must be rejected with an error, never trap.
@Suite struct HostileImageTests {
    @Test(arguments: [UInt64(1) << 63, UInt64.max, UInt64(Int.max), UInt64(Int.max) - 10])
    func hugeProgramHeaderOffsetIsTruncation(phoff: UInt64) {
        var bytes = ELFBuilder.pvhInmate().build()
        Bytes.put(phoff, at: 32, in: &bytes) // e_phoff
        let image = ImageFile(path: "/images/evil", bytes: bytes)
        #expect(throws: BootError.self) { _ = try ELFKernel(parsing: image) }
        do { _ = try ELFKernel(parsing: image) } catch let e as BootError {
            guard case let .truncated(path, _) = e else { Issue.record("expected .truncated, got \(e)"); return }
            #expect(path == "/images/evil")
        } catch { Issue.record("unexpected \(error)") }
    }

    @Test func integerReadNearTheEndNeverOverflows() {
        let image = ImageFile(path: "/x", bytes: [1, 2, 3])
        #expect(throws: BootError.self) { _ = try image.integer(UInt64.self, at: Int.max, "field") }
        #expect(throws: BootError.self) { _ = try image.integer(UInt32.self, at: 0, "field") }
        #expect((try? image.integer(UInt16.self, at: 1, "field")) == 0x0302)
    }
}

@Suite struct MPTablePlacementTests {
    @Test(arguments: [1, 2, 40, 41, 128, 254])
    func sizeMatchesBytesAndPlacementFits(cpus: Int) {
        let table = MPTable(cpus: cpus)
        #expect(table.bytes(at: table.address.raw).count == table.size)
        if cpus <= 40 {
            #expect(table.address == GuestAddress(GuestLayout.mpTable))
            #expect(table.size <= GuestLayout.mpTableEBDASize)
        } else {
            #expect(table.address == GuestAddress(GuestLayout.mpTableLarge))
            #expect(Int(GuestLayout.mpTableLarge) + table.size <= 0x10_0000)
        }
    }
}

@Suite struct MPTablePCITests {
    @Test func pciBusAndSlotInterruptsAreListed() {
        let table = MPTable(cpus: 2, pciInterrupts: [(slot: 1, ioapicPin: 16), (slot: 2, ioapicPin: 17)])
        let bytes = table.bytes(at: table.address.raw)
        #expect(bytes.count == table.size)
        // Floating pointer and configuration table both sum to zero.
        #expect(bytes[0..<16].reduce(UInt8(0), &+) == 0)
        #expect(bytes[16...].reduce(UInt8(0), &+) == 0)
        let body: [UInt8] = Array(bytes[(16 + 44)..<bytes.count])
        // Linux matches MP bus IDs against PCI bus numbers: PCI is bus 0, ISA moves to bus 1.
        let pciBus: [UInt8] = [1, 0] + Array("PCI   ".utf8)
        let isaBus: [UInt8] = [1, 1] + Array("ISA   ".utf8)
        #expect(body.indices.contains { i in i + 8 <= body.count && Array(body[i..<i + 8]) == pciBus })
        #expect(body.indices.contains { i in i + 8 <= body.count && Array(body[i..<i + 8]) == isaBus })
        // ISA IRQ 4 (COM1) now names bus 1.
        let com1: [UInt8] = [3, 0, 0, 0, 1, 4, 2, 4]
        #expect(body.indices.contains { i in i + 8 <= body.count && Array(body[i..<i + 8]) == com1 })
        // I/O interrupt entries: level, active low, bus 0, source = slot << 2 (INTA#), IOAPIC id = cpus.
        for (slot, pin) in [(1, 16), (2, 17)] {
            let entry: [UInt8] = [3, 0, 0x0F, 0, 0, UInt8(slot << 2), 2, UInt8(pin)]
            #expect(body.indices.contains { i in i + 8 <= body.count && Array(body[i..<i + 8]) == entry }, "slot \(slot)")
        }
        #expect(MPTable(cpus: 2).size + 8 + 16 == table.size)
    }
}
