import CDaemonSupport
import Foundation
import SystemPackage
import Testing
import TestSupport
import VMMInterface

/// Live migration through rtvisord and rtvisorctl (issue 19): two daemons on this host, each
/// with its own definitions, run and state directories, stand for two hosts. The memwriter
/// inmate (memw.steps=0: it writes its memory forever and verifies all of it every 1024 steps,
/// printing `MEMW step=K ok`) moves from daemon A to daemon B mid-run, with a disk image both
/// see (its lock goes with the VM: docs/migration.md, "Disks").
@Suite(.enabled(if: Env.kvmAvailable, Env.noKVMReason), .serialized)
struct MigrationDaemonTests {
    typealias D = DaemonProcessTests
    typealias Daemon = SnapshotDaemonTests.Daemon

    static func memwriter(_ name: String, vcpus: Int = 1, autostart: Bool = true, extra: String = "") throws -> String {
        VMM.definition(name: name, kernel: try Env.inmate("memwriter"), vcpus: vcpus, memoryMiB: 32, cmdline: "memw.steps=0",
                       extra: "\"autostart\": \(autostart), \"stop_timeout_s\": 2" + (extra.isEmpty ? "" : ", " + extra))
    }

    static func steps(_ console: String) -> [Int] {
        console.split(separator: "\n").compactMap { line in
            guard line.hasPrefix("MEMW step=") else { return nil }
            return Int(line.dropFirst(10).prefix { $0.isNumber })
        }
    }

    /// A moves memw (restart policy always) to B as `moved`: A shows it migrated (exit 9, not
    /// restarted), B runs it, and its memory checks go on past the last one A showed.
    @Test func aRunningVMMovesToTheOtherDaemon() throws {
        let shared = try D.shortTempDir()
        defer { try? FileManager.default.removeItem(atPath: shared) }
        let disk = shared + "/disk.img"
        FileManager.default.createFile(atPath: disk, contents: Data(count: 1 << 20))
        let a = try Daemon(definitions: [("memw", try Self.memwriter("memw", extra: "\"restart\": \"always\", \"disks\": [{\"path\": \"\(disk)\"}]"))])
        let b = try Daemon(definitions: [])
        guard a.waitRunning(["memw"]) else { Issue.record("memw did not start: \(a.log.suffix(2000))"); return }
        guard D.waitFor(60, "memw verifying", { Self.steps(a.console("memw")).contains(1024) }) else { return }

        let listen = "unix:" + b.dir + "/in.sock"
        let (rs, received) = b.ctl(["migrate-receive", "--listen", listen, "--name", "moved"])
        #expect(rs == 0 && received.contains("incoming migration 1: listening on \(listen) (as moved)"), "\(received)\n\(b.log.suffix(2000))")
        let lastOnA = Self.steps(a.console("memw")).last ?? 0
        let (ms, moved) = a.ctl(["migrate", "memw", listen])
        #expect(ms == 0 && moved.contains("memw: migrated from ") && moved.contains(" to \(listen) [migrated]"),
                "\(moved)\nA: \(a.log.suffix(3000))\nB: \(b.log.suffix(3000))")

        // A: migrated, exit status 9, not restarted although its policy is "always".
        usleep(1_500_000)
        let vm = a.vm("memw")
        #expect(vm?["state"] as? String == "migrated" && vm?["restarts"] as? Int == 0 && vm?["pid"] == nil, "\(String(describing: vm))")
        #expect((vm?["last_exit"] as? [String: Any])?["status"] as? Int == 9, "\(String(describing: vm))")
        // One journal event on each side with both hosts' names (here: stderr's fallback format).
        #expect(a.log.contains("RTVISOR_EVENT=vm-migrated") && a.log.contains("MIGRATION_DESTINATION=\(listen)"), "\(a.log.suffix(3000))")
        #expect(b.log.contains("RTVISOR_EVENT=vm-migrated-in") && b.log.contains("MIGRATION_SOURCE_HOST="), "\(b.log.suffix(3000))")

