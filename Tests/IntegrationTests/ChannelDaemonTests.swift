import Foundation
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Shared-memory channels between two real VMs under rtvisord (issue 21, docs/channels.md): the
/// ivshmem inmate as pinger (peer 0) and ponger (peer 1) on one channel. The message goes through
/// BAR2 and the doorbells arrive as MSI-X on the vector rung; a ponger killed with kill -9 and
/// restarted re-attaches to the same memory with the same IVPosition and the exchange resumes.
@Suite(.enabled(if: Env.kvmAvailable, Env.noKVMReason), .serialized)
struct ChannelDaemonTests {
    typealias D = DaemonProcessTests
    typealias Daemon = SnapshotDaemonTests.Daemon

    static func peer(_ name: String, peer: Int, cmdline: String, extra: String = "") throws -> String {
        try VMM.definition(name: name, kernel: try Env.inmate("ivshmem"), memoryMiB: 16, cmdline: cmdline,
                           extra: "\"autostart\": true, \"channels\": [{\"name\": \"plc-hmi\", \"size_mib\": 4, \"peer\": \(peer), \"vectors\": 2}]"
                           + (extra.isEmpty ? "" : ", " + extra))
    }

    /// A pinger (plc, peer 0) that goes on through silences, and a ponger (hmi, peer 1) that
    /// rtvisord restarts when it dies.
    static func pingerAndRestartingPonger() throws -> [(name: String, json: String)] {
        [("hmi", try peer("hmi", peer: 1, cmdline: "ivshmem.role=pong", extra: "\"restart\": {\"policy\": \"on-failure\", \"backoff_ms\": 200}")),
         ("plc", try peer("plc", peer: 0, cmdline: "ivshmem.role=ping ivshmem.rounds=100000000 ivshmem.stall_ok=1"))]
    }

    /// After ponger `old` was killed: rtvisord starts a new one, and the pinger hears from it in
    /// the same memory (its second boot counted there, its IVPosition unchanged).
    static func exchangeResumes(_ d: Daemon, afterRestartOf old: Int32) -> Bool {
        guard D.waitFor(30, "hmi restarted", { (D.runningPID("hmi", env: d.env) ?? old) != old }) else { Issue.record("\(d.log)"); return false }
        let resumed = console(d, "plc", shows: "ivshmem: peer 1 answers again at round ", seconds: 60)
        #expect(resumed.contains("(IVPosition 1, boot 2)"), "\(resumed)")
        return true
    }

    /// Waits until the VM's console shows `text`; returns the console.
    static func console(_ d: Daemon, _ vm: String, shows text: String, seconds: Double) -> String {
        var last = ""
        _ = D.waitFor(seconds, "\"\(text)\" on \(vm)'s console") { last = d.console(vm); return last.contains(text) }
        return last
    }

