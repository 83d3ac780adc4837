import Daemon
import Foundation
import Posix
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// A fake cgroup v2 tree: the files the kernel would create, as plain files.
private func cgroupTree(_ files: [String: String]) throws -> String {
    let root = try makeTemporaryDirectory("rtvisor-cgv2")
    for (path, content) in files { writeFile(root + "/" + path, content) }
    return root
}

@Suite struct CgroupPlacementTests {
    let unit = "system.slice/rtvisord.service"

    @Test func inTheSupervisorLeafTheUnitCgroupHoldsTheVMsAndGetsTheControllers() throws {
        let root = try cgroupTree(["\(unit)/cgroup.procs": "", "\(unit)/cgroup.controllers": "cpuset cpu io memory pids\n",
                                   "\(unit)/cgroup.subtree_control": "", "\(unit)/supervisor/cgroup.procs": ""])
        let p = CgroupPlacement(procSelfCgroup: "0::/\(unit)/supervisor\n", mountPoint: root)
        #expect(p.base == root + "/" + unit)
        #expect(p.inSupervisorLeaf)
        #expect(p.enableControllers() == "cgroup v2: enabled memory, pids, cpu for VM cgroups in \(root)/\(unit)")
        #expect(HostFiles.read(root + "/\(unit)/cgroup.subtree_control") == "+memory +pids +cpu")
    }

    @Test func eachVMsCgroupGetsItsMemoryTaskAndCPULimitsBeforeItsVMMStarts() throws {
        let vm = "\(unit)/vm-web"
        let root = try cgroupTree(["\(unit)/cgroup.procs": "", "\(unit)/supervisor/cgroup.procs": "",
                                   "\(vm)/memory.max": "max", "\(vm)/pids.max": "max", "\(vm)/cpu.weight": "100"])
        let p = CgroupPlacement(procSelfCgroup: "0::/\(unit)/supervisor\n", mountPoint: root)
        let placed = p.prepare(vm: "web", limits: .init(memoryBytes: 1 << 30, tasks: 40, cpuWeight: 250))
        #expect(placed?.directory == root + "/" + vm)
        #expect(placed?.notes == [])
        #expect(HostFiles.read(root + "/\(vm)/memory.max") == "1073741824")
        #expect(HostFiles.read(root + "/\(vm)/pids.max") == "40")
        #expect(HostFiles.read(root + "/\(vm)/cpu.weight") == "250")
    }

    @Test func aControllerTheUnitLacksIsReportedNotFatal() throws {
        let vm = "\(unit)/vm-web"
        let root = try cgroupTree(["\(unit)/cgroup.procs": "", "\(unit)/cgroup.controllers": "cpu pids\n",
                                   "\(unit)/cgroup.subtree_control": "", "\(vm)/pids.max": "max"])
        let p = CgroupPlacement(procSelfCgroup: "0::/\(unit)/supervisor\n", mountPoint: root)
        #expect(p.enableControllers() == "cgroup v2: enabled pids, cpu for VM cgroups in \(root)/\(unit); not available to the unit: memory")
        let placed = p.prepare(vm: "web", limits: .init(memoryBytes: 1 << 30, tasks: 40))
        #expect(placed?.notes == ["memory.max: controller not enabled for \(root)/\(vm)"])
        #expect(HostFiles.read(root + "/\(vm)/pids.max") == "40")
    }

    @Test func inTheUnitCgroupItselfTheControllersStayOffSoARestartCanPlaceTheNextDaemon() throws {
        let root = try cgroupTree(["\(unit)/cgroup.procs": "", "\(unit)/cgroup.controllers": "cpu memory pids\n",
                                   "\(unit)/cgroup.subtree_control": ""])
        let p = CgroupPlacement(procSelfCgroup: "0::/\(unit)\n", mountPoint: root)
        #expect(p.base == root + "/" + unit)
        #expect(!p.inSupervisorLeaf)
        #expect(p.enableControllers().contains("without DelegateSubgroup="))
        #expect(HostFiles.read(root + "/\(unit)/cgroup.subtree_control") == "")
        #expect(p.prepare(vm: "web")?.directory == root + "/\(unit)/vm-web")
    }

