import Foundation
import Posix
import Sandbox
import Testing
import VMMInterface

/// The VMM's privilege drop on the real /dev/kvm (docs/sandbox.md): once its guest runs, the
/// VMM has its own uid, no capabilities in any thread, no_new_privs, a private root in which the
/// host's /etc and VMs' images do not exist (its own are open descriptors), and resource limits.
@Suite(.enabled(if: Env.kvmAvailable, Env.noKVMReason), .enabled(if: getuid() == 0, "the jail needs a VMM started as root"))
struct JailTests {
    typealias RunningVMM = RealtimePartitionTests.RunningVMM

    static func field(_ pid: Int32, _ name: String, task: Int32? = nil) -> String? {
        let path = task.map { "/proc/\(pid)/task/\($0)/status" } ?? "/proc/\(pid)/status"
        for line in (HostFiles.read(path) ?? "").split(separator: "\n") where line.hasPrefix(name + ":") {
            return String(line.dropFirst(name.count + 1)).trimmingCharacters(in: .whitespaces)
        }
        return nil
    }

    @Test func theRunningVMMIsUnprivilegedAndSeesOnlyItsOwnFiles() throws {
        let dir = try VMM.tempDir()
        let other = try VMM.tempDir()
        let ownImage = dir.appendingPathComponent("own.img").path
        let otherImage = other.appendingPathComponent("other.img").path
        for path in [ownImage, otherImage] {
            FileManager.default.createFile(atPath: path, contents: Data(count: 1 << 20), attributes: [.posixPermissions: 0o600])
        }
        let status = dir.appendingPathComponent("run/exit-status").path
        try FileManager.default.createDirectory(atPath: dir.appendingPathComponent("run").path, withIntermediateDirectories: true)
        let def = VMM.definition(name: "jailed", kernel: try Env.inmate("idle"), memoryMiB: 32, cmdline: "idle.heartbeat=0",
                                 extra: "\"disks\": [{\"path\": \"\(ownImage)\"}]")
        let vmm = try RunningVMM(config: try VMM.writeDefinition(def, in: dir), dir: dir, arguments: ["--status-file", status])
        defer { if vmm.process.isRunning { kill(vmm.process.processIdentifier, SIGKILL); vmm.process.waitUntilExit() } }
        #expect(vmm.waitFor("jail: uid/gid", seconds: 20), "output: \(vmm.output)")
        let pid = vmm.process.processIdentifier
        let uid = JailPlan.uid(forVM: "jailed")

        // Its own uid and gid, no capabilities, no_new_privs: for the process and every thread.
        #expect(Self.field(pid, "Uid") == "\(uid)\t\(uid)\t\(uid)\t\(uid)")
        #expect(Self.field(pid, "Gid") == "\(uid)\t\(uid)\t\(uid)\t\(uid)")
        #expect(Self.field(pid, "Groups") == "")
        for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            #expect(Self.field(pid, cap) == "0000000000000000", "\(cap)")
        }
        #expect(Self.field(pid, "NoNewPrivs") == "1")
        let threads = vmm.threads
        #expect(threads.count >= 2, "main + vcpu0 at least: \(threads)")
        for t in threads {
            #expect(Self.field(pid, "Uid", task: t.tid)?.hasPrefix("\(uid)\t") == true, "thread \(t.name)")
            #expect(Self.field(pid, "CapEff", task: t.tid) == "0000000000000000", "thread \(t.name)")
        }

        // Its root: a tmpfs with only what it needs. The host's /etc and another VM's image do not
        // exist there, and neither does its own image: like KVM, it is an open descriptor (its
        // path is never looked up again, docs/sandbox.md "Guest files"); its run directory does.
        let root = "/proc/\(pid)/root"
        #expect(!FileManager.default.fileExists(atPath: root + "/etc/passwd"))
        #expect(!FileManager.default.fileExists(atPath: root + "/etc"))
        #expect(!FileManager.default.fileExists(atPath: root + otherImage))
        #expect(!FileManager.default.fileExists(atPath: root + "/dev/kvm"), "KVM is an open fd, not a path")
        #expect(!FileManager.default.fileExists(atPath: root + ownImage), "the image is an open fd, not a path")
        let descriptors = HostFiles.list("/proc/\(pid)/fd").compactMap { try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\($0)") }
        #expect(descriptors.contains(ownImage), "\(descriptors)")
        #expect(FileManager.default.fileExists(atPath: root + "/proc/self"))
        // The host side is untouched: the other image is still root's alone.
        let attrs = try FileManager.default.attributesOfItem(atPath: otherImage)
        #expect((attrs[.ownerAccountID] as? NSNumber)?.intValue == 0)
        #expect((try FileManager.default.attributesOfItem(atPath: status)[.ownerAccountID] as? NSNumber)?.uint32Value == uid,
                "the status file is the VM's, so it can write it at exit")

        // Resource limits.
        let limits = HostFiles.read("/proc/\(pid)/limits") ?? ""
        let nofile = limits.split(separator: "\n").first { $0.hasPrefix("Max open files") }.map(String.init) ?? ""
        let numbers = nofile.split(separator: " ").compactMap { Int($0) }
        #expect(numbers.count == 2 && numbers[0] == numbers[1] && numbers[0] >= 256 && numbers[0] < 2048, "\(nofile)")
        #expect(limits.contains("Max core file size        0"), "\(limits)")

        // Memory and task limits in the VM's own cgroups (cgroup v1 here; v2 needs delegation).
        if FileManager.default.fileExists(atPath: "/sys/fs/cgroup/memory/memory.limit_in_bytes") {
            let cgroups = HostFiles.read("/proc/\(pid)/cgroup") ?? ""
            #expect(cgroups.contains("memory:/rtvisor/jailed"), "\(cgroups)")
            #expect(cgroups.contains("pids:/rtvisor/jailed"), "\(cgroups)")
            #expect(HostFiles.line("/sys/fs/cgroup/memory/rtvisor/jailed/memory.limit_in_bytes") == "\(VMResourceLimits.memoryBytes(guestMiB: 32))")
            #expect(HostFiles.line("/sys/fs/cgroup/pids/rtvisor/jailed/pids.max") == "\(VMResourceLimits.tasks(vcpus: 1, nets: 0))")
        }

        // It still works as a VMM: stop it, and it reports through the status file it owns.
        kill(pid, SIGTERM)
        #expect(vmm.waitExit(seconds: 20))
        let reported = HostFiles.read(status) ?? ""
        #expect(reported.hasPrefix("143 "), "status file: \(reported)")
        // A VMM run without rtvisord leaves its v1 groups (rtvisord removes them): tidy up.
        for controller in ["memory", "pids"] { rmdir("/sys/fs/cgroup/\(controller)/rtvisor/jailed") }
    }

    @Test func uidsAreStablePerNameAndInTheirRange() {
        #expect(JailPlan.uid(forVM: "rt0") == JailPlan.uid(forVM: "rt0"))
        #expect(JailPlan.uid(forVM: "rt0") != JailPlan.uid(forVM: "rt1"))
        for name in ["a", "rt0", "linux", String(repeating: "x", count: 64)] {
            let u = JailPlan.uid(forVM: name)
            #expect(u >= JailPlan.uidBase && u < JailPlan.uidBase + JailPlan.uidRange)
        }
    }
}
