#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The host-side wake-up latency probe of a real-time VM: how late a
/// thread at the vCPUs' SCHED_FIFO priority on the VM's first CPU wakes after its timer expired.
/// Written by rtvisor-vmm (`--latency-file`, `VMMLaunch.latencyFile`), served by rtvisord
/// (`GET /v1/vms/{name}/latency`).
public struct LatencySnapshot: Codable, Sendable, Equatable {
    public var name: String
    public var cpu: Int
    public var priority: Int
    public var periodMicroseconds: Int
    public var samples: UInt64
    public var minNanoseconds: UInt64
    public var meanNanoseconds: Double
    public var p50Nanoseconds: UInt64
    public var p99Nanoseconds: UInt64
    public var p9999Nanoseconds: UInt64
    public var maxNanoseconds: UInt64
    /// HDR histogram buckets with a count: [highest value equivalent (ns), count].
    public var buckets: [[UInt64]]
    /// Seconds since the epoch when this was written.
    public var updatedAt: Double
    public init(name: String, cpu: Int, priority: Int, periodMicroseconds: Int, samples: UInt64, minNanoseconds: UInt64,
                meanNanoseconds: Double, p50Nanoseconds: UInt64, p99Nanoseconds: UInt64, p9999Nanoseconds: UInt64,
                maxNanoseconds: UInt64, buckets: [[UInt64]], updatedAt: Double) {
        self.name = name; self.cpu = cpu; self.priority = priority; self.periodMicroseconds = periodMicroseconds
        self.samples = samples; self.minNanoseconds = minNanoseconds; self.meanNanoseconds = meanNanoseconds
        self.p50Nanoseconds = p50Nanoseconds; self.p99Nanoseconds = p99Nanoseconds; self.p9999Nanoseconds = p9999Nanoseconds
        self.maxNanoseconds = maxNanoseconds; self.buckets = buckets; self.updatedAt = updatedAt
    }
    enum CodingKeys: String, CodingKey {
        case name, cpu, priority, samples, buckets
        case periodMicroseconds = "period_us", minNanoseconds = "min_ns", meanNanoseconds = "mean_ns", p50Nanoseconds = "p50_ns"
        case p99Nanoseconds = "p99_ns", p9999Nanoseconds = "p99_99_ns", maxNanoseconds = "max_ns", updatedAt = "updated_at"
    }
}

extension LatencySnapshot {
    /// The file's bytes (JSON).
    public var encoded: [UInt8] { (try? Array(JSONEncoder().encode(self))) ?? [] }

    /// nil for a missing file or one caught half rewritten (a jailed VMM rewrites it in place).
    public static func read(_ path: String) -> LatencySnapshot? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        return try? JSONDecoder().decode(LatencySnapshot.self, from: data)
    }
}
