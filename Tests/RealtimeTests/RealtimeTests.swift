import Posix
import Testing
@testable import Realtime
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// A scratch directory shaped like the parts of /sys, /proc or a cgroup tree a test needs.
final class FakeTree {
    let root: String
    init() {
        root = try! makeTemporaryDirectory("rtvisor-rt-test")
    }
    func file(_ rel: String, _ text: String) {
        let path = root + "/" + rel
        makeDirectories(String(path[..<path.lastIndex(of: "/")!]))
        try! HostFiles.write(path, text)
    }
    func read(_ rel: String) -> String? { HostFiles.line(root + "/" + rel) }
    /// A host with CPUs 0-3 online and a cgroup v1 cpuset root (under `cpuset/`) holding task 100.
    func cpusetV1Host() {
        file("sys/devices/system/cpu/online", "0-3\n")
        file("cpuset/cpuset.mems", "0\n")
        file("cpuset/cpuset.sched_load_balance", "1\n")
        file("cpuset/tasks", "100\n")
    }
    deinit { _ = system("rm -rf '\(root)'") }
}

@Suite struct CPUListTests {
    @Test func parsesAndFormatsRanges() {
        #expect(CPUList.parse("0-3,8,10-11") == [0, 1, 2, 3, 8, 10, 11])
        #expect(CPUList.parse(" 1\n") == [1])
        #expect(CPUList.parse("") == [])
        #expect(CPUList.format([5, 0, 1, 2, 7, 8]) == "0-2,5,7-8")
        #expect(CPUList.format([Int]()) == "")
    }
    @Test(arguments: ["a", "1-", "-1", "3-1", "1,,2", "1-2-3"])
    func rejectsMalformedLists(_ text: String) { #expect(CPUList.parse(text) == nil) }

    @Test func hexMasksLikeTheKernel() {
        #expect(CPUList.hexMask([0, 1]) == "3")
        #expect(CPUList.hexMask([0]) == "1")
        #expect(CPUList.hexMask([33]) == "2,00000000")
        #expect(CPUList.parseHexMask("2,00000001") == [0, 33])
        #expect(CPUList.parseHexMask("ff") == Array(0...7))
    }
}

@Suite struct IRQAffinityTests {
    func fakeIRQs() -> FakeTree {
        let t = FakeTree()
        t.file("proc/irq/24/smp_affinity_list", "0-1\n")
        t.file("proc/irq/24/effective_affinity_list", "1\n")
        t.file("proc/irq/24/virtio0-config/.keep", "")
        t.file("proc/irq/25/smp_affinity_list", "1\n")
        t.file("proc/irq/26/smp_affinity_list", "0\n")
        t.file("proc/irq/default_smp_affinity", "3\n")
        return t
    }

    @Test func movesIRQsOffRealtimeCPUsAndRestoresThem() {
        let t = fakeIRQs()
        let irq = IRQAffinity(paths: HostPaths(sys: t.root + "/sys", proc: t.root + "/proc"))
        #expect(irq.all().map(\.irq) == [24, 25, 26])
        #expect(irq.all()[0].names == ["virtio0-config"])
        let saved = irq.move(off: [1], housekeeping: [0])
        #expect(t.read("proc/irq/24/smp_affinity_list") == "0")
        // An IRQ that only had the RT CPU goes to the housekeeping CPUs.
        #expect(t.read("proc/irq/25/smp_affinity_list") == "0")
        #expect(t.read("proc/irq/26/smp_affinity_list") == "0")
        #expect(t.read("proc/irq/default_smp_affinity") == "1")
        #expect(saved.irqs == ["24": "0-1", "25": "1"])
        #expect(saved.defaultAffinity == "3")
        irq.restore(saved)
        #expect(t.read("proc/irq/24/smp_affinity_list") == "0-1")
        #expect(t.read("proc/irq/25/smp_affinity_list") == "1")
        #expect(t.read("proc/irq/default_smp_affinity") == "3")
    }