        // B: running as `moved`, verifying its whole memory on from where A was.
        #expect(b.waitRunning(["moved"], seconds: 30), "\(b.log.suffix(3000))")
        #expect(FileManager.default.fileExists(atPath: b.vms + "/moved.json"))
        guard D.waitFor(60, "moved verifying", { (Self.steps(b.console("moved")).last ?? 0) > lastOnA + 1024 }) else {
            Issue.record("moved: \(b.console("moved").suffix(1000))"); return
        }
        let console = b.console("moved")
        let seen = Self.steps(console)
        // The console's history came along: one boot (on A), then every check in order.
        #expect(console.components(separatedBy: "MEMW_START").count == 2 && !console.contains("FAIL"), "booted once, on A: \(console.prefix(500))")
        #expect(seen.contains(lastOnA) && seen.last! > lastOnA && seen == Array(stride(from: seen.first!, through: seen.last!, by: 1024)), "\(lastOnA) then \(seen)")
        let (_, table) = b.ctl(["list"])
        #expect(table.contains("moved") && table.contains("running"), "\(table)")
    }

    /// B cannot take the VM (its definition of `moved` has 2 vCPUs): the refusal reaches A's
    /// caller and memw runs on at A. A name that runs at B is refused before B even listens.
    @Test func aTargetThatCannotTakeTheVMRefusesItAndTheSourceRunsOn() throws {
        let a = try Daemon(definitions: [("memw", try Self.memwriter("memw"))])
        let b = try Daemon(definitions: [("moved", try Self.memwriter("moved", vcpus: 2, autostart: false)), ("busy", try Self.memwriter("busy"))])
        guard a.waitRunning(["memw"]), b.waitRunning(["busy"]) else { Issue.record("\(a.log.suffix(2000))\n\(b.log.suffix(2000))"); return }
        guard D.waitFor(60, "memw verifying", { !Self.steps(a.console("memw")).isEmpty }) else { return }

        let (bs, busy) = b.ctl(["migrate-receive", "--listen", "unix:" + b.dir + "/busy.sock", "--name", "busy"])
        #expect(bs == 1 && busy.contains("VM busy is running: stop it first, or receive under another name (--name)") && busy.contains("HTTP 409"), "\(busy)")

        let listen = "unix:" + b.dir + "/in.sock"
        let (rs, received) = b.ctl(["migrate-receive", "--listen", listen, "--name", "moved"])
        #expect(rs == 0, "\(received)")
        let (ms, refused) = a.ctl(["migrate", "memw", listen])
        #expect(ms == 1 && refused.contains("VM memw was not migrated (it runs on here): the target refused the VM")
                    && refused.contains("with 2 vCPUs and 32 MiB, the incoming VM has 1 vCPUs and 32 MiB"), "\(refused)\n\(b.log.suffix(2000))")
        #expect(a.state("memw") == "running")
        let before = Self.steps(a.console("memw")).last ?? 0
        #expect(D.waitFor(60, "memw verifying on", { (Self.steps(a.console("memw")).last ?? 0) > before }))
        // B's definition is as it was, and nothing of the VM runs there.
        #expect(b.state("moved") == "stopped")
        #expect((try? String(contentsOfFile: b.vms + "/moved.json", encoding: .utf8))?.contains("\"vcpus\": 2") == true)
        #expect(a.log.contains("RTVISOR_EVENT=vm-migration-failed"))
    }

    /// A migration capped at 2 MiB/s cannot keep up with memw: `migrate --progress` prints each
    /// round (iteration, dirty pages, rate, expected downtime) and `--timeout-s` gives it up; memw
    /// runs on at A, B's incoming migration failed and runs nothing.
    @Test func aMigrationShowsItsProgressAndGivesUpAtItsTimeout() throws {
        let a = try Daemon(definitions: [("memw", try Self.memwriter("memw"))])
        let b = try Daemon(definitions: [])
        guard a.waitRunning(["memw"]) else { Issue.record("\(a.log.suffix(2000))"); return }
        guard D.waitFor(60, "memw verifying", { !Self.steps(a.console("memw")).isEmpty }) else { return }
        let listen = "unix:" + b.dir + "/in.sock"
        #expect(b.ctl(["migrate-receive", "--listen", listen]).0 == 0)
        let (ms, out) = a.ctl(["migrate", "memw", listen, "--max-bandwidth", "2", "--timeout-s", "5", "--downtime-ms", "1",
                               "--max-rounds", "1000", "--no-force", "--progress"])
        #expect(ms == 1 && out.contains("the timeout of 5 s is over, given up, the VM keeps running here"), "\(out)\n\(a.log.suffix(2000))")
        #expect(out.contains("  round 0: ") && out.contains("  round 1: ") && out.contains(" MiB/s, expected downtime "), "\(out)")
        #expect(a.state("memw") == "running")
        let before = Self.steps(a.console("memw")).last ?? 0
        #expect(D.waitFor(60, "memw verifying on", { (Self.steps(a.console("memw")).last ?? 0) > before }))
        #expect(D.waitFor(20, "B gave up", { b.state("memw") != "running" && b.state("memw") != "incoming" }))
    }

    /// `rtvisorctl upgrade`: memw (with a disk, whose lock goes along) moves twice to a new
    /// rtvisor-vmm under the same daemon; it stays running, under a new PID each time, its memory
    /// checks go on, and the new VMM answers on the usual control socket (the second upgrade goes
    /// through it). A paused VM is refused.
    @Test func aRunningVMMovesToANewVMMAndRunsOnUnderTheSameDaemon() throws {
        let shared = try D.shortTempDir()
        defer { try? FileManager.default.removeItem(atPath: shared) }
        let disk = shared + "/disk.img"
        FileManager.default.createFile(atPath: disk, contents: Data(count: 1 << 20))
        let a = try Daemon(definitions: [("memw", try Self.memwriter("memw", extra: "\"restart\": \"always\", \"disks\": [{\"path\": \"\(disk)\"}]"))])
        guard a.waitRunning(["memw"]) else { Issue.record("memw did not start: \(a.log.suffix(2000))"); return }
        guard D.waitFor(60, "memw verifying", { Self.steps(a.console("memw")).contains(1024) }) else { return }
        var pids = [a.vm("memw")?["pid"] as? Int ?? 0]
        for round in 1...2 {
            let before = Self.steps(a.console("memw")).last ?? 0
            let (status, out) = a.ctl(["upgrade", "memw"])
            #expect(status == 0 && out.contains("memw: now under ") && out.contains("PID \(pids.last!) → ") && out.contains("[running]")
                        && out.contains("memory handed over"), "round \(round): \(out)\n\(a.log.suffix(3000))")
            let vm = a.vm("memw")
            let pid = vm?["pid"] as? Int ?? 0
            #expect(vm?["state"] as? String == "running" && pid != pids.last! && vm?["restarts"] as? Int == 0, "\(String(describing: vm))")
            #expect(kill(pid_t(pids.last!), 0) != 0, "the old VMM is gone")
            pids.append(pid)
            #expect(D.waitFor(60, "memw verifying after upgrade \(round)", { (Self.steps(a.console("memw")).last ?? 0) > before + 1024 }))
        }
        let seen = Self.steps(a.console("memw"))
        #expect(seen == Array(stride(from: 1024, through: seen.last!, by: 1024)), "every check once, in order: \(seen.suffix(20))")
        #expect(!a.console("memw").contains("FAIL"))
        #expect(a.log.contains("RTVISOR_EVENT=vm-upgraded") && a.log.contains("VM_OLD_PID=\(pids[0])"), "\(a.log.suffix(3000))")
        // The new VMM serves the usual control socket: a snapshot goes through it.
        let (ss, snap) = a.ctl(["snapshot", "memw", "--to", shared + "/snap"])
        #expect(ss == 0, "\(snap)\n\(a.log.suffix(2000))")

        #expect(a.ctl(["pause", "memw"]).0 == 0)
        let (ps, paused) = a.ctl(["upgrade", "memw"])
        #expect(ps == 1 && paused.contains("VM memw is paused, not running"), "\(paused)")
        #expect(a.ctl(["resume", "memw"]).0 == 0)
        let (stop, stopped) = a.ctl(["stop", "memw", "--force"])
        #expect(stop == 0, "\(stopped)")
        #expect(D.waitFor(20, "memw stopped", { a.state("memw") == "stopped" }))
    }

    /// A target that takes the VM up to `go` and vanishes without `running`: the source keeps the
    /// guest paused (outcome unknown). A daemon restart re-adopts the VMM as paused, so `resume`
    /// still reaches the VMM (its control socket, not SIGCONT) and the guest goes on.
    @Test func aPauseKeptAfterAnUnknownOutcomeSurvivesADaemonRestart() throws {
        let a = try Daemon(definitions: [("memw", try Self.memwriter("memw"))])
        guard a.waitRunning(["memw"]) else { Issue.record("\(a.log.suffix(2000))"); return }
        guard D.waitFor(60, "memw verifying", { !Self.steps(a.console("memw")).isEmpty }) else { return }
        let path = a.dir + "/vanish.sock"
        let listener = cdaemon_listen_unix(path, 1, 0o600)
        #expect(listener >= 0)
        let target = Thread {
            let fd = accept(listener, nil, nil)
            guard fd >= 0 else { return }
            let channel = MigrationChannel(socket: FileDescriptor(rawValue: fd))
            defer { close(fd) }
            while let m = try? channel.receive() {
                switch m {
                case .config: try? channel.send(.accepted)
                case .state: try? channel.send(.ready)
                case .go: return  // gone before `running`
                default: continue
                }
            }
        }
        target.start()
        defer { close(listener) }
        let (ms, out) = a.ctl(["migrate", "memw", "unix:" + path])
        #expect(ms == 1 && out.contains("migration outcome unknown"), "\(out)")
        #expect(a.state("memw") == "paused")
        let pid = a.vm("memw")?["pid"] as? Int
        a.detach()

        let b = try Daemon(definitions: [], reusing: a.dir)
        #expect(D.waitFor(20, "memw re-adopted, paused", { b.state("memw") == "paused" }), "\(b.log.suffix(2000))")
        #expect(b.vm("memw")?["pid"] as? Int == pid)
        #expect(b.log.contains("kept PAUSED by its VMM"), "\(b.log.suffix(2000))")
        let before = Self.steps(b.console("memw")).last ?? 0
        #expect(b.ctl(["resume", "memw"]).0 == 0)
        #expect(D.waitFor(60, "memw verifying again", { (Self.steps(b.console("memw")).last ?? 0) > before }))
    }
}
