import Foundation
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// The event stream and `--wait` with a real rtvisord and inmates on /dev/kvm (issue 20): a
/// follower sees a kill -9 and the restart in order; start, stop, reboot and reset return once
/// the state is reached.
@Suite(.enabled(if: Env.kvmAvailable, Env.noKVMReason), .serialized)
struct EventsDaemonTests {
    typealias D = DaemonProcessTests
    typealias Daemon = SnapshotDaemonTests.Daemon

    /// The idle inmate: it polls the keyboard controller and powers off on Ctrl-Alt-Del, so a
    /// graceful stop or reboot takes milliseconds.
    static func idle(_ name: String, extra: String) throws -> String {
        try VMM.definition(name: name, kernel: try Env.inmate("idle"), memoryMiB: 16, cmdline: "idle.heartbeat=0",
                           extra: "\"stop_timeout_s\": 5" + (extra.isEmpty ? "" : ", " + extra))
    }

    /// `rtvisorctl events --follow --json` in the background, its output in a file.
    final class Follower {
        let process = Process()
        let output: String
        init(_ d: Daemon, _ args: [String]) throws {
            output = d.dir + "/events-\(UInt32.random(in: 0...UInt32.max)).out"
            FileManager.default.createFile(atPath: output, contents: nil)
            process.executableURL = URL(fileURLWithPath: D.binary("rtvisorctl"))
            process.arguments = ["events", "--follow"] + args
            process.environment = ProcessInfo.processInfo.environment.merging(d.env) { $1 }
            process.standardOutput = FileHandle(forWritingAtPath: output)
            process.standardError = FileHandle(forWritingAtPath: output)
            try process.run()
        }
        var text: String { (try? String(contentsOfFile: output, encoding: .utf8)) ?? "" }
        var events: [[String: Any]] {
            text.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        }
        deinit { if process.isRunning { process.terminate() } }
    }

    @Test func aFollowerSeesAKillAndTheRestartInOrder() throws {
        let d = try Daemon(definitions: [("tick", try Self.idle("tick", extra: "\"autostart\": true, \"restart\": {\"policy\": \"on-failure\", \"backoff_ms\": 200}"))])
        guard d.waitRunning(["tick"]), let old = D.runningPID("tick", env: d.env) else { Issue.record("tick not running: \(d.log)"); return }
        let follower = try Follower(d, ["--vm", "tick", "--json"])
        // The follower is connected once the daemon has answered its first (empty) poll; give it
        // a moment, then check it is there.
        usleep(500_000)
        #expect(follower.process.isRunning, "\(follower.text)")

        kill(old, SIGKILL)
        guard D.waitFor(20, "tick restarted", { (D.runningPID("tick", env: d.env) ?? old) != old }) else { Issue.record("\(d.log)"); return }
        let new = D.runningPID("tick", env: d.env)!
        // The new VMM's guest writes the boot marker at once: the VMM tells rtvisord on its notice socket.
        #expect(D.waitFor(10, "the follower saw the restarted guest up") { follower.events.contains { $0["kind"] as? String == "vm-guest-ready" } })
        let events = follower.events
        let kinds = events.compactMap { $0["kind"] as? String }
        #expect(kinds == ["vm-failed", "vm-restart-scheduled", "vm-started", "vm-guest-ready"], "\(follower.text)")
        if kinds.count == 4 {
            #expect(events[3]["pid"] as? Int == Int(new), "ready is the new VMM's guest")
            #expect((events[3]["fields"] as? [String: String])?["VM_GUEST_READY_MS"] != nil)
            #expect(events[0]["pid"] as? Int == Int(old))
            #expect((events[0]["reason"] as? String)?.contains("killed by signal 9") == true, "\(events[0])")
            #expect(events[1]["state"] as? String == "restarting")
            #expect((events[1]["fields"] as? [String: String])?["RESTART_DELAY_MS"] == "200")
            #expect(events[2]["pid"] as? Int == Int(new) && events[2]["state"] as? String == "running")
            let seqs = events.compactMap { $0["seq"] as? Int }
            #expect(seqs == seqs.sorted() && Set(seqs).count == 4)
        }
        #expect(follower.process.isRunning, "still following")
        follower.process.terminate()

        // The same events afterwards, one-shot and for people: time, VM, event, message.
        let (status, human) = d.ctl(["events", "--vm", "tick"])
        #expect(status == 0)
        let lines = human.split(separator: "\n").filter { $0.contains("  tick  ") }
        #expect(lines.contains { $0.contains("  vm-failed  VM tick ended unexpectedly: killed by signal 9") }, "\(human)")
        #expect(human.split(separator: "\n").allSatisfy { $0.range(of: #"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d  "#, options: .regularExpression) != nil }, "\(human)")
        d.stop()
    }

    @Test func waitReturnsOnceTheStateIsReached() throws {
        let d = try Daemon(definitions: [("calm", try Self.idle("calm", extra: ""))])
        #expect(D.waitFor(10, "daemon answers") { d.state("calm") == "stopped" })

        let (started, startOut) = d.ctl(["start", "calm", "--wait", "--timeout", "30"])
        #expect(started == 0, "\(startOut)")
        #expect(d.state("calm") == "running", "start --wait returned before the VM ran")
        #expect(d.ctl(["inspect", "calm", "--json"]).1.contains("\"guest_started_at\""), "start --wait returned before the guest ran")
        let first = D.runningPID("calm", env: d.env)

        // Graceful reboot: the idle guest powers off on Ctrl-Alt-Del, and a new VMM runs it.
        let (rebooted, rebootOut) = d.ctl(["reboot", "calm", "--wait", "--timeout", "30"])
        #expect(rebooted == 0, "\(rebootOut)")
        let second = D.runningPID("calm", env: d.env)
        #expect(second != nil && second != first, "reboot --wait returned before a new VMM ran")
        #expect(d.ctl(["events", "--vm", "calm"]).1.contains("rebooting on request: exit status 0"))

        let (reset, resetOut) = d.ctl(["reset", "calm", "--wait", "--timeout", "30"])
        #expect(reset == 0, "\(resetOut)")
        let third = D.runningPID("calm", env: d.env)
        #expect(third != nil && third != second, "reset --wait returned before a new VMM ran")

        // --ready: back only once the new VMM's guest signalled it is up.
        let (readied, readyOut) = d.ctl(["reset", "calm", "--ready", "--timeout", "30"])
        #expect(readied == 0, "\(readyOut)")
        let fourth = D.runningPID("calm", env: d.env)
        #expect(fourth != nil && fourth != third)
        let inspect = d.ctl(["inspect", "calm", "--json"]).1
        #expect(inspect.contains("\"guest_ready_at\""), "reset --ready returned before the guest was up: \(inspect)")
        #expect(d.ctl(["stop", "calm", "--ready"]).0 != 0, "--ready is refused for stop")
        #expect(d.state("calm") == "running", "a refused --ready stops nothing")
        // The console's end, asked of the VMM (control protocol 6), without attaching.
        let (tailed, tail) = d.ctl(["console", "calm", "--tail", "5"])
        #expect(tailed == 0 && tail.contains("IDLE_READY"), "\(tail)\n\(d.log)")

        let (stopped, stopOut) = d.ctl(["stop", "calm", "--wait", "--timeout", "30"])
        #expect(stopped == 0, "\(stopOut)")
        #expect(d.state("calm") == "stopped", "stop --wait returned before the VM stopped")

        d.stop()
    }
}