    @Test func restoreKeepsOtherRealtimeCPUsFree() {
        let t = fakeIRQs()
        let irq = IRQAffinity(paths: HostPaths(sys: t.root + "/sys", proc: t.root + "/proc"))
        let saved = irq.move(off: [1], housekeeping: [0])
        // Another real-time VM still holds CPU 1: the IRQ that only had CPU 1 stays on 0.
        irq.restore(saved, keepingOff: [1])
        #expect(t.read("proc/irq/24/smp_affinity_list") == "0")
        #expect(t.read("proc/irq/25/smp_affinity_list") == "1")
    }

    @Test func reportNamesWhatStillTargetsACPU() {
        let t = fakeIRQs()
        t.file("sys/devices/system/cpu/online", "0-1\n")
        t.file("sys/devices/system/cpu/isolated", "1\n")
        t.file("sys/devices/system/cpu/nohz_full", "\n")
        t.file("sys/devices/system/cpu/cpu1/topology/thread_siblings_list", "1,3\n")
        t.file("sys/devices/system/cpu/cpu1/cpufreq/scaling_governor", "powersave\n")
        t.file("proc/cmdline", "quiet isolcpus=1 rcu_nocbs=1\n")
        t.file("proc/sys/kernel/sched_rt_runtime_us", "950000\n")
        let host = HostCPUs(paths: HostPaths(sys: t.root + "/sys", proc: t.root + "/proc"))
        let r = RealtimeReport(vm: "rt0", cpus: [1], host: host, exitsDisabled: true)
        let c = r.cpus[0]
        #expect(c.online && c.isolcpus && !c.nohzFull && c.rcuNocbs)
        #expect(c.smtSiblings == [3])
        #expect(c.governor == "powersave")
        #expect(c.irqs == ["24 (virtio0-config)", "25"])
        #expect(r.warnings.contains { $0.contains("nohz_full") })
        #expect(r.warnings.contains { $0.contains("shares its core with CPU 3") })
        #expect(r.warnings.contains { $0.contains("powersave") })
        #expect(r.warnings.contains { $0.contains("sched_rt_runtime_us=950000") })
        #expect(!r.warnings.contains { $0.contains("isolcpus") })
        #expect(r.lines[1].contains("CPU 1: online isolcpus -nohz_full rcu_nocbs"))
    }
}

@Suite struct CPUMaskFileTests {
    @Test func confinesUnboundWorkqueuesAndRestores() {
        let t = FakeTree()
        t.file("sys/devices/virtual/workqueue/cpumask", "f\n")
        let wq = CPUMaskFile.workqueues(HostPaths(sys: t.root + "/sys", proc: t.root + "/proc"))
        let saved = wq.move(off: [2, 3], housekeeping: [0, 1])
        #expect(saved == "f")
        #expect(t.read("sys/devices/virtual/workqueue/cpumask") == "3")
        #expect(wq.move(off: [2, 3], housekeeping: [0, 1]) == nil, "nothing left to move")
        wq.restore(saved, keepingOff: [3])
        #expect(t.read("sys/devices/virtual/workqueue/cpumask") == "7")
    }
}

@Suite struct CpusetTests {
    @Test func detectsTheHierarchy() {
        let v1 = "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\ncgroup /sys/fs/cgroup/cpuset cgroup rw,nosuid,cpuset 0 0\n"
        #expect(CpusetHierarchy.detect(mounts: v1) == .v1(root: "/sys/fs/cgroup/cpuset"))
        #expect(CpusetHierarchy.detect(mounts: "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n") == .v2(mount: "/sys/fs/cgroup"))
        #expect(CpusetHierarchy.detect(mounts: "proc /proc proc rw 0 0\n") == nil)
        #expect(CpusetV2.ownCgroup(mount: "/sys/fs/cgroup", procSelfCgroup: "0::/system.slice/rtvisord.service/vm-rt0\n")
                == "/sys/fs/cgroup/system.slice/rtvisord.service/vm-rt0")
    }

    func fakeV1() -> (FakeTree, CpusetV1) {
        let t = FakeTree()
        t.cpusetV1Host()
        let v1 = CpusetV1(root: t.root + "/cpuset", lockPath: t.root + "/lock", host: HostCPUs(paths: HostPaths(sys: t.root + "/sys", proc: t.root + "/proc")),
                          stateDirectory: t.root + "/rt")
        return (t, v1)
    }

