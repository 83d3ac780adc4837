import Testing
import VMMInterface
@testable import Sandbox
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

@Suite struct ResourceCgroupTests {
    func tree(_ files: [String: String]) -> String {
        let root = try! makeTemporaryDirectory("rtvisor-cg")
        for (path, content) in files { writeFile(root + "/" + path, content) }
        return root
    }

    @Test func v1CreatesTheVMsGroupsWithLimitsAndJoinsThem() {
        let root = tree(["memory/cgroup.procs": "", "memory/memory.limit_in_bytes": "", "pids/cgroup.procs": "",
                         "memory/rtvisor/vm1/memory.limit_in_bytes": "", "memory/rtvisor/vm1/cgroup.procs": "",
                         "pids/rtvisor/vm1/pids.max": "", "pids/rtvisor/vm1/cgroup.procs": ""])
        let done = ResourceCgroup(root: root, procSelfCgroup: nil).apply(vm: "vm1", memoryBytes: 1 << 30, tasks: 40, pid: 4242)
        #expect(done == ["\(root)/memory/rtvisor/vm1 memory.limit_in_bytes=1073741824", "\(root)/pids/rtvisor/vm1 pids.max=40"])
        #expect(ResourceCgroup.read(root + "/memory/rtvisor/vm1/cgroup.procs") == "4242")
        #expect(ResourceCgroup.read(root + "/pids/rtvisor/vm1/pids.max") == "40")
    }

    @Test func v1JoinOfTheOnlyThreadWritesItselfToTasksSkippingTheGlobalLock() {
        let root = tree(["memory/cgroup.procs": "", "memory/memory.limit_in_bytes": "", "pids/cgroup.procs": "",
                         "memory/rtvisor/vm1/tasks": "", "memory/rtvisor/vm1/cgroup.procs": "",
                         "pids/rtvisor/vm1/tasks": "", "pids/rtvisor/vm1/cgroup.procs": ""])
        let single = ResourceCgroup(root: root, procSelfCgroup: nil, threadCount: { 1 })
        _ = single.apply(vm: "vm1", memoryBytes: 1 << 30, tasks: 40)
        #expect(ResourceCgroup.read(root + "/memory/rtvisor/vm1/tasks") == "0")
        #expect(ResourceCgroup.read(root + "/pids/rtvisor/vm1/tasks") == "0")
        #expect(ResourceCgroup.read(root + "/memory/rtvisor/vm1/cgroup.procs") == "")
        // With more threads, "0" in tasks would leave the others behind: the whole process moves.
        let threaded = ResourceCgroup(root: root, procSelfCgroup: nil, threadCount: { 3 })
        _ = threaded.apply(vm: "vm1", memoryBytes: 1 << 30, tasks: 40)
        #expect(ResourceCgroup.read(root + "/memory/rtvisor/vm1/cgroup.procs") == "\(getpid())")
    }

    @Test func v2UsesTheOwnCgroupOnlyWhereControllersAreDelegated() {
        let root = tree(["system.slice/r.service/vm-a/cgroup.controllers": "cpuset pids\n", "system.slice/r.service/vm-a/pids.max": "max"])
        let done = ResourceCgroup(root: root, procSelfCgroup: "0::/system.slice/r.service/vm-a\n").apply(vm: "a", memoryBytes: 1 << 30, tasks: 40)
        #expect(done.count == 2)
        #expect(done[0].hasPrefix("memory: not delegated to \(root)/system.slice/r.service/vm-a"))
        #expect(done[1] == "\(root)/system.slice/r.service/vm-a pids.max=40")
    }

    @Test func limitsScaleWithTheVM() {
        #expect(VMResourceLimits.memoryBytes(guestMiB: 1024) == UInt64(1024 + 256 + 128) << 20)
        #expect(VMResourceLimits.tasks(vcpus: 4, nets: 2) == 39)
    }
}
