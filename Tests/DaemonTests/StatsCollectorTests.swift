import APIModels
import CDaemonSupport
import Daemon
import Foundation
import Posix
import SystemPackage
import Testing
import TestSupport
import VMMInterface
#if canImport(Glibc)
import Glibc
#endif

/// The daemon's one aggregation of per-VM statistics, over a fake procfs and cgroupfs: what the
/// supervisor knows plus what the VMM's process, its vCPU threads and its cgroup show.
@Suite struct StatsCollectorTests {
    /// A procfs with one VMM (pid 4242, started 1000 ticks after boot) and its threads: the main
    /// thread, two vCPUs and an I/O thread; its memory cgroup in a v1 hierarchy or in v2.
    static func fakeHost(v1: Bool) throws -> (collector: StatsCollector, process: ProcessIdentity) {
        let root = try makeTemporaryDirectory("rtvisor-stats")
        let proc = root + "/proc", cg = root + "/cgroup"
        writeFile(proc + "/stat", "cpu  1 2 3\nbtime 1700000000\nprocesses 9\n")
        writeFile(proc + "/4242/stat", "4242 (rtvisor-vmm) S 1 4242 4242 0 -1 0 0 0 0 0 0 0 0 0 20 0 5 0 1000 0 0\n")
        writeFile(proc + "/4242/status", "Name:\trtvisor-vmm\nVmPeak:\t  900000 kB\nVmLck:\t   65536 kB\nVmRSS:\t  70000 kB\nThreads:\t4\n")
        for (tid, name, sched) in [("4242", "rtvisor-vmm", "5 6 7"), ("4243", "vcpu0", "2500000000 125000000 40"),
                                   ("4244", "vcpu1", "1000000000 0 3"), ("4245", "net0-rx", "1 1 1")] {
            writeFile("\(proc)/4242/task/\(tid)/comm", name + "\n")
            writeFile("\(proc)/4242/task/\(tid)/schedstat", sched + "\n")
        }
        if v1 {
            writeFile(proc + "/4242/cgroup", "9:pids:/rtvisor/web\n4:memory:/rtvisor/web\n0::/\n")
            writeFile(cg + "/memory/rtvisor/web/memory.usage_in_bytes", "73400320\n")
            writeFile(cg + "/memory/rtvisor/web/memory.limit_in_bytes", "9223372036854771712\n")
        } else {
            writeFile(proc + "/4242/cgroup", "0::/system.slice/rtvisord.service/vm-web\n")
            writeFile(cg + "/system.slice/rtvisord.service/vm-web/memory.current", "73400320\n")
            writeFile(cg + "/system.slice/rtvisord.service/vm-web/memory.max", "104857600\n")
        }
        writeFile(root + "/net/tap-web/statistics/tx_dropped", "3\n")
        return (StatsCollector(procRoot: proc, cgroupRoot: cg, netRoot: root + "/net", clockTicks: 100), ProcessIdentity(pid: 4242, startTime: 1000))
    }

