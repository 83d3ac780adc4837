import APIModels
import Foundation
import Posix
import Realtime
import Testing

/// Real-time partitions on this host (issue 5): CPU 1 (the last CPU) is the RT partition, the rest
/// housekeeping. Serialized: every test takes the same CPU and changes host-wide state (cpusets,
/// IRQ affinity), which each must put back.
/// This host's real-time capabilities, for the suite's enabling condition.
enum RealtimeHost {
    static let online = HostCPUs().online
    static let hierarchy = CpusetHierarchy.detect()
    static var enabled: Bool { Env.kvmAvailable && getuid() == 0 && online.count >= 2 && hierarchy != nil }
    static var skipReason: Comment {
        if !Env.kvmAvailable { return Env.noKVMReason }
        if getuid() != 0 { return "real-time partitions need root (cpusets, SCHED_FIFO, IRQ affinity): skipping" }
        if online.count < 2 { return "real-time partitions need at least 2 online CPUs (one stays housekeeping): skipping" }
        return "no cpuset controller mounted (cgroup v1 cpuset or cgroup v2): skipping"
    }
}

@Suite(.enabled(if: RealtimeHost.enabled, RealtimeHost.skipReason), .serialized)
struct RealtimePartitionTests {
    static var online: [Int] { RealtimeHost.online }
    static var hierarchy: CpusetHierarchy? { RealtimeHost.hierarchy }
    static var rtCPU: Int { online.last! }
    static var v1Root: String? { if case let .v1(root)? = hierarchy { return root }; return nil }

    struct HostSnapshot: Equatable {
        var irqs: [Int: [Int]]
        var defaultAffinity: String?
        var workqueueMask: String?
        var cpusetDirs: [String]
        static func take() -> HostSnapshot {
            var irqs: [Int: [Int]] = [:]
            for i in IRQAffinity().all() { irqs[i.irq] = i.affinity }
            let dirs = RealtimePartitionTests.v1Root.map { HostFiles.list($0).filter { $0.hasPrefix("rtvisor-") } } ?? []
            return HostSnapshot(irqs: irqs, defaultAffinity: HostFiles.line("/proc/irq/default_smp_affinity"),
                                workqueueMask: HostFiles.line("/sys/devices/virtual/workqueue/cpumask"), cpusetDirs: dirs)
        }
        /// The same, over the IRQs present in both (devices may come and go meanwhile).
        func matches(_ other: HostSnapshot) -> Bool {
            let common = Set(irqs.keys).intersection(other.irqs.keys)
            return common.allSatisfy { irqs[$0] == other.irqs[$0] } && defaultAffinity == other.defaultAffinity
                && workqueueMask == other.workqueueMask && cpusetDirs == other.cpusetDirs
        }
    }

    /// A running rtvisor-vmm whose console goes to a file.
    final class RunningVMM {
        let process = Process()
        let console: String
        /// `environment` is added to this process's (test hooks: `RTVISOR_TEST_STOP_AT`).
        init(config: String, dir: URL, arguments: [String] = [], environment: [String: String] = [:]) throws {
            console = dir.appendingPathComponent("console.txt").path
            FileManager.default.createFile(atPath: console, contents: nil)
            process.executableURL = URL(fileURLWithPath: Env.vmmBinary)
            process.arguments = ["--config", config, "--no-console-input"] + arguments
            if !environment.isEmpty { process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
            let out = FileHandle(forWritingAtPath: console)!
            process.standardOutput = out
            process.standardError = out
            process.standardInput = FileHandle.nullDevice
            try process.run()
        }
        var output: String { (try? String(contentsOfFile: console, encoding: .utf8)) ?? "" }
        func waitFor(_ text: String, seconds: Double) -> Bool {
            let end = Date().addingTimeInterval(seconds)
            while Date() < end && process.isRunning { if output.contains(text) { return true }; usleep(50_000) }
            return output.contains(text)
        }
        func waitExit(seconds: Double) -> Bool {
            let end = Date().addingTimeInterval(seconds)
            while process.isRunning && Date() < end { usleep(50_000) }
            if process.isRunning { kill(process.processIdentifier, SIGKILL); process.waitUntilExit(); return false }
            process.waitUntilExit()
            return true
        }
        var threads: [(tid: Int32, name: String)] {
            ThreadScheduling.threads(of: process.processIdentifier).map { ($0, HostFiles.line("/proc/\(process.processIdentifier)/task/\($0)/comm") ?? "") }
        }
    }

