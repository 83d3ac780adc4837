import APIModels
import Foundation
import Posix
import VMMInterface

/// One VM as the supervisor knows it at the moment of a collection: plain data, so the reads
/// (procfs, cgroupfs, the VMM's control socket) happen off the supervisor actor.
public struct StatsTarget: Sendable, Equatable {
    public var name: String
    public var state: VMStateName
    /// The running VMM, with its /proc start time (clock ticks since boot); nil when none runs.
    public var process: ProcessIdentity?
    public var restarts: Int
    public var guestBytes: UInt64
    public var realtime: RealtimeStats?
    /// A real-time VM's latency file (only with a probe).
    public var latencyFile: String?
    /// The VMM's control socket, when its VMM can answer there (not while it is frozen).
    public var controlSocket: String?
    /// The definition's disks' ids and NICs' taps, in its order (the VMM counts by position).
    public var diskIDs: [String]
    public var nicTaps: [String]
    public init(name: String, state: VMStateName, process: ProcessIdentity?, restarts: Int, guestBytes: UInt64,
                realtime: RealtimeStats? = nil, latencyFile: String? = nil, controlSocket: String? = nil,
                diskIDs: [String] = [], nicTaps: [String] = []) {
        self.name = name; self.state = state; self.process = process; self.restarts = restarts; self.guestBytes = guestBytes
        self.realtime = realtime; self.latencyFile = latencyFile; self.controlSocket = controlSocket
        self.diskIDs = diskIDs; self.nicTaps = nicTaps
    }
}

/// The daemon's one aggregation of per-VM statistics (`GET /v1/stats`, `rtvisorctl stats/top`,
/// the metrics and the dashboard all read what it builds): what the supervisor knows, the VMM's
/// process in procfs (memory, per-vCPU-thread CPU time and run-queue wait) and its cgroup.
/// The roots are parameters so that tests feed it a fake procfs and cgroupfs.
public struct StatsCollector: Sendable {
    public var procRoot: String
    public var cgroupRoot: String
    /// Where the taps' counters are (`/sys/class/net/TAP/statistics`).
    public var netRoot: String
    /// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), for /proc/PID/stat's start time.
    public var clockTicks: Double
    /// Asks a VMM for its counters over its control socket; nil when it cannot or will not
    /// (gone, too old, not answering within `vmmTimeoutSeconds`).
    public var vmmCounters: @Sendable (_ controlSocket: String) -> VMMStatistics?

    /// How long one VMM may take to answer: a VMM that does not answer costs a collection this
    /// much, and only its own counters.
    public static let vmmTimeoutSeconds = 1

    public init(procRoot: String = "/proc", cgroupRoot: String = "/sys/fs/cgroup", netRoot: String = "/sys/class/net",
                clockTicks: Double = Double(sysconf(Int32(_SC_CLK_TCK))),
                vmmCounters: @escaping @Sendable (_ controlSocket: String) -> VMMStatistics? = StatsCollector.askVMM) {
        self.procRoot = procRoot; self.cgroupRoot = cgroupRoot; self.netRoot = netRoot; self.clockTicks = clockTicks
        self.vmmCounters = vmmCounters
    }

    public static func askVMM(_ controlSocket: String) -> VMMStatistics? {
        try? VMMControlClient.connect(controlSocket, timeoutSeconds: vmmTimeoutSeconds).statistics()
    }

    /// One VM's statistics; sections that cannot be read (no VMM, a file gone) are absent.
    public func collect(_ t: StatsTarget) -> VMStats {
        var stats = VMStats(name: t.name, state: t.state, pid: t.process?.pid, vmmStartedAt: nil, restarts: t.restarts,
                            vcpus: [], memory: MemoryStats(guestBytes: t.guestBytes, residentBytes: nil, lockedBytes: nil,
                                                           cgroupCurrentBytes: nil, cgroupMaxBytes: nil),
                            disks: [], nics: [], realtime: t.realtime)
        if var rt = stats.realtime, let file = t.latencyFile {
            rt.latency = LatencySnapshot.read(file)
            stats.realtime = rt
        }
        // A pid that is no longer the VMM (it ended, the number was reused) reads as no process.
        guard let process = t.process, process.isRunning(procRoot: procRoot) else { return stats }
        let dir = "\(procRoot)/\(process.pid)"
        stats.vmmStartedAt = bootTime().map { $0 + Double(process.startTime) / clockTicks }
        if let status = HostFiles.read(dir + "/status") {
            let m = Self.parseStatus(status)
            stats.memory?.residentBytes = m.resident
            stats.memory?.lockedBytes = m.locked
        }
        if let usage = cgroupMemory(HostFiles.read(dir + "/cgroup")) {
            stats.memory?.cgroupCurrentBytes = usage.current
            stats.memory?.cgroupMaxBytes = usage.max
        }
        stats.vcpus = vcpuThreads(dir)
        if let socket = t.controlSocket, let counters = vmmCounters(socket) {
            Self.merge(counters, into: &stats, target: t)
            for i in stats.nics.indices where !stats.nics[i].tap.isEmpty {
                stats.nics[i].tapDrops = HostFiles.line("\(netRoot)/\(stats.nics[i].tap)/statistics/tx_dropped").flatMap { UInt64($0) }
            }
        }
        return stats
    }

