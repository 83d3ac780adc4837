import Foundation
import Posix
import Realtime
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A real-time guest that reboots keeps its partition (issue 16): the `reset` inmate resets the
/// machine at once, over and over, and across those resets the host's cpusets are not recreated
/// and the IRQ affinities saved when the partition was built stay the ones from before the VM.
/// In the same serialized suite as the other real-time tests (they all take the last CPU).
extension RealtimePartitionTests {
    static func resetDefinition(_ name: String, daemonFields: String = "") throws -> String {
        VMM.definition(name: name, kernel: try Env.inmate("reset"), memoryMiB: 32,
                           extra: "\"realtime\": {\"cpus\": [\(rtCPU)], \"priority\": 42}" + daemonFields)
    }

    /// The inode of each of the shield's cpusets (VM's and housekeeping): a set removed and made
    /// again gets a new one.
    static func cpusetInodes(_ vm: String) -> [String: UInt64] {
        guard let root = v1Root else { return [:] }
        var inodes: [String: UInt64] = [:]
        for name in [CpusetV1.rtPrefix + vm, CpusetV1.housekeepingName] {
            var st = stat()
            if stat(root + "/" + name, &st) == 0 { inodes[name] = UInt64(st.st_ino) }
        }
        return inodes
    }

    /// Movable IRQs that allowed the real-time CPU before the VM are off it now, and the state
    /// still records their values from before the VM.
    static func expectIRQsSteeredAndSaved(_ state: PartitionState, before: HostSnapshot) {
        let unmovable = Set(state.irqs.unmovable.compactMap { Int($0.split(separator: ":")[0]) })
        for i in IRQAffinity().all() where before.irqs[i.irq]?.contains(rtCPU) == true && !unmovable.contains(i.irq) {
            #expect(!i.affinity.contains(rtCPU), "IRQ \(i.irq) allows the RT CPU again: \(i.affinity)")
        }
        for (irq, saved) in state.irqs.irqs {
            guard let was = Int(irq).flatMap({ before.irqs[$0] }) else { continue }
            #expect(saved == CPUList.format(was), "IRQ \(irq): saved \(saved), before the VM \(CPUList.format(was))")
        }
        #expect(state.irqs.defaultAffinity.map { $0 == before.defaultAffinity } ?? true)
        #expect(state.workqueueMask.map { $0 == before.workqueueMask } ?? true)
    }

