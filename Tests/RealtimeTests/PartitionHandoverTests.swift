import Foundation
import Posix
import Testing
@testable import Realtime
#if canImport(Glibc)
import Glibc
#endif

/// Records every change inside some directories (inotify: a file opened for writing and closed, a
/// write, an entry created or removed). The kernel queues the events as the changes happen, so
/// reading them afterwards tells exactly what was touched, with no timing involved.
final class ChangeWatch {
    let fd: Int32
    var directories: [Int32: String] = [:]
    init(_ paths: [String]) {
        fd = inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC))
        for path in paths {
            let wd = inotify_add_watch(fd, path, UInt32(IN_CLOSE_WRITE | IN_MODIFY | IN_CREATE | IN_DELETE | IN_MOVED_TO | IN_MOVED_FROM))
            if wd >= 0 { directories[wd] = path }
        }
    }
    /// "directory/name" of every change since the watch began (or since the last call).
    func changes() -> [String] {
        var out: [String] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            guard n > 0 else { return out }
            var offset = 0
            while offset < n {
                let (wd, length) = buf.withUnsafeBytes { raw in
                    (raw.loadUnaligned(fromByteOffset: offset, as: Int32.self), Int(raw.loadUnaligned(fromByteOffset: offset + 12, as: UInt32.self)))
                }
                let nameBytes = buf[(offset + 16)..<(offset + 16 + length)].prefix { $0 != 0 }
                out.append((directories[wd] ?? "?") + "/" + String(decoding: nameBytes, as: UTF8.self))
                offset += 16 + length
            }
        }
    }
    deinit { close(fd) }
}

/// A real-time partition handed over across a guest reset (issue 16), on a fake host: CPUs 0-3
/// online, the VM on 2-3, a cgroup v1 cpuset tree, two IRQs, the default IRQ affinity and the
/// workqueue mask.
@Suite struct PartitionHandoverTests {
    struct Host {
        let tree = FakeTree()
        var paths: HostPaths { HostPaths(sys: tree.root + "/sys", proc: tree.root + "/proc") }
        var states: String { tree.root + "/rt" }
        var cpusetRoot: String { tree.root + "/cpuset" }
        var hierarchy: CpusetHierarchy { .v1(root: cpusetRoot) }
        var v1: CpusetV1 { CpusetV1(root: cpusetRoot, lockPath: tree.root + "/cpuset.lock", host: HostCPUs(paths: paths), stateDirectory: states) }
        static let cpus = [2, 3]
        init() {
            tree.cpusetV1Host()
            tree.file("proc/irq/24/smp_affinity_list", "0-3\n")
            tree.file("proc/irq/25/smp_affinity_list", "2\n")
            tree.file("proc/irq/default_smp_affinity", "f\n")
            tree.file("sys/devices/virtual/workqueue/cpumask", "f\n")
        }
        var irqFiles: [String?] {
            ["proc/irq/24/smp_affinity_list", "proc/irq/25/smp_affinity_list", "proc/irq/default_smp_affinity",
             "sys/devices/virtual/workqueue/cpumask"].map { tree.read($0) }
        }

        /// What a VMM does at start when nothing was left for it (RealtimeSetup), then its vCPU
        /// thread joining, then its end after a guest reset: the kernel has moved the host's tasks
        /// to the housekeeping set, the vCPU thread is gone, the partition is handed over.
        func runFirstVMMUntilItsGuestResets() throws {
            let partition = try v1.acquire(vm: "rt0", cpus: Self.cpus)
            try partition.attach(tid: 4242)
            let irqs = IRQAffinity(paths: paths).move(off: Set(Self.cpus), housekeeping: [0, 1])
            let wq = CPUMaskFile.workqueues(paths).move(off: Set(Self.cpus), housekeeping: [0, 1])
            PartitionState(vm: "rt0", cpus: Self.cpus, irqs: irqs, workqueueMask: wq, builtBy: 1000).save(directory: states)
            tree.file("cpuset/tasks", "")
            tree.file("cpuset/rtvisor-rt-rt0/tasks", "")
            #expect(PartitionState.handOver(vm: "rt0", directory: states))
        }

        func claim(cpus: [Int] = Self.cpus, moveIRQs: Bool = true, hierarchy: CpusetHierarchy?) -> PartitionHandover.Claim {
            PartitionHandover.claim(vm: "rt0", cpus: cpus, moveIRQs: moveIRQs, hierarchy: hierarchy, stateDirectory: states, paths: paths,
                                    cpusetLock: tree.root + "/cpuset.lock")
        }
    }

    static let original: [String?] = ["0-3", "2", "f", "f"]
    static let partitioned: [String?] = ["0-1", "0-1", "3", "3"]