    @Test func aRunningVMsProcessVCPUThreadsAndV1CgroupAreRead() throws {
        let (collector, process) = try Self.fakeHost(v1: true)
        let s = collector.collect(StatsTarget(name: "web", state: .running, process: process, restarts: 2, guestBytes: 64 << 20))
        #expect(s.name == "web" && s.state == .running && s.pid == 4242 && s.restarts == 2)
        #expect(s.vmmStartedAt == 1_700_000_010, "boot time + 1000 ticks at 100 Hz")
        #expect(s.memory == MemoryStats(guestBytes: 64 << 20, residentBytes: 70000 * 1024, lockedBytes: 65536 * 1024,
                                        cgroupCurrentBytes: 73_400_320, cgroupMaxBytes: nil), "v1's unlimited reads as no limit")
        #expect(s.vcpus == [VCPUStats(index: 0, cpuSeconds: 2.5, stealSeconds: 0.125, exits: [:]),
                            VCPUStats(index: 1, cpuSeconds: 1, stealSeconds: 0, exits: [:])], "only the vcpuN threads, by index")
        #expect(s.disks.isEmpty && s.nics.isEmpty && s.realtime == nil)
    }

    @Test func aV2CgroupsCurrentAndMaxAreRead() throws {
        let (collector, process) = try Self.fakeHost(v1: false)
        let s = collector.collect(StatsTarget(name: "web", state: .running, process: process, restarts: 0, guestBytes: 64 << 20))
        #expect(s.memory?.cgroupCurrentBytes == 73_400_320 && s.memory?.cgroupMaxBytes == 104_857_600)
    }

    @Test func aStoppedVMHasOnlyWhatTheSupervisorKnows() throws {
        let (collector, _) = try Self.fakeHost(v1: true)
        let s = collector.collect(StatsTarget(name: "db", state: .stopped, process: nil, restarts: 1, guestBytes: 32 << 20,
                                              realtime: RealtimeStats(cpus: [3], priority: 50, latency: nil)))
        #expect(s == VMStats(name: "db", state: .stopped, pid: nil, vmmStartedAt: nil, restarts: 1, vcpus: [],
                             memory: MemoryStats(guestBytes: 32 << 20, residentBytes: nil, lockedBytes: nil, cgroupCurrentBytes: nil, cgroupMaxBytes: nil),
                             disks: [], nics: [], realtime: RealtimeStats(cpus: [3], priority: 50, latency: nil)))
    }

    @Test func aReusedPIDIsNotReadAsTheVMM() throws {
        let (collector, _) = try Self.fakeHost(v1: true)
        // Same pid, another start time: the VMM ended and the number went to someone else.
        let s = collector.collect(StatsTarget(name: "web", state: .running, process: ProcessIdentity(pid: 4242, startTime: 999),
                                              restarts: 0, guestBytes: 1 << 20))
        #expect(s.vcpus.isEmpty && s.memory?.residentBytes == nil && s.vmmStartedAt == nil)
    }

    @Test func aRealtimeVMCarriesItsLatencySnapshot() throws {
        let (collector, process) = try Self.fakeHost(v1: true)
        let dir = try makeTemporaryDirectory("rtvisor-stats-latency")
        let snapshot = LatencySnapshot(name: "rt", cpu: 3, priority: 51, periodMicroseconds: 1000, samples: 10, minNanoseconds: 900, meanNanoseconds: 1500,
                                       p50Nanoseconds: 1400, p99Nanoseconds: 3000, p9999Nanoseconds: 4000, maxNanoseconds: 4100, buckets: [[1400, 10]], updatedAt: 5)
        writeFile(dir + "/latency.json", String(decoding: snapshot.encoded, as: UTF8.self))
        let s = collector.collect(StatsTarget(name: "rt", state: .running, process: process, restarts: 0, guestBytes: 1 << 20,
                                              realtime: RealtimeStats(cpus: [3], priority: 50, latency: nil), latencyFile: dir + "/latency.json"))
        #expect(s.realtime == RealtimeStats(cpus: [3], priority: 50, latency: snapshot))
    }

    @Test func kernelTextsAreParsed() {
        #expect(StatsCollector.parseStatus("VmRSS:\t   12 kB\nVmLck:\t 0 kB\n") == (12288, 0))
        #expect(StatsCollector.parseStatus("Name: x\n") == (nil, nil))
        #expect(StatsCollector.parseSchedstat("1500000000 250000000 12\n")! == (1.5, 0.25))
        #expect(StatsCollector.parseSchedstat("garbage") == nil)
        #expect(StatsCollector.vcpuIndex(threadName: "vcpu12") == 12)
        #expect(StatsCollector.vcpuIndex(threadName: "vcpu") == nil && StatsCollector.vcpuIndex(threadName: "console-in") == nil)
        #expect(StatsCollector.memoryCgroup("12:memory:/a/b\n0::/c\n")! == (true, "/a/b"))
        #expect(StatsCollector.memoryCgroup("5:cpu,memory:/x\n")! == (true, "/x"), "controllers sharing a hierarchy")
        #expect(StatsCollector.memoryCgroup("0::/c\n")! == (false, "/c"))
        #expect(StatsCollector.memoryCgroup(nil) == nil)
        #expect(StatsCollector.memoryLimit("max") == nil && StatsCollector.memoryLimit("9223372036854771712") == nil)
        #expect(StatsCollector.memoryLimit("1073741824") == 1 << 30)
    }
}

/// The VMM's own counters (control protocol 5) joined to what procfs showed.
@Suite struct StatsCollectorVMMCountersTests {
    static let counters = VMMStatistics(
        vcpus: [.init(index: 0, exits: ["io": 100, "mmio": 4]), .init(index: 1, exits: ["io": 2])],
        disks: [.init(readOps: 10, writeOps: 5, flushOps: 1, readBytes: 40960, writeBytes: 2048, errors: 0, serviceNanoseconds: 3_000_000),
                .init(readOps: 1, writeOps: 0, flushOps: 0, readBytes: 512, writeBytes: 0, errors: 1, serviceNanoseconds: 0)],
        nics: [.init(rxFrames: 7, rxBytes: 700, txFrames: 8, txBytes: 800, rxDrops: 1, txDrops: 2)])