    /// VMMs started by hand, as rtvisord would start them: two with
    /// `--keep-realtime-partition-on-reset` (each leaves the partition, the next adopts it), then
    /// one without (it adopts it and, at its reset, undoes it: the host is as before). Jailed (the
    /// janitor hands over) and not (the VMM itself does).
    @Test(arguments: [[], ["--no-jail"]])
    func aResetVMMsPartitionIsAdoptedByTheNextVMM(_ jail: [String]) throws {
        let before = HostSnapshot.take()
        let config = try VMM.writeDefinition(try Self.resetDefinition("rtr"), in: try VMM.tempDir())
        defer { _ = releaseRealtimePartition(vm: "rtr") }
        var first: (pid: Int32, inodes: [String: UInt64])?
        for run in 0..<2 {
            let r = try VMM.run(config: config, arguments: jail + ["--keep-realtime-partition-on-reset"], timeout: 30)
            try #require(r.status == 3, "run \(run): \(r.stderr.suffix(3000))")
            let state = try #require(PartitionState.load(vm: "rtr"), "run \(run) left no partition")
            #expect(state.handedOver && state.handovers == run)
            #expect(r.stderr.contains(jail.isEmpty ? "kept for the next VMM (guest reset) (the janitor)" : "real-time partition of rtr kept for the next VMM"),
                    "\(r.stderr.suffix(3000))")
            Self.expectIRQsSteeredAndSaved(state, before: before)
            let inodes = Self.cpusetInodes("rtr")
            if Self.v1Root != nil { #expect(inodes.count == 2, "cpusets \(inodes)") }
            if let first {
                // The second VMM took the first one's partition over: same builder, same cpusets.
                #expect(r.stderr.contains("real-time partition adopted from the previous VMM across the guest's reset (built by PID \(first.pid), hand-over 1)"),
                        "\(r.stderr.suffix(3000))")
                #expect(state.builtBy == first.pid)
                #expect(inodes == first.inodes, "cpusets recreated: \(first.inodes) then \(inodes)")
            } else {
                #expect(state.builtBy == r.pid)
                first = (r.pid, inodes)
            }
        }
        let last = try VMM.run(config: config, arguments: jail, timeout: 30)
        #expect(last.status == 3, "\(last.stderr.suffix(3000))")
        #expect(last.stderr.contains("hand-over 2"), "\(last.stderr.suffix(3000))")
        #expect(PartitionState.load(vm: "rtr") == nil)
        let after = HostSnapshot.take()
        #expect(after.matches(before), "host not restored:\nbefore \(before)\nafter  \(after)")
    }

    /// Through rtvisord: a real-time guest that resets over and over keeps one partition across
    /// its reboots; the daemon stays off its CPU throughout; a stop undoes the partition.
    @Test func rtvisordKeepsARebootingGuestsPartitionUntilItStops() throws {
        let before = HostSnapshot.take()
        let dir = try DaemonProcessTests.shortTempDir()
        let vms = dir + "/vms"
        try FileManager.default.createDirectory(atPath: vms, withIntermediateDirectories: true)
        try Self.resetDefinition("rtz", daemonFields: ", \"autostart\": true, \"stop_timeout_s\": 5").write(toFile: vms + "/rtz.json", atomically: true, encoding: .utf8)
        let log = dir + "/rtvisord.log"
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        let daemon = Process()
        daemon.executableURL = URL(fileURLWithPath: DaemonProcessTests.binary("rtvisord"))
        daemon.arguments = ["--definitions", vms, "--run-directory", dir + "/run", "--vmm", Env.vmmBinary]
        daemon.standardError = FileHandle(forWritingAtPath: log)
        daemon.standardOutput = FileHandle.nullDevice
        try daemon.run()
        defer {
            if daemon.isRunning { kill(daemon.processIdentifier, SIGKILL) }
            _ = releaseRealtimePartition(vm: "rtz")
        }
        let ctl = DaemonProcessTests.binary("rtvisorctl")
        let env = ["RTVISOR_API_SOCKET": dir + "/run/api.sock"]
        func rtz() -> [String: Any]? { DaemonProcessTests.listedVM("rtz", env: env) }
        func restarts() -> Int { rtz()?["restarts"] as? Int ?? 0 }
        var logText: String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }

        // After the first reboot, the partition the first VMM built, as it is now.
        guard DaemonProcessTests.waitFor(30, "rtz's first reboot", { restarts() >= 1 && PartitionState.load(vm: "rtz") != nil }) else {
            Issue.record("\(logText.suffix(3000))"); return
        }
        let inodes = Self.cpusetInodes("rtz")
        let built = try #require(PartitionState.load(vm: "rtz"))
        let seen = restarts()
        guard DaemonProcessTests.waitFor(60, "two more reboots of rtz", { restarts() >= seen + 2 }) else { Issue.record("\(logText.suffix(3000))"); return }
        let now = try #require(PartitionState.load(vm: "rtz"))
        // Each reboot's VMM adopts at its start: by the end of reboot seen + 2, the VMM of reboot
        // seen + 1 had (hand-overs never outnumber reboots, so built.handovers <= seen).
        #expect(now.builtBy == built.builtBy && now.handovers >= seen + 1 && now.handovers > built.handovers, "built \(built), now \(now), \(seen) reboots seen")
        #expect(Self.cpusetInodes("rtz") == inodes, "cpusets recreated across the reboots")
        if Self.v1Root != nil { #expect(inodes.count == 2, "cpusets \(inodes)") }
        Self.expectIRQsSteeredAndSaved(now, before: before)
        #expect(!logText.contains("real-time host changes undone"), "a reboot undid the partition:\n\(logText.suffix(3000))")
        #expect(logText.contains("its real-time partition stays in place for the next VMM"))
        // Whether a VMM runs or the next one is on its way, the daemon stays off the RT CPU.
        for tid in ThreadScheduling.threads(of: daemon.processIdentifier) {
            #expect(ThreadScheduling.affinity(tid: tid)?.contains(Self.rtCPU) == false, "rtvisord thread \(tid) may run on the RT CPU")
        }

        // Each VMM told rtvisord when its partition was in force (an adopted one too).
        let (_, events) = DaemonProcessTests.run(ctl, ["events", "--vm", "rtz", "--json"], env: env)
        let applied = events.split(separator: "\n").filter { $0.contains("\"kind\":\"vm-realtime-applied\"") }
        #expect(applied.count >= seen + 2, "\(events)")
        #expect(applied.allSatisfy { $0.contains("\"VM_REALTIME_CPUS\":\"\(Self.rtCPU)\"") }, "\(events)")

        let (stopStatus, stopOut) = DaemonProcessTests.run(ctl, ["stop", "rtz"], env: env)
        #expect(stopStatus == 0, "\(stopOut)")
        guard DaemonProcessTests.waitFor(20, "rtz stopped", { rtz()?["state"] as? String == "stopped" }) else { Issue.record("\(logText.suffix(3000))"); return }
        // Undone once: by the VMM the stop ended (its own release), or, when the stop came between
        // two VMMs of a reboot, by rtvisord for the partition kept for the next one.
        let byDaemon = logText.components(separatedBy: "real-time host changes undone").count - 1
        let byVMM = logText.components(separatedBy: "real-time partition of rtz released").count - 1
        #expect(byDaemon + byVMM == 1, "\(logText.suffix(3000))")
        // And the event stream says so once, whoever undid it.
        let released = DaemonProcessTests.run(ctl, ["events", "--vm", "rtz", "--json"], env: env).1
            .split(separator: "\n").filter { $0.contains("\"kind\":\"vm-realtime-released\"") }
        #expect(released.count == 1, "\(released)")
        #expect(PartitionState.load(vm: "rtz") == nil)
        let after = HostSnapshot.take()
        #expect(after.matches(before), "host not restored:\nbefore \(before)\nafter  \(after)")
        kill(daemon.processIdentifier, SIGTERM)
        let end = Date().addingTimeInterval(30)
        while daemon.isRunning && Date() < end { usleep(50_000) }
        #expect(!daemon.isRunning, "rtvisord did not exit after SIGTERM")
    }
}
