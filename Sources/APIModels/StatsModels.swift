import VMMInterface

// `GET /v1/vms/{name}/stats` and `GET /v1/stats`: what each VM is doing, as rtvisord's one
// aggregation (Daemon's stats collector) builds it for the API, `rtvisorctl stats/top`, the
// Prometheus exposition and the dashboard. Counters are totals since the VMM started (a
// restart starts them again; `vmm_started_at` tells the reader); rates are the reader's job.
// Base units: seconds and bytes. A section the daemon could not read is absent, never zero.

/// Every VM rtvisord knows, read at one moment.
public struct StatsList: Codable, Sendable, Equatable {
    public var vms: [VMStats]
    /// Unix time in seconds when the collection ended.
    public var collectedAt: Double
    public init(vms: [VMStats], collectedAt: Double) { self.vms = vms; self.collectedAt = collectedAt }
    enum CodingKeys: String, CodingKey { case vms, collectedAt = "collected_at" }
}

public struct VMStats: Codable, Sendable, Equatable {
    public var name: String
    public var state: VMStateName
    public var pid: Int32?
    /// Unix time the running VMM started; nil when none runs.
    public var vmmStartedAt: Double?
    /// Automatic restarts and reboots since rtvisord loaded the definition.
    public var restarts: Int
    public var vcpus: [VCPUStats]
    public var memory: MemoryStats?
    public var disks: [DiskStats]
    public var nics: [NICStats]
    public var realtime: RealtimeStats?
    public init(name: String, state: VMStateName, pid: Int32?, vmmStartedAt: Double?, restarts: Int,
                vcpus: [VCPUStats], memory: MemoryStats?, disks: [DiskStats], nics: [NICStats],
                realtime: RealtimeStats?) {
        self.name = name; self.state = state; self.pid = pid; self.vmmStartedAt = vmmStartedAt
        self.restarts = restarts; self.vcpus = vcpus; self.memory = memory; self.disks = disks
        self.nics = nics; self.realtime = realtime
    }
    enum CodingKeys: String, CodingKey {
        case name, state, pid, restarts, vcpus, memory, disks, nics, realtime
        case vmmStartedAt = "vmm_started_at"
    }
}

public struct VCPUStats: Codable, Sendable, Equatable {
    public var index: Int
    /// Host CPU time of the vCPU thread (guest time included), seconds.
    public var cpuSeconds: Double?
    /// Time the vCPU thread was runnable but waited for a host CPU (schedstat), seconds.
    public var stealSeconds: Double?
    /// KVM exits by kind (`VMExitKind`'s raw values), counted by the VMM.
    public var exits: [String: UInt64]
    public init(index: Int, cpuSeconds: Double?, stealSeconds: Double?, exits: [String: UInt64]) {
        self.index = index; self.cpuSeconds = cpuSeconds; self.stealSeconds = stealSeconds; self.exits = exits
    }
    enum CodingKeys: String, CodingKey {
        case index, exits
        case cpuSeconds = "cpu_s", stealSeconds = "steal_s"
    }
}

public struct MemoryStats: Codable, Sendable, Equatable {
    /// The guest's RAM as defined.
    public var guestBytes: UInt64
    /// The VMM's resident set (VmRSS).
    public var residentBytes: UInt64?
    /// Locked (VmLck): a real-time VM's whole RAM.
    public var lockedBytes: UInt64?
    /// The VM's cgroup: memory in use and its limit (nil: no limit).
    public var cgroupCurrentBytes: UInt64?
    public var cgroupMaxBytes: UInt64?
    public init(guestBytes: UInt64, residentBytes: UInt64?, lockedBytes: UInt64?, cgroupCurrentBytes: UInt64?,
                cgroupMaxBytes: UInt64?) {
        self.guestBytes = guestBytes; self.residentBytes = residentBytes; self.lockedBytes = lockedBytes
        self.cgroupCurrentBytes = cgroupCurrentBytes; self.cgroupMaxBytes = cgroupMaxBytes
    }
    enum CodingKeys: String, CodingKey {
        case guestBytes = "guest_bytes", residentBytes = "resident_bytes", lockedBytes = "locked_bytes"
        case cgroupCurrentBytes = "cgroup_current_bytes", cgroupMaxBytes = "cgroup_max_bytes"
    }
}