    @Test func endedVMsCgroupsAreRemovedInBothHierarchies() throws {
        let root = try cgroupTree(["\(unit)/cgroup.procs": ""])
        for dir in ["\(unit)/vm-web", "memory/rtvisor/web", "pids/rtvisor/web", "pids/rtvisor/other"] { makeDirectories(root + "/" + dir) }
        CgroupPlacement(procSelfCgroup: "0::/\(unit)\n", mountPoint: root).remove(vm: "web")
        #expect(!HostFiles.exists(root + "/\(unit)/vm-web"))
        #expect(!HostFiles.exists(root + "/memory/rtvisor/web"))
        #expect(!HostFiles.exists(root + "/pids/rtvisor/web"))
        #expect(HostFiles.exists(root + "/pids/rtvisor/other"))
    }

    @Test func withoutAWritableCgroupVMsStayInTheDaemons() {
        let p = CgroupPlacement(procSelfCgroup: "0::/no/such/group\n", mountPoint: "/nonexistent")
        #expect(p.base == nil)
        #expect(p.prepare(vm: "x") == nil)
    }
}

@Suite struct VMMSpawnTests {
    /// Runs `/bin/sh -c 'echo "$@" > out' sh ARGS…` through spawnVMM and returns what it wrote.
    func spawnRecordingArguments(cgroup: String?) throws -> (joined: Bool, written: String) {
        let dir = try makeTemporaryDirectory("rtvisor-spawn")
        let out = dir + "/args"
        var asked: Bool?
        let pid = try Processes.spawnVMM(executable: "/bin/sh", environment: [], cgroup: cgroup) { joinItself in
            asked = joinItself
            return ["-c", "echo \"$@\" > \(out)", "sh", joinItself ? "--cgroup" : "--no-cgroup"]
        }
        var status: Int32 = 0
        _ = try retryInterrupted { waitpid(pid, &status, 0) }
        return (asked ?? false, HostFiles.read(out) ?? "")
    }

    @Test func withoutCloneIntoTheCgroupTheVMMIsAskedToJoinItItself() throws {
        // A plain directory is no cgroup: clone3 refuses it, so the VMM must join by itself.
        let notACgroup = try makeTemporaryDirectory("rtvisor-not-cgroup")
        let r = try spawnRecordingArguments(cgroup: notACgroup)
        #expect(r.joined)
        #expect(r.written == "--cgroup\n")
        #expect(try spawnRecordingArguments(cgroup: nil).written == "--no-cgroup\n")
    }

    @Test func aMissingExecutableIsAnErrorOnBothPaths() throws {
        let notACgroup = try makeTemporaryDirectory("rtvisor-not-cgroup")
        for cgroup in [notACgroup, nil] {
            #expect(throws: Processes.SpawnError.self) {
                _ = try Processes.spawnVMM(executable: "/nonexistent/rtvisor-vmm", environment: [], cgroup: cgroup) { _ in [] }
            }
        }
    }

    /// The real thing, where this host lets a test make a cgroup v2 directory: the child starts
    /// in it and is not told to join.
    @Test func theVMMStartsInsideItsCgroupV2() throws {
        guard geteuid() == 0 else { print("SKIP theVMMStartsInsideItsCgroupV2: needs root to make a cgroup"); return }
        let mount = try makeTemporaryDirectory("rtvisor-cg2mnt")
        var v2 = "/sys/fs/cgroup"
        if (HostFiles.read("/proc/self/cgroup") ?? "").split(separator: "\n") != ["0::/"] || !HostFiles.exists(v2 + "/cgroup.subtree_control") {
            // A v1 or hybrid host: a cgroup2 mount of its own (the v2 hierarchy exists, unused).
            guard Glibc.mount("none", mount, "cgroup2", 0, nil) == 0 else {
                print("SKIP theVMMStartsInsideItsCgroupV2: cannot mount cgroup2 (\(errnoMessage(errno)))"); return
            }
            v2 = mount
        }
        defer { if v2 == mount { umount2(mount, Int32(MNT_DETACH)) } }
        let group = v2 + "/rtvisor-spawn-test-\(getpid())"
        guard mkdir(group, 0o755) == 0 else { print("SKIP theVMMStartsInsideItsCgroupV2: cannot create \(group) (\(errnoMessage(errno)))"); return }
        defer { rmdir(group) }
        let dir = try makeTemporaryDirectory("rtvisor-spawn")
        var asked: Bool?
        let pid = try Processes.spawnVMM(executable: "/bin/sh", environment: [], cgroup: group) { joinItself in
            asked = joinItself
            return ["-c", "cat /proc/self/cgroup > \(dir)/cgroup"]
        }
        var status: Int32 = 0
        _ = try retryInterrupted { waitpid(pid, &status, 0) }
        #expect(asked == false)
        #expect((HostFiles.read(dir + "/cgroup") ?? "").contains("0::/rtvisor-spawn-test-\(getpid())"))
    }
}