    @Test func twoVMsExchangeAMessageAndPingPongTenThousandRoundTrips() throws {
        let d = try Daemon(definitions: [
            ("hmi", try Self.peer("hmi", peer: 1, cmdline: "ivshmem.role=pong")),
            ("plc", try Self.peer("plc", peer: 0, cmdline: "ivshmem.role=ping ivshmem.rounds=10000 ivshmem.stay=1")),
        ])
        guard d.waitRunning(["hmi", "plc"]) else { Issue.record("\(d.log)"); return }
        let plc = Self.console(d, "plc", shows: "ivshmem: done", seconds: 120)
        #expect(plc.contains("ivshmem: IVPosition 0, BAR2 "), "\(plc)")
        #expect(plc.contains("4 MiB, 2 vectors"), "\(plc)")
        #expect(plc.contains("ivshmem: echo \"echo: hello from peer 0\" on vector 1"), "\(plc)")
        #expect(plc.contains("ivshmem: 10000 round trips: median "), "\(plc)")
        #expect(!plc.contains("FAIL"), "\(plc)")
        if let line = plc.split(separator: "\n").first(where: { $0.contains("round trips:") }) { print("channel ping-pong: \(line)") }
        let hmi = d.console("hmi")
        #expect(hmi.contains("ivshmem: IVPosition 1, BAR2 "), "\(hmi)")
        // rtvisorctl channels: one line per peer; the JSON is GET /v1/channels.
        let (status, table) = d.ctl(["channels"])
        #expect(status == 0)
        let rows = table.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true).map(String.init) }
        #expect(rows.dropFirst().map { Array($0.prefix(7)) } == [["plc-hmi", "4", "2", "yes", "0", "plc", "running"],
                                                                  ["plc-hmi", "4", "2", "yes", "1", "hmi", "running"]], "\(table)")
        let (_, json) = d.ctl(["channels", "--json"])
        let list = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any]
        let channel = (list?["channels"] as? [[String: Any]])?.first
        #expect(channel?["size_mib"] as? Int == 4 && channel?["allocated"] as? Bool == true, "\(json)")
        #expect((channel?["peers"] as? [[String: Any]])?.compactMap { $0["vm"] as? String } == ["plc", "hmi"], "\(json)")
        // Both VMMs put the doorbells in the kernel; none fell back to the trap path.
        let log = d.log
        #expect(log.components(separatedBy: "ivshmem0: channel plc-hmi, 4 MiB").count == 3, "\(log)")
        #expect(log.components(separatedBy: "2 vectors, doorbells on ioeventfd/irqfd").count == 3, "\(log)")
        #expect(!log.contains("doorbell ioeventfds at"), "\(log)")
        d.stop()
    }

    @Test func aPeerKilledAndRestartedReattachesAndTheExchangeResumes() throws {
        let d = try Daemon(definitions: try Self.pingerAndRestartingPonger())
        guard d.waitRunning(["hmi", "plc"]), let old = D.runningPID("hmi", env: d.env) else { Issue.record("\(d.log)"); return }
        _ = Self.console(d, "plc", shows: "ivshmem: echo \"echo: hello from peer 0\" on vector 1", seconds: 60)
        kill(old, SIGKILL)
        let stalled = Self.console(d, "plc", shows: "ivshmem: peer 1 silent at round ", seconds: 30)
        #expect(stalled.contains("silent"), "\(stalled)")
        guard Self.exchangeResumes(d, afterRestartOf: old) else { return }
        let hmi = d.console("hmi")
        #expect(hmi.contains("ivshmem: IVPosition 1, BAR2 "), "\(hmi)")
        #expect(D.runningPID("plc", env: d.env) != nil, "the pinger lives on: \(d.log)")
        d.stop()
    }
}

extension ChannelDaemonTests {
    /// rtvisord restarts while both peers run: the new one takes the channel back from a running
    /// VMM (over its control socket), so a peer it starts later joins the same memory and doorbells.
    @Test func aRestartedDaemonTakesTheChannelBackFromItsRunningPeers() throws {
        let a = try Daemon(definitions: try Self.pingerAndRestartingPonger())
        guard a.waitRunning(["hmi", "plc"]), let old = D.runningPID("hmi", env: a.env) else { Issue.record("\(a.log)"); return }
        _ = Self.console(a, "plc", shows: "ivshmem: echo \"echo: hello from peer 0\" on vector 1", seconds: 60)
        a.detach()

        let b = try Daemon(definitions: [], reusing: a.dir)
        defer { b.stop() }
        guard b.waitRunning(["hmi", "plc"]) else { Issue.record("\(b.log)"); return }
        #expect(b.log.contains("channel plc-hmi taken back from rtvisor-vmm PID"), "\(b.log)")
        #expect(b.ctl(["channels"]).1.contains("yes"), "the channel's memory is held again")
        // The ponger dies and this daemon restarts it: into the same memory, or the pinger would
        // never hear from it again (and it would not count its second boot there).
        kill(old, SIGKILL)
        _ = Self.exchangeResumes(b, afterRestartOf: old)
    }
}

/// A hand-started rtvisor-vmm backs a channel with a file (`--channel NAME,file=PATH`): what the
/// guest writes to BAR2 is in the file.
@Suite(.enabled(if: Env.kvmAvailable, Env.noKVMReason))
struct ChannelFileTests {
    static func definition(size: Int = 4) throws -> String {
        try VMM.writeDefinition(VMM.definition(name: "probe", kernel: try Env.inmate("ivshmem"), memoryMiB: 16, cmdline: "ivshmem.role=probe",
                                               extra: "\"channels\": [{\"name\": \"probe\", \"size_mib\": \(size), \"peer\": 3}]"))
    }