public struct DiskStats: Codable, Sendable, Equatable {
    /// The definition's disk id (its position when it has none).
    public var id: String
    public var readOps: UInt64
    public var writeOps: UInt64
    public var flushOps: UInt64
    public var readBytes: UInt64
    public var writeBytes: UInt64
    public var errors: UInt64
    /// Sum of the requests' service times (host side), seconds: with the op counts, the mean latency.
    public var serviceSeconds: Double
    public init(id: String, readOps: UInt64, writeOps: UInt64, flushOps: UInt64, readBytes: UInt64,
                writeBytes: UInt64, errors: UInt64, serviceSeconds: Double) {
        self.id = id; self.readOps = readOps; self.writeOps = writeOps; self.flushOps = flushOps
        self.readBytes = readBytes; self.writeBytes = writeBytes; self.errors = errors; self.serviceSeconds = serviceSeconds
    }
    enum CodingKeys: String, CodingKey {
        case id, errors
        case readOps = "read_ops", writeOps = "write_ops", flushOps = "flush_ops"
        case readBytes = "read_bytes", writeBytes = "write_bytes", serviceSeconds = "service_s"
    }
}

public struct NICStats: Codable, Sendable, Equatable {
    /// The definition's NIC id (its position when it has none) and its host tap.
    public var id: String
    public var tap: String
    /// Seen from the guest: rx is what the guest received.
    public var rxFrames: UInt64
    public var rxBytes: UInt64
    public var txFrames: UInt64
    public var txBytes: UInt64
    /// Frames dropped because the guest had no receive buffer, or a transmit failed.
    public var rxDrops: UInt64
    public var txDrops: UInt64
    /// Frames for the guest the host kernel dropped at the tap because the VMM had not read its
    /// queue (the tap's `tx_dropped` in sysfs): drops the device cannot see. Nil when unreadable.
    public var tapDrops: UInt64?
    public init(id: String, tap: String, rxFrames: UInt64, rxBytes: UInt64, txFrames: UInt64, txBytes: UInt64,
                rxDrops: UInt64, txDrops: UInt64, tapDrops: UInt64? = nil) {
        self.id = id; self.tap = tap; self.rxFrames = rxFrames; self.rxBytes = rxBytes; self.txFrames = txFrames
        self.txBytes = txBytes; self.rxDrops = rxDrops; self.txDrops = txDrops; self.tapDrops = tapDrops
    }
    enum CodingKeys: String, CodingKey {
        case id, tap
        case rxFrames = "rx_frames", rxBytes = "rx_bytes", txFrames = "tx_frames", txBytes = "tx_bytes"
        case rxDrops = "rx_drops", txDrops = "tx_drops", tapDrops = "tap_drops"
    }
}

/// A real-time VM's partition and its wake-up latency (the probe's `LatencySnapshot`).
public struct RealtimeStats: Codable, Sendable, Equatable {
    public var cpus: [Int]
    public var priority: Int
    public var latency: LatencySnapshot?
    public init(cpus: [Int], priority: Int, latency: LatencySnapshot?) {
        self.cpus = cpus; self.priority = priority; self.latency = latency
    }
}

/// `GET /v1/vms/{name}/console?lines=N`: what the guest printed last, as the dashboard shows it.
public struct ConsoleTail: Codable, Sendable, Equatable {
    public var name: String
    /// Oldest first; control characters other than tab removed, each line at most `maxLineLength`.
    public var lines: [String]
    public init(name: String, lines: [String]) { self.name = name; self.lines = lines }

    public static let maxLines = 100
    public static let maxLineLength = 500

    /// The last `count` complete or partial lines of raw console output (UTF-8, invalid bytes
    /// replaced), without carriage returns, escape sequences' control bytes or empty trailing lines.
    public static func lines(of bytes: [UInt8], count: Int) -> [String] {
        // Split on the byte: as Characters, "\r\n" is one grapheme, not a "\n".
        var lines = bytes.split(separator: 0x0A, omittingEmptySubsequences: false).map { line in
            let text = String(decoding: line, as: UTF8.self)
            return String(String.UnicodeScalarView(text.unicodeScalars.filter { $0 == "\t" || !($0.value < 0x20 || $0.value == 0x7f) })
                .prefix(maxLineLength))
        }
        while lines.last?.isEmpty == true { lines.removeLast() }
        return Array(lines.suffix(max(0, min(count, maxLines))))
    }
}