    static func definition(_ name: String, priority: Int = 42, probe: Int = 0) throws -> String {
        try VMM.definition(name: name, kernel: try Env.inmate("idle"), memoryMiB: 32, cmdline: "idle.heartbeat=0",
                           extra: "\"realtime\": {\"cpus\": [\(rtCPU)], \"priority\": \(priority), \"latency_probe_us\": \(probe)}")
    }

    static func statusField(_ pid: Int32, _ field: String) -> String? {
        for line in (HostFiles.read("/proc/\(pid)/status") ?? "").split(separator: "\n") where line.hasPrefix(field + ":") {
            return String(line.dropFirst(field.count + 1)).trimmingCharacters(in: .whitespaces)
        }
        return nil
    }

    @Test func vcpuThreadsOwnTheirCPUAndTheHostIsRestoredAfterStop() throws {
        let before = HostSnapshot.take()
        let dir = try VMM.tempDir()
        let latencyFile = dir.appendingPathComponent("latency.json").path
        let vm = try RunningVMM(config: try VMM.writeDefinition(try Self.definition("rta", probe: 1000), in: dir), dir: dir,
                                arguments: ["--latency-file", latencyFile])
        defer { if vm.process.isRunning { kill(vm.process.processIdentifier, SIGKILL) } }
        try #require(vm.waitFor("IDLE_READY", seconds: 20), "guest did not start:\n\(vm.output)")
        let pid = vm.process.processIdentifier

        // vCPU thread: pinned to the RT CPU, SCHED_FIFO 42, in the VM's cpuset.
        let vcpus = vm.threads.filter { $0.name.hasPrefix("vcpu") }
        #expect(vcpus.count == 1)
        for t in vcpus {
            #expect(ThreadScheduling.affinity(tid: t.tid) == [Self.rtCPU])
            let sched = ThreadScheduling.scheduler(tid: t.tid)
            #expect(sched?.policy == 1 && sched?.priority == 42, "policy/priority \(String(describing: sched))")
            // /proc/PID/task/TID/stat field 40 (policy) and 18 (priority: -1 - rt_priority) agree.
            let stat = HostFiles.line("/proc/\(pid)/task/\(t.tid)/stat") ?? ""
            let fields = stat[stat.range(of: ") ")!.upperBound...].split(separator: " ")
            #expect(fields[38] == "1" && fields[15] == "-43", "stat policy \(fields[38]) priority \(fields[15])")
            if let root = Self.v1Root {
                let tasks = HostFiles.read(root + "/rtvisor-rt-rta/tasks") ?? ""
                #expect(tasks.split(separator: "\n").contains(Substring(String(t.tid))), "vCPU thread not in the RT cpuset: \(tasks)")
            }
        }
        // Everything else of the VMM stays on housekeeping CPUs (KVM's own per-VM worker threads,
        // kvm-*, are kernel threads forked from the vCPU thread and inherit its placement).
        for t in vm.threads where !t.name.hasPrefix("vcpu") && !t.name.hasPrefix("kvm") && t.name != "rt-probe" {
            #expect(ThreadScheduling.affinity(tid: t.tid)?.contains(Self.rtCPU) == false, "thread \(t.tid) \(t.name) may run on the RT CPU")
        }
        // Guest RAM (32 MiB) and the VMM are locked.
        let locked = Int((Self.statusField(pid, "VmLck") ?? "0 kB").split(separator: " ")[0]) ?? 0
        #expect(locked >= 32 * 1024, "VmLck \(locked) kB")
        // The host's own tasks (this test process among them) are shielded from the RT CPU.
        if Self.v1Root != nil {
            #expect(ThreadScheduling.affinity()?.contains(Self.rtCPU) == false, "the test process may still run on the RT CPU")
        }
        // Movable IRQs left the RT CPU.
        let state = try #require(PartitionState.load(vm: "rta"))
        let unmovable = Set(state.irqs.unmovable.compactMap { Int($0.split(separator: ":")[0]) })
        for i in IRQAffinity().all() where before.irqs[i.irq]?.contains(Self.rtCPU) == true && !unmovable.contains(i.irq) {
            #expect(!i.affinity.contains(Self.rtCPU), "IRQ \(i.irq) still allows the RT CPU: \(i.affinity)")
        }
        #expect(vm.output.contains("real-time check for VM rta"))
        if let mask = HostFiles.line("/sys/devices/virtual/workqueue/cpumask") {
            #expect(CPUList.parseHexMask(mask)?.contains(Self.rtCPU) == false, "unbound workqueues may run on the RT CPU: \(mask)")
        }

        // The wake-up latency probe: one priority above the vCPU, on its CPU, in its partition,
        // publishing an HDR histogram once a second.
        let probe = try #require(vm.threads.first { $0.name == "rt-probe" })
        #expect(ThreadScheduling.affinity(tid: probe.tid) == [Self.rtCPU])
        #expect(ThreadScheduling.scheduler(tid: probe.tid).map { [$0.policy, $0.priority] } == [1, 43])
        try #require(DaemonProcessTests.waitFor(5, "the latency file", { FileManager.default.fileExists(atPath: latencyFile) }))
        usleep(1_200_000)
        let snap = try JSONDecoder().decode(LatencySnapshot.self, from: Data(contentsOf: URL(fileURLWithPath: latencyFile)))
        #expect(snap.name == "rta" && snap.cpu == Self.rtCPU && snap.priority == 43 && snap.periodMicroseconds == 1000)
        #expect(snap.samples >= 500, "\(snap.samples) samples after 2 s at 1 kHz")
        #expect(snap.minNanoseconds <= snap.p99Nanoseconds && snap.p99Nanoseconds <= snap.maxNanoseconds)
        #expect(snap.buckets.reduce(0) { $0 + $1[1] } == snap.samples)

        // A second VM asking for the same CPU is refused, naming both VMs; the first is undisturbed.
        let second = try VMM.run(config: try VMM.writeDefinition(try Self.definition("rtb"), name: "rtb.json", in: dir), timeout: 20)
        #expect(second.status != 0)
        #expect(second.stderr.contains("VM rtb: real-time CPU \(Self.rtCPU) already given to VM rta"), "stderr: \(second.stderr)")
        #expect(vm.process.isRunning)

        kill(pid, SIGUSR1) // Ctrl-Alt-Del: the idle inmate powers off
        #expect(vm.waitExit(seconds: 20))
        #expect(vm.process.terminationStatus == 0, "\(vm.output.suffix(2000))")
        #expect(vm.output.contains("real-time partition of rta released"))
        #expect(vm.output.contains("wake-up latency on CPU \(Self.rtCPU) (FIFO 43, every 1000 µs)"))
        let after = HostSnapshot.take()
        #expect(after.matches(before), "host not restored:\nbefore \(before)\nafter  \(after)")
        #expect(PartitionState.load(vm: "rta") == nil)
        #expect(ThreadScheduling.affinity() == Self.online || Self.v1Root == nil)
    }

