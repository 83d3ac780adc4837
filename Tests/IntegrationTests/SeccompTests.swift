import Foundation
import Testing

/// The VMM's seccomp filters (docs/sandbox.md) on real runs, in the style of Firecracker's
/// seccomp tests: for each thread kind, a forbidden syscall issued on that thread (the test hook
/// RTVISOR_TEST_FORBIDDEN_SYSCALL, compiled into debug builds only) kills the VMM by SIGSYS, and
/// the report names the thread, the syscall and the VM; through rtvisord, the daemon's failure
/// event carries VM_NAME and VM_SECCOMP_SYSCALL. Allowed operation is the rest of the suite: every
/// other integration test runs its VMMs with the filters on (the default).
@Suite(.enabled(if: Env.kvmAvailable, Env.noKVMReason))
struct SeccompTests {
    struct Run {
        let pid: Int32
        let killedBySignal: Int32?
        let status: Int32
        let stdout: String
        let stderr: String
        let statusFile: String
    }

    /// Runs rtvisor-vmm with `env` added and an exit-status file.
    static func run(definition: String, arguments: [String] = [], env: [String: String], timeout: Double = 60,
                    prefix: [String] = [], consoleInput: Bool = false) throws -> Run {
        let dir = try VMM.tempDir()
        let config = try VMM.writeDefinition(definition, in: dir)
        let status = dir.appendingPathComponent("exit-status").path
        let r = try VMM.run(config: config, arguments: ["--status-file", status] + arguments, timeout: timeout, prefix: prefix,
                            environment: env, consoleInput: consoleInput)
        return Run(pid: r.pid, killedBySignal: r.killedBySignal, status: r.status, stdout: r.stdout, stderr: r.stderr,
                   statusFile: (try? String(contentsOfFile: status, encoding: .utf8)) ?? "")
    }

    /// A virtio-blk VM with the ioeventfd doorbell thread, so every thread kind but net RX exists.
    static func blockVM(name: String, sandbox: String = "") throws -> String {
        let dir = try VMM.tempDir()
        let disk = try DiskImage(megabytes: 1, in: dir)
        return VMM.definition(name: name, kernel: try Env.inmate("virtio-blk"), cmdline: "blk.mode=write blk.sectors=16 blk.seed=5",
                              extra: "\"disks\": [{\"path\": \"\(disk.path)\"}]" + (sandbox.isEmpty ? "" : ", " + sandbox))
    }

    static func expectKilled(_ r: Run, thread: String, kind: String, vm: String) {
        let what = "seccomp: thread \(thread) (\(kind) filter) of VM \(vm) made forbidden syscall 41 (socket)"
        #expect(r.killedBySignal == SIGSYS, "status \(r.status), signal \(String(describing: r.killedBySignal))\nstderr:\n\(r.stderr)")
        #expect(r.stderr.contains("rtvisor-vmm: " + what), "stderr:\n\(r.stderr)")
        #expect(r.statusFile == "159 \(what)\n", "status file: \(r.statusFile)")
    }

    /// One forbidden socket() per thread: vCPU, I/O (ioeventfd), the main thread, and each of the
    /// VMM's helper threads (signals, console socket server, console input).
    @Test(arguments: [("vcpu0", "vcpu"), ("ioeventfd", "io"), ("main", "vmm"), ("signals", "vmm"),
                      ("console-server", "vmm"), ("console-in", "vmm")])
    func forbiddenSyscallKillsTheVMM(thread: String, kind: String) throws {
        let dir = try DaemonProcessTests.shortTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = try Self.run(definition: try Self.blockVM(name: "sec-\(thread)"),
                             arguments: ["--notify", "ioeventfd", "--console-socket", dir + "/c.sock"],
                             env: ["RTVISOR_TEST_FORBIDDEN_SYSCALL": thread], consoleInput: thread == "console-in")
        Self.expectKilled(r, thread: thread, kind: kind, vm: "sec-\(thread)")
    }

    /// The virtio-net RX thread (io filter, stacked on the vCPU filter it inherits), started when
    /// the guest's driver sets DRIVER_OK.
    @Test(.enabled(if: EchoNamespace.unavailableReason == nil, Comment(rawValue: EchoNamespace.unavailableReason ?? "")))
    func forbiddenSyscallOnTheNetRXThread() throws {
        // The guest never gets to send: net-echo.py gives up after 5 s instead of 60.
        let ns = try EchoNamespace(echoArguments: ["--count", "8", "--timeout", "5"])
        defer { _ = ns.finish() }
        let def = VMM.definition(name: "sec-net", kernel: try Env.inmate("virtio-net"), cmdline: "net.frames=8",
                                 extra: "\"nets\": [{\"tap\": \"\(ns.tap)\", \"mac\": \"02:00:00:aa:bb:01\"}]")
        let r = try Self.run(definition: def, env: ["RTVISOR_TEST_FORBIDDEN_SYSCALL": "net0-rx"],
                             prefix: [EchoNamespace.ip, "netns", "exec", ns.name])
        Self.expectKilled(r, thread: "net0-rx", kind: "io", vm: "sec-net")
    }