    @Test func v1ShieldsTheRealtimeCPUs() throws {
        let (t, v1) = fakeV1()
        let p = try v1.acquire(vm: "rt0", cpus: [2, 3])
        try p.attach(tid: 4242)
        #expect(t.read("cpuset/rtvisor-rt-rt0/cpuset.cpus") == "2-3")
        #expect(t.read("cpuset/rtvisor-rt-rt0/cpuset.cpu_exclusive") == "1")
        #expect(t.read("cpuset/rtvisor-rt-rt0/cpuset.mems") == "0")
        #expect(t.read("cpuset/rtvisor-rt-rt0/tasks") == "4242")
        #expect(t.read("cpuset/rtvisor-housekeeping/cpuset.cpus") == "0-1")
        #expect(t.read("cpuset/rtvisor-housekeeping/tasks") == "100")
        #expect(t.read("cpuset/cpuset.sched_load_balance") == "0")
        #expect(v1.reservations().map(\.vm) == ["rt0"])
        // A second real-time VM on a taken CPU is refused, naming both VMs.
        #expect(throws: PartitionError.cpusTaken(vm: "rt1", owner: "rt0", cpus: [3])) { try v1.acquire(vm: "rt1", cpus: [3]) }
        #expect("\(PartitionError.cpusTaken(vm: "rt1", owner: "rt0", cpus: [3]))" == "VM rt1: real-time CPU 3 already given to VM rt0")
        // One more VM on CPU 1 shrinks the housekeeping set; taking CPU 0 too would leave none.
        let q = try v1.acquire(vm: "rt1", cpus: [1])
        try q.attach(tid: 4343)
        #expect(t.read("cpuset/rtvisor-housekeeping/cpuset.cpus") == "0")
        #expect(throws: PartitionError.noHousekeepingCPU(vm: "rt2", cpus: [0])) { try v1.acquire(vm: "rt2", cpus: [0]) }
        #expect(throws: PartitionError.offline(vm: "rt2", cpus: [7])) { try v1.acquire(vm: "rt2", cpus: [7]) }
    }

    @Test func v1ReclaimsAPartitionLeftByADeadVMM() throws {
        let (t, v1) = fakeV1()
        _ = try v1.acquire(vm: "rt0", cpus: [3]) // never attached: no task in it, as after a crash
        #expect(v1.reservations().first?.busy == false)
        // Its holder is gone (this pid with another start time: a reused pid is not the holder).
        t.file("rt/rt0.holder", ProcessIdentity(pid: getpid(), startTime: 1).description)
        #expect(v1.reservations().first?.held == false)
        _ = try v1.acquire(vm: "rt1", cpus: [3])
        #expect(t.read("cpuset/rtvisor-rt-rt1/cpuset.cpus") == "3")
    }

    @Test func v1KeepsAPartitionWhoseVMMRunsButWhoseVCPUsHaveNotJoinedYet() throws {
        let (t, v1) = fakeV1()
        _ = try v1.acquire(vm: "rt0", cpus: [3]) // this process holds it; no vCPU thread in it yet
        #expect(t.read("rt/rt0.holder") == ProcessIdentity.current()?.description)
        #expect(v1.reservations().first?.busy == false)
        #expect(v1.reservations().first?.held == true)
        // A second VMM starting at that moment neither removes it nor gets its CPU.
        #expect(throws: PartitionError.cpusTaken(vm: "rt1", owner: "rt0", cpus: [3])) { try v1.acquire(vm: "rt1", cpus: [3]) }
        #expect(t.read("cpuset/rtvisor-rt-rt0/cpuset.cpus") == "3")
        v1.release(vm: "rt0")
        #expect(t.read("rt/rt0.holder") == nil)
    }

