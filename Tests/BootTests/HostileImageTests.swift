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
            #expect(table.address == BootLayout.mpTable)
            #expect(table.size <= BootLayout.mpTableEBDASize)
        } else {
            #expect(table.address == BootLayout.mpTableLarge)
            #expect(Int(BootLayout.mpTableLarge.raw) + table.size <= 0x10_0000)
        }
    }
}
