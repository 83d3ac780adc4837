import Testing
@testable import Devices

@Suite struct BusAddressSpaceEndTests {
    final class Nop: BusDevice {
        func read(offset: UInt64, size: Int) -> UInt64 { 0 }
        func write(offset: UInt64, size: Int, value: UInt64) {}
    }

    @Test func rangePastTheEndOfTheAddressSpaceIsRefused() {
        #expect(throws: BusError.self) {
            _ = try Bus(name: "mmio", ranges: [.init(base: UInt64.max - 1, length: 4, name: "evil", device: Nop())])
        }
        #expect(throws: Never.self) {
            // Lookups compute base + length, so the last usable range ends at UInt64.max.
            _ = try Bus(name: "mmio", ranges: [.init(base: UInt64.max - 4, length: 4, name: "last", device: Nop())])
        }
    }
}