    /// The VMM's counters into the statistics: exits into the vCPUs procfs found (a vCPU thread
    /// procfs did not show is added), disks and NICs named from the definition.
    public static func merge(_ c: VMMStatistics, into stats: inout VMStats, target t: StatsTarget) {
        for v in c.vcpus {
            if let i = stats.vcpus.firstIndex(where: { $0.index == v.index }) { stats.vcpus[i].exits = v.exits }
            else { stats.vcpus.append(VCPUStats(index: v.index, cpuSeconds: nil, stealSeconds: nil, exits: v.exits)) }
        }
        stats.vcpus.sort { $0.index < $1.index }
        stats.disks = c.disks.enumerated().map { i, d in
            DiskStats(id: i < t.diskIDs.count ? t.diskIDs[i] : String(i), readOps: d.readOps, writeOps: d.writeOps, flushOps: d.flushOps,
                      readBytes: d.readBytes, writeBytes: d.writeBytes, errors: d.errors, serviceSeconds: Double(d.serviceNanoseconds) / 1e9)
        }
        stats.nics = c.nics.enumerated().map { i, n in
            NICStats(id: String(i), tap: i < t.nicTaps.count ? t.nicTaps[i] : "", rxFrames: n.rxFrames, rxBytes: n.rxBytes,
                     txFrames: n.txFrames, txBytes: n.txBytes, rxDrops: n.rxDrops, txDrops: n.txDrops)
        }
    }

    /// Unix time of the host's boot (`btime` of /proc/stat).
    func bootTime() -> Double? {
        guard let text = HostFiles.read(procRoot + "/stat") else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("btime ") {
            return Double(line.dropFirst(6).trimmingCharacters(in: .whitespaces))
        }
        return nil
    }

    /// The vCPU threads (named `vcpuN` by the VMM), by index, with their CPU time and wait.
    func vcpuThreads(_ processDir: String) -> [VCPUStats] {
        var vcpus: [VCPUStats] = []
        for tid in HostFiles.list(processDir + "/task") {
            let task = processDir + "/task/" + tid
            guard let comm = HostFiles.line(task + "/comm"), let index = Self.vcpuIndex(threadName: comm) else { continue }
            let sched = HostFiles.read(task + "/schedstat").flatMap(Self.parseSchedstat)
            vcpus.append(VCPUStats(index: index, cpuSeconds: sched?.cpuSeconds, stealSeconds: sched?.waitSeconds, exits: [:]))
        }
        return vcpus.sorted { $0.index < $1.index }
    }

    /// The VMM's memory cgroup usage: a v1 memory hierarchy's line of /proc/PID/cgroup if the host
    /// has one, else the v2 (unified) line.
    func cgroupMemory(_ procPidCgroup: String?) -> (current: UInt64?, max: UInt64?)? {
        guard let place = Self.memoryCgroup(procPidCgroup) else { return nil }
        let dir = cgroupRoot + (place.v1 ? "/memory" : "") + (place.path == "/" ? "" : place.path)
        let (currentFile, maxFile) = place.v1 ? ("memory.usage_in_bytes", "memory.limit_in_bytes") : ("memory.current", "memory.max")
        guard let current = HostFiles.line(dir + "/" + currentFile).flatMap({ UInt64($0) }) else { return nil }
        return (current, HostFiles.line(dir + "/" + maxFile).flatMap(Self.memoryLimit))
    }

    // MARK: parsing (pure)

    /// VmRSS and VmLck of /proc/PID/status, in bytes.
    public static func parseStatus(_ text: String) -> (resident: UInt64?, locked: UInt64?) {
        var resident: UInt64?, locked: UInt64?
        for line in text.split(separator: "\n") {
            if line.hasPrefix("VmRSS:") { resident = kibibytes(line.dropFirst(6)) }
            if line.hasPrefix("VmLck:") { locked = kibibytes(line.dropFirst(6)) }
        }
        return (resident, locked)
    }

    /// "   1234 kB" as bytes.
    static func kibibytes(_ field: Substring) -> UInt64? {
        let parts = field.split(whereSeparator: { $0 == " " || $0 == "\t" })
        guard parts.count == 2, parts[1] == "kB", let n = UInt64(parts[0]) else { return nil }
        return n * 1024
    }

    /// /proc/PID/task/TID/schedstat: "on-CPU ns, run-queue wait ns, timeslices".
    public static func parseSchedstat(_ text: String) -> (cpuSeconds: Double, waitSeconds: Double)? {
        let f = text.split(whereSeparator: { $0 == " " || $0 == "\n" })
        guard f.count >= 2, let run = UInt64(f[0]), let wait = UInt64(f[1]) else { return nil }
        return (Double(run) / 1e9, Double(wait) / 1e9)
    }

    /// The index of a vCPU thread from its name (`vcpu3` → 3; the VMM's `PosixThread` names).
    public static func vcpuIndex(threadName: String) -> Int? {
        guard threadName.hasPrefix("vcpu") else { return nil }
        return Int(threadName.dropFirst(4))
    }

    /// Which cgroup holds the process's memory: a v1 `N:memory:/path` line wins (the controller
    /// lives in one hierarchy only), else the unified `0::/path`.
    public static func memoryCgroup(_ procPidCgroup: String?) -> (v1: Bool, path: String)? {
        let lines = (procPidCgroup ?? "").split(separator: "\n")
        for line in lines {
            let f = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            if f.count == 3, f[1].split(separator: ",").contains("memory") { return (true, String(f[2])) }
        }
        if let unified = lines.first(where: { $0.hasPrefix("0::") }) { return (false, String(unified.dropFirst(3))) }
        return nil
    }

    /// A memory limit file's value; nil for none ("max" in v2; v1's "unlimited" is a page-rounded
    /// LONG_MAX, anything from 2^62 up).
    public static func memoryLimit(_ text: String) -> UInt64? {
        guard let n = UInt64(text), n < 1 << 62 else { return nil }
        return n
    }
}
