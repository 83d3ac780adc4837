import APIModels
import Testing

/// `rtvisorctl top`'s rates: the difference of two reads over the time between them, only
/// between two reads of the same VMM, and the table's orders.
@Suite struct StatsRatesTests {
    static func vm(_ name: String, pid: Int32? = 10, started: Double? = 100, cpu: Double = 0, steal: Double = 0, exits: UInt64 = 0,
                   readBytes: UInt64 = 0, writeBytes: UInt64 = 0, ops: UInt64 = 0, frames: UInt64 = 0, rss: UInt64? = nil) -> VMStats {
        VMStats(name: name, state: pid == nil ? .stopped : .running, pid: pid, vmmStartedAt: started, restarts: 0,
                vcpus: pid == nil ? [] : [VCPUStats(index: 0, cpuSeconds: cpu / 2, stealSeconds: steal, exits: ["io": exits / 2, "mmio": exits - exits / 2]),
                                         VCPUStats(index: 1, cpuSeconds: cpu / 2, stealSeconds: 0, exits: [:])],
                memory: MemoryStats(guestBytes: 1 << 30, residentBytes: rss, lockedBytes: nil, cgroupCurrentBytes: nil, cgroupMaxBytes: nil),
                disks: pid == nil ? [] : [DiskStats(id: "0", readOps: ops, writeOps: 0, flushOps: 0, readBytes: readBytes, writeBytes: writeBytes, errors: 0, serviceSeconds: 0)],
                nics: pid == nil ? [] : [NICStats(id: "0", tap: "t", rxFrames: frames / 2, rxBytes: 0, txFrames: frames - frames / 2, txBytes: 0, rxDrops: 0, txDrops: 0)],
                realtime: nil)
    }

    @Test func ratesAreTheDifferenceOverTheTimeBetweenTwoReads() {
        let a = Self.vm("web", cpu: 10, steal: 1, exits: 1000, readBytes: 1 << 20, writeBytes: 0, ops: 10, frames: 50)
        let b = Self.vm("web", cpu: 13, steal: 1.5, exits: 5000, readBytes: 3 << 20, writeBytes: 1 << 20, ops: 30, frames: 250, rss: 42)
        let r = VMRates(previous: a, current: b, seconds: 2, now: 160)
        #expect(r.cpuPercent == 150, "3 s of CPU in 2 s: one and a half host CPUs")
        #expect(r.stealPercent == 25)
        #expect(r.exitsPerSecond == 2000)
        #expect(r.diskReadBytesPerSecond == Double(1 << 20) && r.diskWriteBytesPerSecond == Double(1 << 19))
        #expect(r.diskOpsPerSecond == 10 && r.netFramesPerSecond == 100)
        #expect(r.residentBytes == 42 && r.uptimeSeconds == 60)
    }

    @Test func aRestartedVMMHasNoRates() {
        let before = Self.vm("web", pid: 10, started: 100, cpu: 50, exits: 9000)
        let after = Self.vm("web", pid: 11, started: 150, cpu: 1, exits: 10)
        let r = VMRates(previous: before, current: after, seconds: 2, now: 152)
        #expect(r.cpuPercent == nil && r.exitsPerSecond == nil && r.diskReadBytesPerSecond == nil && r.netFramesPerSecond == nil)
        #expect(r.uptimeSeconds == 2, "the new VMM's uptime")
        // The same pid again but another start (pid reuse): no rates either.
        #expect(VMRates(previous: before, current: Self.vm("web", pid: 10, started: 151, cpu: 60), seconds: 2, now: 152).cpuPercent == nil)
    }

    @Test func aStoppedOrNewVMAndAVMMWithoutCountersHaveNoRates() {
        let stopped = VMRates(previous: Self.vm("db", pid: nil, started: nil), current: Self.vm("db", pid: nil, started: nil), seconds: 2, now: 0)
        #expect(stopped.cpuPercent == nil && stopped.uptimeSeconds == nil)
        let list = VMRates.between(StatsList(vms: [Self.vm("web")], collectedAt: 10),
                                   StatsList(vms: [Self.vm("web", cpu: 1), Self.vm("new", cpu: 5)], collectedAt: 12))
        #expect(list.map(\.name) == ["web", "new"])
        #expect(list[0].cpuPercent == 50 && list[1].cpuPercent == nil)
        // A version-4 VMM: no exit counters, so no exit rate (not zero).
        var old = Self.vm("web", exits: 0), newer = Self.vm("web", cpu: 2, exits: 0)
        for i in old.vcpus.indices { old.vcpus[i].exits = [:]; newer.vcpus[i].exits = [:] }
        #expect(VMRates(previous: old, current: newer, seconds: 1, now: 0).exitsPerSecond == nil)
    }

    @Test func theTableSortsBusiestFirstAndByName() {
        let previous = StatsList(vms: [Self.vm("a"), Self.vm("b"), Self.vm("c"), Self.vm("off", pid: nil, started: nil)], collectedAt: 0)
        let current = StatsList(vms: [Self.vm("a", cpu: 1, readBytes: 900, frames: 5, rss: 3),
                                      Self.vm("b", cpu: 3, readBytes: 100, frames: 50, rss: 1),
                                      Self.vm("c", cpu: 2, readBytes: 500, frames: 5, rss: 2),
                                      Self.vm("off", pid: nil, started: nil)], collectedAt: 1)
        let rates = VMRates.between(previous, current)
        #expect(VMRates.sorted(rates, by: .cpu).map(\.name) == ["b", "c", "a", "off"])
        #expect(VMRates.sorted(rates, by: .disk).map(\.name) == ["a", "c", "b", "off"])
        #expect(VMRates.sorted(rates, by: .net).map(\.name) == ["b", "a", "c", "off"], "ties by name")
        #expect(VMRates.sorted(rates, by: .mem).map(\.name) == ["a", "c", "b", "off"])
        #expect(VMRates.sorted(rates, by: .name).map(\.name) == ["a", "b", "c", "off"])
    }
}