    @Test func theNextVMMAdoptsThePartitionWithoutTouchingTheHost() throws {
        let host = Host()
        try host.runFirstVMMUntilItsGuestResets()
        #expect(host.irqFiles == Self.partitioned)
        let watch = ChangeWatch(["cpuset", "cpuset/rtvisor-rt-rt0", "cpuset/rtvisor-housekeeping", "proc/irq", "proc/irq/24", "proc/irq/25",
                                 "sys/devices/virtual/workqueue"].map { host.tree.root + "/" + $0 })

        // What the next VMM does at start (RealtimeSetup with a partition to adopt).
        guard case let .adopted(state) = host.claim(hierarchy: host.hierarchy) else { Issue.record("not adopted"); return }
        let partition = try host.v1.adopt(vm: "rt0", cpus: Host.cpus)
        let moved = IRQAffinity(paths: host.paths).move(off: Set(Host.cpus), housekeeping: [0, 1])
        let wq = CPUMaskFile.workqueues(host.paths).move(off: Set(Host.cpus), housekeeping: [0, 1])

        // Nothing on the host was written, created or removed: no IRQ steered back and forth,
        // no cpuset rebuilt.
        #expect(watch.changes() == [])
        #expect(moved.irqs.isEmpty && wq == nil)
        // The state still holds the values from before the first VMM, and says who built it.
        #expect(state.irqs.irqs == ["24": "0-3", "25": "2"] && state.irqs.defaultAffinity == "f" && state.workqueueMask == "f")
        #expect(state.builtBy == 1000 && state.handovers == 1 && !state.handedOver)
        #expect(PartitionState.load(vm: "rt0", directory: host.states) == state)
        #expect(partition.summary.contains("adopted as it was"))
        // Its vCPU thread joins the same cpuset.
        try partition.attach(tid: 4343)
        #expect(host.tree.read("cpuset/rtvisor-rt-rt0/tasks") == "4343")

        // A second claim finds nothing left to adopt.
        #expect(host.claim(hierarchy: host.hierarchy) == .nothingLeft)
        // When the VM stops for good, the host gets its values from before the first VMM.
        PartitionState.undo(vm: "rt0", directory: host.states, hierarchy: nil, paths: host.paths)
        #expect(host.irqFiles == Self.original)
    }

    @Test func anIRQThatCameMeanwhileIsMovedAndRestoredToo() throws {
        let host = Host()
        try host.runFirstVMMUntilItsGuestResets()
        host.tree.file("proc/irq/26/smp_affinity_list", "3\n")
        guard case let .adopted(state) = host.claim(hierarchy: host.hierarchy) else { Issue.record("not adopted"); return }
        let irqs = state.irqs.adding(IRQAffinity(paths: host.paths).move(off: Set(Host.cpus), housekeeping: [0, 1]))
        #expect(host.tree.read("proc/irq/26/smp_affinity_list") == "0-1")
        #expect(irqs.irqs == ["24": "0-3", "25": "2", "26": "3"] && irqs.defaultAffinity == "f")
    }

    @Test func aHandedOverPartitionStaysReservedWithoutATask() throws {
        let host = Host()
        try host.runFirstVMMUntilItsGuestResets()
        let set = try #require(host.v1.reservations().first { $0.vm == "rt0" })
        #expect(!set.busy && set.handedOver && set.held)
        // Another VM can neither take its CPUs nor reclaim it as a dead VMM's.
        #expect(throws: PartitionError.cpusTaken(vm: "rt1", owner: "rt0", cpus: [3])) { try host.v1.acquire(vm: "rt1", cpus: [3]) }
        _ = try host.v1.acquire(vm: "rt1", cpus: [1])
        #expect(HostFiles.isDirectory(host.cpusetRoot + "/rtvisor-rt-rt0"))
        #expect(host.tree.read("cpuset/rtvisor-housekeeping/cpuset.cpus") == "0")
        // Its CPUs count as held (the shield stays up while it waits, and no IRQ is given them back).
        #expect(host.v1.heldCPUs(excluding: "rt1") == [2, 3])
    }

    @Test func aPartitionThatIsNotTheOneAskedForIsUndone() throws {
        for (cpus, moveIRQs, reason) in [([3], true, "it has CPUs 2-3, the VM asks for 3"),
                                         (Host.cpus, false, "it was built with move_irqs true, the VM asks for false")] {
            let host = Host()
            try host.runFirstVMMUntilItsGuestResets()
            guard case let .replaced(why) = host.claim(cpus: cpus, moveIRQs: moveIRQs, hierarchy: nil) else { Issue.record("not replaced"); continue }
            #expect(why.hasPrefix(reason + "; undone: "), "\(why)")
            #expect(host.irqFiles == Self.original)
            #expect(PartitionState.load(vm: "rt0", directory: host.states) == nil)
        }
    }

    @Test func onlyAHandedOverPartitionIsClaimed() throws {
        let host = Host()
        #expect(host.claim(hierarchy: host.hierarchy) == .nothingLeft)
        // A running VMM's partition (not handed over) is not another VMM's to take.
        _ = try host.v1.acquire(vm: "rt0", cpus: Host.cpus)
        PartitionState(vm: "rt0", cpus: Host.cpus, irqs: IRQAffinity.Saved()).save(directory: host.states)
        #expect(host.claim(hierarchy: host.hierarchy) == .nothingLeft)
        #expect(PartitionState.load(vm: "rt0", directory: host.states)?.handovers == 0)
    }

    @Test func aStateFileWithoutTheHandOverFieldsStillLoads() throws {
        let json = #"{"vm":"rt0","cpus":[1],"irqs":{"irqs":{"24":"0-1"},"defaultAffinity":"3","unmovable":[]},"workqueueMask":"3"}"#
        let state = try JSONDecoder().decode(PartitionState.self, from: Data(json.utf8))
        #expect(state.vm == "rt0" && state.irqs.irqs == ["24": "0-1"] && state.moveIRQs && !state.handedOver && state.handovers == 0)
    }
}