    /// Allocation churn under each kind's filter (issue 16): glibc's malloc opens
    /// /proc/sys/vm/overcommit_memory when it first shrinks a thread's arena; the filters answer
    /// with an errno, so the VMM lives and the guest finishes.
    @Test(arguments: [("vcpu0", "vcpu"), ("ioeventfd", "io"), ("main", "vmm"), ("signals", "vmm")])
    func heavyAllocationChurnUnderTheFilterIsHarmless(thread: String, kind: String) throws {
        let r = try Self.run(definition: try Self.blockVM(name: "churn-\(thread)"), arguments: ["--notify", "ioeventfd"],
                             env: ["RTVISOR_TEST_MALLOC_CHURN": thread])
        #expect(r.stderr.contains("test hook: thread \(thread) (\(kind)) churned malloc under its filter"), "stderr:\n\(r.stderr)")
        #expect(r.killedBySignal == nil && r.status == 0, "status \(r.status), signal \(String(describing: r.killedBySignal))\nstderr:\n\(r.stderr)")
        #expect(r.stdout.contains("INMATE virtio-blk PASS"))
    }

    /// Log-only mode: the same violation is allowed (the kernel logs it) and the guest finishes.
    @Test func logModeKeepsTheVMRunning() throws {
        let r = try Self.run(definition: try Self.blockVM(name: "sec-log", sandbox: "\"sandbox\": {\"seccomp\": \"log\"}"),
                             arguments: ["--notify", "ioeventfd"], env: ["RTVISOR_TEST_FORBIDDEN_SYSCALL": "vcpu"])
        #expect(r.killedBySignal == nil && r.status == 0, "stderr:\n\(r.stderr)")
        #expect(r.stdout.contains("INMATE virtio-blk PASS"))
        let hook = r.stderr.split(separator: "\n").first { $0.contains("test hook: thread vcpu0 (vcpu) issued socket(): ") }
        #expect(hook != nil, "stderr:\n\(r.stderr)")
        // The socket was really created (a non-negative descriptor, closed again).
        #expect(hook.map { !$0.hasSuffix(": -1") && !$0.contains("): -") } == true, "\(String(describing: hook))")
        #expect(!r.stderr.contains("forbidden syscall"))
        // The kernel's record of it (SECCOMP_RET_LOG → audit type 1326), where the kernel log is
        // readable and no audit daemon takes the records.
        if !FileManager.default.fileExists(atPath: "/run/auditd.pid"), let kernelLog = Self.kernelLog() {
            let record = kernelLog.split(separator: "\n").first { $0.contains("type=1326") && $0.contains(" pid=\(r.pid) ") }
            #expect(record?.contains("comm=\"vcpu0\"") == true && record?.contains(" syscall=41 ") == true
                    && record?.contains("code=0x7ffc0000") == true, "\(String(describing: record))")
        }
    }

    static func kernelLog() -> String? {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/dmesg")
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        guard (try? p.run()) != nil else { return nil }
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return p.terminationStatus == 0 ? String(decoding: data, as: UTF8.self) : nil
    }

    /// Every thread of a running VMM has a filter by default; with "off", none has.
    @Test(arguments: [("", 2), ("\"sandbox\": {\"seccomp\": \"off\"}", 0)])
    func filtersAreOnByDefault(sandbox: String, expected: Int) throws {
        let dir = try DaemonProcessTests.shortTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // Distinct names: VMs of the same name must not run at once (the jail's directory).
        let def = VMM.definition(name: "sec-idle-\(expected)", kernel: try Env.inmate("idle"), vcpus: 2, memoryMiB: 32, cmdline: "idle.heartbeat=0",
                                 extra: sandbox)
        let config = try VMM.writeDefinition(def, in: URL(fileURLWithPath: dir))
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Env.vmmBinary)
        p.arguments = ["--config", config, "--no-console-input", "--console-socket", dir + "/c.sock"]
        p.standardOutput = FileHandle.nullDevice
        let err = Pipe()
        p.standardError = err
        try p.run()
        defer { if p.isRunning { kill(p.processIdentifier, SIGKILL) } }
        let task = "/proc/\(p.processIdentifier)/task"
        var threads: [(String, Int)] = []
        let end = Date().addingTimeInterval(20)
        repeat {
            usleep(200_000)
            threads = ((try? FileManager.default.contentsOfDirectory(atPath: task)) ?? []).compactMap { tid in
                guard let comm = try? String(contentsOfFile: "\(task)/\(tid)/comm", encoding: .utf8),
                      let status = try? String(contentsOfFile: "\(task)/\(tid)/status", encoding: .utf8),
                      let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Seccomp:") }),
                      let mode = Int(line.split(separator: "\t").last ?? "") else { return nil }
                return (comm.trimmingCharacters(in: .whitespacesAndNewlines), mode)
            }
        } while Date() < end && Set(threads.map(\.0)).isSuperset(of: ["vcpu0", "vcpu1"]) == false && p.isRunning
        let names = Set(threads.map(\.0))
        #expect(names.isSuperset(of: ["vcpu0", "vcpu1", "rtvisor-vmm"]), "\(threads)")
        // Main, signals and console server are all named rtvisor-vmm; KVM's kernel worker thread
        // (kvm-nx-lpage-recovery) belongs to the process too and inherits whatever its creator had.
        for (name, mode) in threads where !name.hasPrefix("kvm") {
            #expect(mode == expected, "thread \(name): Seccomp \(mode), expected \(expected)")
        }
        #expect(threads.filter { $0.0 == "rtvisor-vmm" }.count >= 3, "\(threads)")
        kill(p.processIdentifier, SIGTERM)
        p.waitUntilExit()
        let stderr = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(p.terminationReason == .exit && p.terminationStatus == 128 + SIGTERM, "stderr:\n\(stderr)")
    }

    /// Through rtvisord: the VMM it started dies by SIGSYS; the daemon's vm-failed event names
    /// the VM and the syscall, and the API's last exit carries the VMM's report.
    @Test func daemonReportsTheViolationWithTheVMName() throws {
        let dir = try DaemonProcessTests.shortTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let vms = dir + "/vms"
        try FileManager.default.createDirectory(atPath: vms, withIntermediateDirectories: true)
        // rtvisord gives the VMM no environment of its own: a wrapper adds the test hook's variable.
        let wrapper = dir + "/vmm-wrapper"
        try "#!/bin/sh\nRTVISOR_TEST_FORBIDDEN_SYSCALL=vcpu exec \(Env.vmmBinary) \"$@\"\n".write(toFile: wrapper, atomically: true, encoding: .utf8)
        chmod(wrapper, 0o755)
        try VMM.definition(name: "secd", kernel: try Env.inmate("idle"), memoryMiB: 32, cmdline: "idle.heartbeat=0",
                           extra: "\"autostart\": true, \"restart\": \"no\"")
            .write(toFile: vms + "/secd.json", atomically: true, encoding: .utf8)
        let daemon = Process()
        daemon.executableURL = URL(fileURLWithPath: DaemonProcessTests.binary("rtvisord"))
        daemon.arguments = ["--definitions", vms, "--run-directory", dir + "/run", "--vmm", wrapper]
        // Without journald here the daemon logs to stderr with its fields (<N>message FIELD=value…).
        daemon.environment = ProcessInfo.processInfo.environment.filter { $0.key != "NOTIFY_SOCKET" }
        let err = Pipe()
        daemon.standardError = err
        daemon.standardOutput = FileHandle.nullDevice
        try daemon.run()
        defer { if daemon.isRunning { kill(daemon.processIdentifier, SIGKILL) } }
        let env = ["RTVISOR_API_SOCKET": dir + "/run/api.sock"]
        var inspect: [String: Any] = [:]
        let failed = DaemonProcessTests.waitFor(30, "secd failed") {
            guard let vm = DaemonProcessTests.listedVM("secd", env: env) else { return false }
            inspect = vm
            return vm["state"] as? String == "failed"
        }
        kill(daemon.processIdentifier, SIGTERM)
        daemon.waitUntilExit()
        guard failed else { return }
        let last = inspect["last_exit"] as? [String: Any]
        #expect(last?["signal"] as? Int == Int(SIGSYS), "\(inspect)")
        let reason = last?["reason"] as? String ?? ""
        #expect(reason.contains("killed by signal 31 (SIGSYS): seccomp: thread vcpu0 (vcpu filter) of VM secd made forbidden syscall 41 (socket)"), "\(reason)")
        let log = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        if FileManager.default.fileExists(atPath: "/run/systemd/journal/socket") {
            // With journald the entries went there (scripts/test-systemd-e2e.sh reads the journal).
            return
        }
        let entry = log.split(separator: "\n").first { $0.contains("VM secd failed") }
        #expect(entry != nil, "daemon log:\n\(log)")
        if let entry {
            #expect(entry.contains("VM_NAME=secd"), "\(entry)")
            #expect(entry.contains("VM_SECCOMP_SYSCALL=socket"), "\(entry)")
            #expect(entry.contains("RTVISOR_EVENT=vm-failed"), "\(entry)")
        }
    }
}