    @Test func v2BuildsAThreadedPartition() throws {
        let t = FakeTree()
        t.file("cg/vm-rt0/cgroup.controllers", "cpuset cpu io memory pids\n")
        let p = try CpusetV2(cgroup: t.root + "/cg/vm-rt0").acquire(vm: "rt0", cpus: [1], housekeeping: [0], pid: 777)
        try p.attach(tid: 778)
        #expect(t.read("cg/vm-rt0/vmm/cgroup.type") == "threaded")
        #expect(t.read("cg/vm-rt0/vcpus/cgroup.type") == "threaded")
        #expect(t.read("cg/vm-rt0/vmm/cgroup.procs") == "777")
        #expect(t.read("cg/vm-rt0/cgroup.subtree_control") == "+cpuset")
        #expect(t.read("cg/vm-rt0/vmm/cpuset.cpus") == "0")
        #expect(t.read("cg/vm-rt0/vcpus/cpuset.cpus") == "1")
        #expect(t.read("cg/vm-rt0/vcpus/cpuset.cpus.partition") == "isolated")
        #expect(t.read("cg/vm-rt0/vcpus/cgroup.threads") == "778")
        #expect(p.summary.contains("partition isolated"))
    }

    @Test func v2WithoutTheCpusetControllerSaysWhy() {
        let t = FakeTree()
        t.file("cg/vm-rt0/cgroup.controllers", "cpu io memory pids\n")
        #expect(throws: PartitionError.self) { try CpusetV2(cgroup: t.root + "/cg/vm-rt0").acquire(vm: "rt0", cpus: [1], housekeeping: [0]) }
    }
}

/// Two real-time VMs on one host, started and stopped in either order: when the last one ends,
/// every IRQ, the default IRQ affinity and the workqueue mask are as they were before the first
/// one started (issue 16: they used to keep the first VM's CPUs excluded forever).
@Suite struct PartitionHandOffTests {
    struct Host {
        let tree = FakeTree()
        var paths: HostPaths { HostPaths(sys: tree.root + "/sys", proc: tree.root + "/proc") }
        var states: String { tree.root + "/rt" }
        init() {
            tree.file("proc/irq/24/smp_affinity_list", "0-3\n")
            tree.file("proc/irq/25/smp_affinity_list", "2\n")
            tree.file("proc/irq/default_smp_affinity", "f\n")
            tree.file("sys/devices/virtual/workqueue/cpumask", "f\n")
        }
        /// What a real-time VMM does at start (RealtimeSetup): move IRQs and workqueues off its CPUs, save.
        func start(_ vm: String, cpus: Set<Int>) {
            let others = Set(PartitionState.all(directory: states).flatMap(\.cpus))
            let housekeeping = [0, 1, 2, 3].filter { !cpus.contains($0) && !others.contains($0) }
            let irqs = IRQAffinity(paths: paths).move(off: cpus, housekeeping: housekeeping)
            let wq = CPUMaskFile.workqueues(paths).move(off: cpus, housekeeping: housekeeping)
            PartitionState(vm: vm, cpus: cpus.sorted(), irqs: irqs, workqueueMask: wq).save(directory: states)
        }
        func stop(_ vm: String) { PartitionState.undo(vm: vm, directory: states, hierarchy: nil, paths: paths) }
        var snapshot: [String?] {
            ["proc/irq/24/smp_affinity_list", "proc/irq/25/smp_affinity_list", "proc/irq/default_smp_affinity",
             "sys/devices/virtual/workqueue/cpumask"].map { tree.read($0) }
        }
    }

    static let original: [String?] = ["0-3", "2", "f", "f"]

    @Test func firstStartedStopsFirst() {
        let host = Host()
        host.start("a", cpus: [1])
        host.start("b", cpus: [2])
        #expect(host.snapshot == ["0,3", "0,3", "9", "9"])
        host.stop("a")
        // b still runs: its CPU stays free, a's CPU is back.
        #expect(host.snapshot == ["0-1,3", "0,3", "b", "b"])
        host.stop("b")
        #expect(host.snapshot == Self.original)
        #expect(PartitionState.all(directory: host.states).isEmpty)
    }

    @Test func lastStartedStopsFirst() {
        let host = Host()
        host.start("a", cpus: [1])
        host.start("b", cpus: [2])
        host.stop("b")
        #expect(host.snapshot == ["0,2-3", "2", "d", "d"])
        host.stop("a")
        #expect(host.snapshot == Self.original)
    }

    @Test func aStopWithoutSavedStateChangesNothing() {
        let host = Host()
        host.start("a", cpus: [1])
        #expect(PartitionState.undo(vm: "never-started", directory: host.states, hierarchy: nil, paths: host.paths) == nil)
        #expect(host.snapshot == ["0,2-3", "2", "d", "d"])
    }
}