    @Test func whatTheGuestWritesToBar2IsInTheFile() throws {
        let file = "/dev/shm/rtvisor-test-channel-\(getpid())"
        defer { unlink(file) }
        let r = try VMM.run(config: try Self.definition(), arguments: ["--channel", "probe,file=\(file)"], timeout: 60)
        #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
        #expect(r.console.contains("ivshmem: IVPosition 3, BAR2 "), "\(r.console)")
        #expect(r.stderr.contains("ivshmem0: channel probe, 4 MiB, peer 3, 1 vector, no doorbells (probe,file=\(file))"), "\(r.stderr)")
        let data = try #require(FileManager.default.contents(atPath: file))
        #expect(data.count == 4 << 20)
        #expect(String(decoding: data[4096..<(4096 + 17)], as: UTF8.self) == "probe from peer 3")
    }

    @Test func aFileOfAnotherSizeIsRefusedWithTheField() throws {
        let file = "/dev/shm/rtvisor-test-channel-small-\(getpid())"
        FileManager.default.createFile(atPath: file, contents: Data(count: 1 << 20))
        defer { unlink(file) }
        let r = try VMM.run(config: try Self.definition(), arguments: ["--channel", "probe,file=\(file)"], timeout: 60)
        #expect(r.status != 0)
        #expect(r.stderr.contains("$.channels[0]: the channel's memory (\(file)) is not 4 MiB"), "\(r.stderr)")
    }
}

/// The minimal Linux on a channel whose other peer is the ivshmem inmate: Linux user space binds
/// uio_pci_generic to the device, writes a message into BAR2 through sysfs resource2 and waits
/// for the inmate's echo (guests/linux/checks/channel.sh; the inmate polls, as nobody rings).
@Suite(.enabled(if: Env.kvmAvailable, Env.noKVMReason),
       .enabled(if: ProcessInfo.processInfo.environment["RTVISOR_SKIP_LINUX_BOOT"] == nil,
                "RTVISOR_SKIP_LINUX_BOOT is set: skipping the minimal-Linux boots"))
struct ChannelLinuxTests {
    @Test func linuxWritesThroughUioAndTheInmatePeerEchoes() throws {
        let guest = Env.guestLinuxDir
        let kernel = try Env.requireFile(guest + "/vmlinux", builtBy: "scripts/build-guest-kernel.sh")
        let initrd = try Env.requireFile(guest + "/initramfs.cpio", builtBy: "scripts/build-guest-kernel.sh")
        let linux = VMM.definition(name: "lnx", kernel: kernel, memoryMiB: 64, initrd: initrd,
                                   cmdline: LinuxGuestTests.cmdline + " rtvisor.check=channel",
                                   extra: "\"autostart\": true, \"channels\": [{\"name\": \"plc-hmi\", \"size_mib\": 4, \"peer\": 0, \"vectors\": 2}]")
        let d = try ChannelDaemonTests.Daemon(definitions: [
            ("hmi", try ChannelDaemonTests.peer("hmi", peer: 1, cmdline: "ivshmem.role=pong ivshmem.poll=1")),
            ("lnx", linux),
        ])
        guard d.waitRunning(["hmi"]) else { Issue.record("\(d.log)"); return }
        // The guest powers off after its check: its console lines are in the daemon's log.
        guard D.waitFor(900, "the check's end", { d.log.contains("RTVISOR_CHECK_END channel") }) else { Issue.record("\(d.log.suffix(4000))"); return }
        let log = d.log
        #expect(log.contains("channel: 0000:00:01.0 bound to uio_pci_generic"), "\(log.suffix(4000))")
        #expect(log.contains("channel: IVPosition 0"), "\(log.suffix(4000))")
        #expect(log.contains("channel: the peer answered: echo: hello from linux"), "\(log.suffix(4000))")
        #expect(log.contains("RTVISOR_CHECK_END channel status=0"), "\(log.suffix(4000))")
        #expect(d.console("hmi").contains("ivshmem: echoed \"hello from linux\""))
        d.stop()
    }

    typealias D = DaemonProcessTests
}
