/// One VM's rates between two reads of its statistics (`rtvisorctl top`; any reader of
/// `GET /v1/stats` that wants rates): counters are totals, so a rate is the difference over
/// the time between the reads. Only between two reads of the same VMM (same pid and start
/// time): across a restart the counters start again and there is no rate (nil).
public struct VMRates: Equatable, Sendable {
    public var name: String
    public var state: VMStateName
    public var pid: Int32?
    /// Host CPU time of all vCPU threads, in percent of one host CPU (two busy vCPUs: 200).
    public var cpuPercent: Double?
    /// Run-queue wait of the vCPU threads, in percent of one host CPU.
    public var stealPercent: Double?
    public var exitsPerSecond: Double?
    public var diskReadBytesPerSecond: Double?
    public var diskWriteBytesPerSecond: Double?
    public var diskOpsPerSecond: Double?
    /// Frames received plus sent by all NICs.
    public var netFramesPerSecond: Double?
    public var netBytesPerSecond: Double?
    /// As read now (not a rate).
    public var residentBytes: UInt64?
    public var restarts: Int
    /// Seconds since the VMM started, at the second read.
    public var uptimeSeconds: Double?

    /// `previous` and `current` are the same VM read `seconds` apart.
    public init(previous: VMStats?, current c: VMStats, seconds: Double, now: Double) {
        name = c.name; state = c.state; pid = c.pid; restarts = c.restarts
        residentBytes = c.memory?.residentBytes
        uptimeSeconds = c.vmmStartedAt.map { max(0, now - $0) }
        guard let p = previous, seconds > 0, c.pid != nil, p.pid == c.pid, p.vmmStartedAt == c.vmmStartedAt else { return }
        func rate(_ f: (VMStats) -> Double?) -> Double? {
            guard let a = f(p), let b = f(c), b >= a else { return nil }
            return (b - a) / seconds
        }
        func sum<T>(_ items: @escaping (VMStats) -> [T], _ value: @escaping (T) -> Double?) -> (VMStats) -> Double? {
            { s in
                let values = items(s).map(value)
                return values.isEmpty || values.contains(where: { $0 == nil }) ? nil : values.reduce(0) { $0 + $1! }
            }
        }
        cpuPercent = rate(sum(\.vcpus, \.cpuSeconds)).map { $0 * 100 }
        stealPercent = rate(sum(\.vcpus, \.stealSeconds)).map { $0 * 100 }
        // No exit counted on any vCPU: a VMM without counters (older than control protocol 5).
        exitsPerSecond = rate { s in s.vcpus.allSatisfy(\.exits.isEmpty) ? nil : Double(s.vcpus.reduce(0) { $0 + $1.exits.values.reduce(0, +) }) }
        diskReadBytesPerSecond = rate(sum(\.disks) { Double($0.readBytes) })
        diskWriteBytesPerSecond = rate(sum(\.disks) { Double($0.writeBytes) })
        diskOpsPerSecond = rate(sum(\.disks) { Double($0.readOps + $0.writeOps + $0.flushOps) })
        netFramesPerSecond = rate(sum(\.nics) { Double($0.rxFrames + $0.txFrames) })
        netBytesPerSecond = rate(sum(\.nics) { Double($0.rxBytes + $0.txBytes) })
    }

    /// Every VM of `current` with its rates since `previous` (a VM new since then has none).
    public static func between(_ previous: StatsList?, _ current: StatsList) -> [VMRates] {
        let seconds = previous.map { current.collectedAt - $0.collectedAt } ?? 0
        let before = Dictionary((previous?.vms ?? []).map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        return current.vms.map { VMRates(previous: before[$0.name], current: $0, seconds: seconds, now: current.collectedAt) }
    }

    /// The orders `rtvisorctl top --sort` offers: busiest first, or by name.
    public enum Order: String, CaseIterable, Sendable {
        case cpu, mem, disk, net, exits, name
    }

    /// Sorted by `order`, busiest first (no rate counts as the least); ties and `name` by name.
    public static func sorted(_ rates: [VMRates], by order: Order) -> [VMRates] {
        func key(_ r: VMRates) -> Double {
            switch order {
            case .cpu: r.cpuPercent ?? -1
            case .mem: r.residentBytes.map(Double.init) ?? -1
            case .disk: (r.diskReadBytesPerSecond ?? -1) + (r.diskWriteBytesPerSecond ?? 0)
            case .net: r.netFramesPerSecond ?? -1
            case .exits: r.exitsPerSecond ?? -1
            case .name: 0
            }
        }
        return rates.sorted { a, b in
            let ka = key(a), kb = key(b)
            return ka != kb ? ka > kb : a.name < b.name
        }
    }
}