    @Test func countersAreAskedOnTheControlSocketAndNamedFromTheDefinition() throws {
        var (collector, process) = try StatsCollectorTests.fakeHost(v1: true)
        let asked = RecordedLines()
        collector.vmmCounters = { socket in asked.append(socket); return Self.counters }
        let s = collector.collect(StatsTarget(name: "web", state: .running, process: process, restarts: 0, guestBytes: 1 << 20,
                                              controlSocket: "/run/rtvisor/vms/web/control.sock", diskIDs: ["root", "1"], nicTaps: ["tap-web"]))
        #expect(asked.all == ["/run/rtvisor/vms/web/control.sock"])
        #expect(s.vcpus == [VCPUStats(index: 0, cpuSeconds: 2.5, stealSeconds: 0.125, exits: ["io": 100, "mmio": 4]),
                            VCPUStats(index: 1, cpuSeconds: 1, stealSeconds: 0, exits: ["io": 2])])
        #expect(s.disks == [DiskStats(id: "root", readOps: 10, writeOps: 5, flushOps: 1, readBytes: 40960, writeBytes: 2048, errors: 0, serviceSeconds: 0.003),
                            DiskStats(id: "1", readOps: 1, writeOps: 0, flushOps: 0, readBytes: 512, writeBytes: 0, errors: 1, serviceSeconds: 0)])
        #expect(s.nics == [NICStats(id: "0", tap: "tap-web", rxFrames: 7, rxBytes: 700, txFrames: 8, txBytes: 800, rxDrops: 1, txDrops: 2,
                                    tapDrops: 3)], "the tap's own drops from sysfs")
    }

    /// A version-4 VMM (re-adopted after a daemon upgrade) or one that does not answer in time:
    /// the rest of its statistics, without counters (absent, not zero).
    @Test func aVMMWithoutCountersLeavesThemAbsent() throws {
        var (collector, process) = try StatsCollectorTests.fakeHost(v1: true)
        collector.vmmCounters = { _ in nil }
        let s = collector.collect(StatsTarget(name: "web", state: .running, process: process, restarts: 0, guestBytes: 1 << 20,
                                              controlSocket: "/x/control.sock", diskIDs: ["0"], nicTaps: ["t"]))
        #expect(s.disks.isEmpty && s.nics.isEmpty && s.vcpus.allSatisfy { $0.exits.isEmpty } && s.vcpus.count == 2)
        #expect(s.memory?.residentBytes != nil)
    }

    /// No control socket (no VMM, or one frozen by SIGSTOP): nobody is asked.
    @Test func aFrozenVMMIsNotAsked() throws {
        var (collector, process) = try StatsCollectorTests.fakeHost(v1: true)
        let asked = RecordedLines()
        collector.vmmCounters = { socket in asked.append(socket); return Self.counters }
        _ = collector.collect(StatsTarget(name: "web", state: .paused, process: process, restarts: 0, guestBytes: 1 << 20))
        #expect(asked.all.isEmpty)
    }

    /// A real VMM that does not answer: the collection gives up after the timeout, not later.
    @Test func aSilentVMMCostsOnlyTheTimeout() throws {
        let dir = try makeTemporaryDirectory("rtvisor-stats-silent")
        let socket = dir + "/control.sock"
        // Listens but never accepts: hello waits in the backlog.
        let fd = cdaemon_listen_unix(socket, 4, 0o600)
        #expect(fd >= 0)
        defer { close(fd) }
        let started = ContinuousClock.now
        #expect(StatsCollector.askVMM(socket) == nil)
        let took = ContinuousClock.now - started
        #expect(took < .seconds(StatsCollector.vmmTimeoutSeconds + 2), "gave up after \(took)")
    }
}

/// rtvisord's end of the control socket against a VMM of control protocol 4 (one started by
/// the previous release that a new rtvisord re-adopted): hello agrees on 4 and the daemon does
/// not send a request that version lacks; the statistics just have no counters.
@Suite struct StatsFromAnOlderVMMTests {
    /// Serves `connections` connections one after the other like a version-4 VMM: hello, then a
    /// refusal for anything else; returns the requests it received other than hello.
    static func version4VMM(_ socket: String, connections: Int) throws -> Task<[VMMControl.Request], Never> {
        let listener = cdaemon_listen_unix(socket, 4, 0o600)
        guard listener >= 0 else { throw Errno(rawValue: errno) }
        return Task.detached {
            defer { close(listener) }
            var others: [VMMControl.Request] = []
            for _ in 0..<connections {
                let fd = cdaemon_accept(listener)
                guard fd >= 0 else { break }
                _ = fcntl(fd, F_SETFL, 0)
                let connection = VMMControlConnection(socket: FileDescriptor(rawValue: fd))
                while let frame = try? connection.receiveFrame(), let (id, request) = try? VMMControl.request(from: frame.body) {
                    if case let .hello(low, high) = request {
                        let v = VMMControl.negotiate(1...4, low...high)
                        try? connection.reply(v.map { .hello(version: $0, vmmVersion: "0.4.0") } ?? .refused("no common version"), to: id)
                    } else {
                        others.append(request)
                        try? connection.reply(.refused("\(request) needs a newer control protocol"), to: id)
                    }
                }
            }
            return others
        }
    }

    @Test func aVersion4VMMIsSpokenToAndNotAskedForCounters() async throws {
        let dir = try makeTemporaryDirectory("rtvisor-stats-v4")
        let socket = dir + "/control.sock"
        let vmm = try Self.version4VMM(socket, connections: 2)
        func ask() throws -> (version: Int, counters: VMMStatistics?) {
            let client = try VMMControlClient.connect(socket, timeoutSeconds: 5)
            return (client.version, try client.statistics())
        }
        let answer = try ask()
        #expect(answer.version == 4 && answer.counters == nil)
        // The collector's own question: no counters, no error, and at once (not by a timeout).
        let started = ContinuousClock.now
        #expect(StatsCollector.askVMM(socket) == nil)
        #expect(ContinuousClock.now - started < .milliseconds(900))
        #expect(await vmm.value.isEmpty, "nothing but hello reached the old VMM")
    }
}
