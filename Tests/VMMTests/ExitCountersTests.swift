import KVM
import Testing
import VMM
import VMMInterface

/// A vCPU's exit counters: each exit lands under its `VMExitKind`, and kinds that never
/// happened are left out of what rtvisord reads.
@Suite struct ExitCountersTests {
    @Test func exitsAreCountedUnderTheirKinds() {
        let counters = ExitCounters()
        #expect(counters.snapshot == [:])
        _ = PortIO.simulated(port: 0xf4, size: 1, isWrite: true, values: [0]) { io in
            for _ in 0..<3 { counters.count(.portIO(io)) }
        }
        _ = MMIOAccess.simulated(address: 0xD000_0000, size: 4, isWrite: true, value: 123) { m in counters.count(.mmio(m)) }
        counters.count(.interrupted)
        counters.count(.halt)
        counters.count(.shutdown)
        counters.count(.systemEvent(type: SystemEventType.reset))
        counters.count(.internalError(suberror: 1, data: []))
        counters.count(.failEntry(reason: 0))
        counters.count(.other(reason: 99))
        counters.count(.other(reason: 98))
        #expect(counters.snapshot == ["io": 3, "mmio": 1, "interrupted": 1, "halt": 1, "shutdown": 1, "system-event": 1,
                                      "internal-error": 1, "fail-entry": 1, "other": 2])
        #expect(Set(counters.snapshot.keys) == Set(VMExitKind.allCases.map(\.rawValue)), "one counter per kind, no kind without one")
    }
}