    /// Without the jail (`--no-jail`) a killed VMM leaves its partition for rtvisord's cleanup.
    @Test func aKilledVMMsPartitionIsUndoneByTheDaemonsCleanup() throws {
        let before = HostSnapshot.take()
        let dir = try VMM.tempDir()
        let vm = try RunningVMM(config: try VMM.writeDefinition(try Self.definition("rtk"), in: dir), dir: dir, arguments: ["--no-jail"])
        defer { if vm.process.isRunning { kill(vm.process.processIdentifier, SIGKILL) } }
        try #require(vm.waitFor("IDLE_READY", seconds: 20), "guest did not start:\n\(vm.output)")
        kill(vm.process.processIdentifier, SIGKILL)
        vm.process.waitUntilExit()
        // Left behind: the state file and (v1) the cpusets.
        #expect(PartitionState.load(vm: "rtk") != nil)
        if let root = Self.v1Root { #expect(HostFiles.isDirectory(root + "/rtvisor-rt-rtk")) }
        let done = releaseRealtimePartition(vm: "rtk")
        #expect(done != nil)
        let after = HostSnapshot.take()
        #expect(after.matches(before), "host not restored:\nbefore \(before)\nafter  \(after)")
        #expect(releaseRealtimePartition(vm: "rtk") == nil, "a second cleanup found something to do")
    }

    /// A jailed VMM (the default as root) has a privileged janitor process: killed with SIGKILL,
    /// its partition is undone by the janitor without anyone else's help.
    @Test func aKilledJailedVMMsPartitionIsUndoneByItsJanitor() throws {
        let before = HostSnapshot.take()
        let dir = try VMM.tempDir()
        let vm = try RunningVMM(config: try VMM.writeDefinition(try Self.definition("rtj"), in: dir), dir: dir)
        defer { if vm.process.isRunning { kill(vm.process.processIdentifier, SIGKILL) } }
        try #require(vm.waitFor("IDLE_READY", seconds: 20), "guest did not start:\n\(vm.output)")
        #expect(vm.output.contains("jail: uid/gid"))
        kill(vm.process.processIdentifier, SIGKILL)
        vm.process.waitUntilExit()
        let end = Date().addingTimeInterval(10)
        while Date() < end && (PartitionState.load(vm: "rtj") != nil || !HostSnapshot.take().matches(before)) { usleep(100_000) }
        #expect(PartitionState.load(vm: "rtj") == nil)
        #expect(HostSnapshot.take().matches(before), "host not restored by the janitor")
        #expect(releaseRealtimePartition(vm: "rtj") == nil, "the janitor left something to undo")
    }

    @Test func daemonAdmitsOneRealtimeVMPerCPUAndKeepsItselfOffIt() throws {
        let before = HostSnapshot.take()
        let dir = try DaemonProcessTests.shortTempDir()
        let vms = dir + "/vms"
        try FileManager.default.createDirectory(atPath: vms, withIntermediateDirectories: true)
        for name in ["rtx", "rty"] {
            let json = try VMM.definition(name: name, kernel: try Env.inmate("idle"), memoryMiB: 32, cmdline: "idle.heartbeat=0",
                                          extra: "\"realtime\": {\"cpus\": [\(Self.rtCPU)], \"latency_probe_us\": 2000}, \"autostart\": true, \"stop_timeout_s\": 5")
            try json.write(toFile: "\(vms)/\(name).json", atomically: true, encoding: .utf8)
        }
        try VMM.definition(name: "plain", kernel: try Env.inmate("idle"), memoryMiB: 16, cmdline: "idle.heartbeat=0", extra: "\"autostart\": true, \"stop_timeout_s\": 5")
            .write(toFile: vms + "/plain.json", atomically: true, encoding: .utf8)
        let daemon = Process()
        daemon.executableURL = URL(fileURLWithPath: DaemonProcessTests.binary("rtvisord"))
        daemon.arguments = ["--definitions", vms, "--run-directory", dir + "/run", "--vmm", Env.vmmBinary]
        daemon.standardError = FileHandle.nullDevice
        daemon.standardOutput = FileHandle.nullDevice
        try daemon.run()
        defer { if daemon.isRunning { kill(daemon.processIdentifier, SIGKILL) } }
        let ctl = DaemonProcessTests.binary("rtvisorctl")
        let env = ["RTVISOR_API_SOCKET": dir + "/run/api.sock"]
        func vm(_ n: String) -> [String: Any]? { DaemonProcessTests.listedVM(n, env: env) }
        guard DaemonProcessTests.waitFor(20, "rtx and plain running, rty failed", {
            vm("rtx")?["state"] as? String == "running" && vm("plain")?["state"] as? String == "running" && vm("rty")?["state"] as? String == "failed"
        }) else { return }
        let reason = ((vm("rty")?["last_exit"] as? [String: Any])?["reason"] as? String) ?? ""
        #expect(reason == "VM rty: real-time CPU \(Self.rtCPU) already given to VM rtx", "rty: \(reason)")
        // The daemon and the ordinary VM's VMM stay off the RT CPU.
        let plainPID = Int32((vm("plain")?["pid"] as? Int) ?? 0)
        for pid in [daemon.processIdentifier, plainPID] {
            for tid in ThreadScheduling.threads(of: pid) {
                #expect(ThreadScheduling.affinity(tid: tid)?.contains(Self.rtCPU) == false, "PID \(pid) thread \(tid) may run on the RT CPU")
            }
        }
        let (checkStatus, check) = DaemonProcessTests.run(ctl, ["rt-check", "rtx"], env: env)
        #expect(checkStatus == 0)
        #expect(check.contains("real-time check for VM rtx") && check.contains("CPU \(Self.rtCPU): online"), "\(check)")
        let (_, all) = DaemonProcessTests.run(ctl, ["rt-check", "--json"], env: env)
        #expect(all.contains("\"name\":\"rtx\"") && all.contains("\"name\":\"rty\""), "\(all)")
        guard DaemonProcessTests.waitFor(10, "rtvisorctl latency rtx", { DaemonProcessTests.run(ctl, ["latency", "rtx"], env: env).0 == 0 }) else { return }
        let (_, latency) = DaemonProcessTests.run(ctl, ["latency", "rtx"], env: env)
        #expect(latency.contains("VM rtx: CPU \(Self.rtCPU), SCHED_FIFO 51, every 2000 µs") && latency.contains("P99.99 µs"), "\(latency)")
        // Its statistics carry the partition and the probe's snapshot; its RAM is locked.
        let (statsStatus, statsJSON) = DaemonProcessTests.run(ctl, ["stats", "rtx", "--json"], env: env)
        let stats = try? JSONDecoder().decode(VMStats.self, from: Data(statsJSON.utf8))
        #expect(statsStatus == 0 && stats?.realtime?.cpus == [Self.rtCPU] && stats?.realtime?.priority == 50
                && (stats?.realtime?.latency?.samples ?? 0) > 0, "\(statsJSON)")
        #expect((stats?.memory?.lockedBytes ?? 0) >= 32 << 20, "\(statsJSON)")
        let (plainStatus, plainCheck) = DaemonProcessTests.run(ctl, ["rt-check", "plain"], env: env)
        #expect(plainStatus != 0 && plainCheck.contains("VM plain has no realtime block"))
        // SIGINT stops the guests (SIGTERM would leave them running for the next rtvisord).
        kill(daemon.processIdentifier, SIGINT)
        let end = Date().addingTimeInterval(30)
        func ended() -> Bool { !daemon.isRunning || [nil, "Z", "X"].contains(ProcessIdentity.stateLetter(of: daemon.processIdentifier)) }
        while !ended() && Date() < end { usleep(50_000) }
        #expect(ended(), "rtvisord did not exit after SIGINT")
        let after = HostSnapshot.take()
        #expect(after.matches(before), "host not restored:\nbefore \(before)\nafter  \(after)")
    }
}
