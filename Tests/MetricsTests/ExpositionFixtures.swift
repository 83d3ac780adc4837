import APIModels
import Foundation
import VMMInterface

/// What the daemon could report for three VMs: a running one with a disk and a NIC, a real-time
/// one with its latency probe, and a stopped one (no sections: absent, not zero).
enum ExpositionFixtures {
    static let latency = LatencySnapshot(
        name: "rt", cpu: 3, priority: 80, periodMicroseconds: 1000, samples: 1000, minNanoseconds: 1500,
        meanNanoseconds: 4000, p50Nanoseconds: 3000, p99Nanoseconds: 40_000, p9999Nanoseconds: 90_000,
        maxNanoseconds: 3_000_000_000,
        // [highest equivalent ns, count]: 1.5 µs and 3 µs into the 2 µs and 5 µs buckets, 40 µs into
        // 50 µs, 3 s beyond every bound (+Inf only).
        buckets: [[1500, 600], [3000, 300], [40_000, 99], [3_000_000_000, 1]], updatedAt: 1_765_000_000)

    static let stats = StatsList(vms: [
        VMStats(name: "web", state: .running, pid: 4242, vmmStartedAt: 1_765_000_000.5, restarts: 2,
                vcpus: [VCPUStats(index: 0, cpuSeconds: 12.25, stealSeconds: 0.5, exits: ["io": 100, "mmio": 7]),
                        VCPUStats(index: 1, cpuSeconds: nil, stealSeconds: nil, exits: [:])],
                memory: MemoryStats(guestBytes: 268_435_456, residentBytes: 100_000_000, lockedBytes: nil,
                                    cgroupCurrentBytes: 120_000_000, cgroupMaxBytes: nil),
                disks: [DiskStats(id: "root", readOps: 10, writeOps: 20, flushOps: 3, readBytes: 40960, writeBytes: 81920,
                                  errors: 0, serviceSeconds: 0.125)],
                nics: [NICStats(id: "net0", tap: "tap-web", rxFrames: 5, rxBytes: 500, txFrames: 6, txBytes: 600, rxDrops: 1, txDrops: 0, tapDrops: 3)],
                realtime: nil),
        VMStats(name: "rt", state: .running, pid: 4343, vmmStartedAt: 1_765_000_001, restarts: 0,
                vcpus: [VCPUStats(index: 0, cpuSeconds: 1, stealSeconds: 0, exits: [:])],
                memory: MemoryStats(guestBytes: 67_108_864, residentBytes: 70_000_000, lockedBytes: 67_108_864,
                                    cgroupCurrentBytes: nil, cgroupMaxBytes: 134_217_728),
                disks: [], nics: [], realtime: RealtimeStats(cpus: [2, 3], priority: 80, latency: latency)),
        VMStats(name: "idle", state: .stopped, pid: nil, vmmStartedAt: nil, restarts: 0, vcpus: [], memory: nil,
                disks: [], nics: [], realtime: nil),
    ], collectedAt: 1_765_000_100.25)

    /// A family as prometheus_client's parser read it (scripts/parse-exposition.py).
    struct Family: Decodable {
        var name: String
        var type: String
        var help: String
        var samples: [Sample]
        func value(_ sampleName: String, _ labels: [String: String]) -> Double? {
            samples.first { $0.name == sampleName && $0.labels == labels }?.value
        }
    }
    struct Sample: Decodable {
        var name: String
        var labels: [String: String]
        var value: Double
    }

    enum ParserResult {
        case parsed([String: Family])
        case unavailable(String)
        case rejected(String)
    }

    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// Runs the reference parser on `text`.
    static func parse(_ text: String) throws -> ParserResult {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        p.arguments = [repository.appendingPathComponent("scripts/parse-exposition.py").path]
        let input = Pipe(), output = Pipe(), errors = Pipe()
        p.standardInput = input; p.standardOutput = output; p.standardError = errors
        try p.run()
        input.fileHandleForWriting.write(Data(text.utf8))
        try input.fileHandleForWriting.close()
        let out = output.fileHandleForReading.readDataToEndOfFile()
        let err = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        switch p.terminationStatus {
        case 0:
            let families = try JSONDecoder().decode([Family].self, from: out)
            return .parsed(Dictionary(families.map { ($0.name, $0) }) { a, _ in a })
        case 3: return .unavailable(err)
        default: return .rejected(err)
        }
    }
}
