import Daemon
import Foundation
import Testing
import TestSupport
import VMMInterface

/// Snapshot, restore and clone through rtvisord and rtvisorctl (issue 18), with real VMMs on
/// /dev/kvm: the ticker inmate (ticker.total=0: it counts its LAPIC timer forever and prints
/// `TICK cpu=0 n=N` every 10 ticks), 16 MiB of memory, so each step is quick on a nested host.
@Suite(.enabled(if: Env.kvmAvailable, Env.noKVMReason), .serialized)
struct SnapshotDaemonTests {
    typealias D = DaemonProcessTests

    /// A daemon in a short temporary directory (unix socket paths), its log in a file (a
    /// ticking guest's console lines would fill a pipe nobody reads).
    final class Daemon {
        let dir: String
        let process = Process()
        var vms: String { dir + "/vms" }
        var state: String { dir + "/state" }
        var env: [String: String] { ["RTVISOR_API_SOCKET": dir + "/run/api.sock"] }

        /// The directory stays when the daemon detaches (`detach`): a next daemon takes it over.
        private var keepDirectory = false

        /// `reusing`: the directory of a daemon that detached (its VMMs are re-adopted). `prefix`
        /// wraps rtvisord in a command that execs it (`ip netns exec NS`: its VMs' taps there);
        /// `arguments`: more of rtvisord's options.
        init(definitions: [(name: String, json: String)], reusing existing: String? = nil, prefix: [String] = [], arguments: [String] = []) throws {
            dir = try existing ?? D.shortTempDir()
            try FileManager.default.createDirectory(atPath: dir + "/vms", withIntermediateDirectories: true)
            for d in definitions { try d.json.write(toFile: vms + "/\(d.name).json", atomically: true, encoding: .utf8) }
            let command = prefix + [D.binary("rtvisord"), "--definitions", vms, "--run-directory", dir + "/run", "--vmm", Env.vmmBinary, "--state-directory", state]
                + arguments
            process.executableURL = URL(fileURLWithPath: command[0])
            process.arguments = Array(command.dropFirst())
            FileManager.default.createFile(atPath: dir + "/daemon.log", contents: nil)
            process.standardError = FileHandle(forWritingAtPath: dir + "/daemon.log")
            process.standardOutput = FileHandle.nullDevice
            try process.run()
        }

        var log: String { (try? String(contentsOfFile: dir + "/daemon.log", encoding: .utf8)) ?? "" }

        func ctl(_ args: [String]) -> (Int32, String) { D.run(D.binary("rtvisorctl"), args, env: env) }

        func vm(_ name: String) -> [String: Any]? { D.listedVM(name, env: env) }

        func state(_ name: String) -> String? { vm(name)?["state"] as? String }

        func waitRunning(_ names: [String], seconds: Double = 30) -> Bool {
            D.waitFor(seconds, "\(names) running") { names.allSatisfy { state($0) == "running" } }
        }

        /// The VM's console so far (the VMM's backlog, then a second of live output).
        func console(_ name: String) -> String { ctl(["console", name, "--timeout", "1"]).1 }

        /// SIGINT: the daemon stops every guest, then exits.
        func stop() {
            guard process.isRunning else { return }
            kill(process.processIdentifier, SIGINT)
            let deadline = Date().addingTimeInterval(30)
            while process.isRunning && Date() < deadline { usleep(50_000) }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        }

        /// SIGTERM: the daemon ends and its guests keep running, for the next one to re-adopt.
        func detach() {
            keepDirectory = true
            kill(process.processIdentifier, SIGTERM)
            let deadline = Date().addingTimeInterval(30)
            while process.isRunning && Date() < deadline { usleep(50_000) }
        }

        deinit {
            stop()
            if !keepDirectory { try? FileManager.default.removeItem(atPath: dir) }
        }
    }

    static func ticker(_ name: String, extra: String = "") throws -> String {
        VMM.definition(name: name, kernel: try Env.inmate("ticker"), memoryMiB: 16, cmdline: "ticker.report=10 ticker.total=0",
                       extra: "\"autostart\": true, \"stop_timeout_s\": 2" + (extra.isEmpty ? "" : ", " + extra))
    }

    /// The TICK counts of CPU 0 in a console text.
    static func ticks(_ console: String) -> [Int] { tickCounts(console, cpu: 0) }

    static func json(_ text: String) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]) ?? [:]
    }

    /// snapshot → snapshots lists it → restore --name → the restored VM runs on from the saved
    /// count; then snapshot --stop leaves a VM with restart policy "always" stopped.
    @Test func snapshotListRestoreAndStop() throws {
        let d = try Daemon(definitions: [("tick", try Self.ticker("tick", extra: "\"restart\": \"always\""))])
        guard d.waitRunning(["tick"]) else { return }
        guard D.waitFor(20, "ticks", { (Self.ticks(d.console("tick")).last ?? 0) >= 30 }) else { return }

        let (status, out) = d.ctl(["snapshot", "tick"])
        #expect(status == 0, "\(out)\n\(d.log.suffix(2000))")
        #expect(out.hasPrefix("tick: saved to \(d.state)/snapshots/tick/") && out.contains("[running]"), "\(out)")
        #expect(d.state("tick") == "running")

        let (listStatus, listed) = d.ctl(["snapshots", "tick", "--json"])
        #expect(listStatus == 0)
        let snapshots = Self.json(listed)["snapshots"] as? [[String: Any]] ?? []
        #expect(snapshots.count == 1, "\(listed)")
        guard let snap = snapshots.first, let directory = snap["directory"] as? String else { return }
        #expect(snap["vm"] as? String == "tick" && snap["vcpus"] as? Int == 1 && snap["memory_mib"] as? Int == 16 && snap["error"] == nil, "\(snap)")
        let onDisk = snap["bytes_on_disk"] as? Int ?? 0, apparent = snap["apparent_bytes"] as? Int ?? 0
        #expect(onDisk > 0 && onDisk < apparent && apparent > 16 << 20, "sparse memory: \(onDisk) of \(apparent) bytes on disk")
        let (_, table) = d.ctl(["snapshots"])
        #expect(table.contains(directory) && table.contains("16"), "\(table)")
        var st = stat()
        #expect(stat(directory, &st) == 0 && st.st_mode & 0o777 == 0o700 && st.st_uid == 0)
        // Every path in the saved definition is absolute.
        let saved = Self.json(try String(contentsOfFile: SnapshotLayout.definition(in: directory), encoding: .utf8))
        #expect((saved["kernel"] as? String)?.hasPrefix("/") == true)

        let savedCount = Self.ticks(d.console("tick")).last ?? 0
        let (restoreStatus, restored) = d.ctl(["restore", directory, "--name", "tick2"])
        #expect(restoreStatus == 0, "\(restored)\n\(d.log.suffix(2000))")
        #expect(restored.contains("tick2: resumed from \(directory), PID "), "\(restored)")
        #expect(d.state("tick2") == "running" && d.state("tick") == "running")
        #expect(FileManager.default.fileExists(atPath: d.vms + "/tick2.json"))
        // It counts on from the snapshot's point (not from 10: it did not boot).
        guard D.waitFor(20, "tick2 ticking", { Self.ticks(d.console("tick2")).count >= 2 }) else { return }
        let console = d.console("tick2")
        #expect(!console.contains("TICKER_START"), "the restored VM booted: \(console.prefix(500))")
        #expect((Self.ticks(console).first ?? 0) >= 30 && (Self.ticks(console).first ?? 0) <= savedCount + 200, "\(Self.ticks(console))")
        // Restoring over a running VM: refused.
        let (again, refusal) = d.ctl(["restore", directory, "--name", "tick2"])
        #expect(again == 1 && refusal.contains("VM tick2 is running") && refusal.contains("HTTP 409"), "\(refusal)")

        // --stop: saved, then stopped for good, although its policy is "always".
        let (stopStatus, stopped) = d.ctl(["snapshot", "tick", "--stop", "--to", d.dir + "/kept"])
        #expect(stopStatus == 0 && stopped.contains("saved to \(d.dir)/kept [stopped]"), "\(stopped)")
        usleep(1_500_000)
        let vm = d.vm("tick")
        #expect(vm?["state"] as? String == "stopped" && vm?["restarts"] as? Int == 0, "\(String(describing: vm))")
        #expect((vm?["last_exit"] as? [String: Any])?["status"] as? Int == 8, "\(String(describing: vm))")
        let (exists, existsOut) = d.ctl(["snapshot", "tick2", "--to", d.dir + "/kept"])
        #expect(exists == 1 && existsOut.contains("already exists"), "\(existsOut)")
        #expect(d.state("tick2") == "running")
    }

    /// clone --count 2: two running clones with their own copies of the writable disk and the
    /// read-only one shared; then one more from the snapshot directory.
    @Test func clonesRunWithTheirOwnDisks() throws {
        let base = try D.shortTempDir()
        defer { try? FileManager.default.removeItem(atPath: base) }
        let rw = base + "/rw.img", ro = base + "/ro.img"
        FileManager.default.createFile(atPath: rw, contents: Data(repeating: 0x42, count: 1 << 20))
        FileManager.default.createFile(atPath: ro, contents: Data(repeating: 0x24, count: 64 << 10))
        let disks = "\"disks\": [{\"path\": \"\(rw)\"}, {\"path\": \"\(ro)\", \"read_only\": true}]"
        let d = try Daemon(definitions: [("origin", try Self.ticker("origin", extra: disks))])
        guard d.waitRunning(["origin"]) else { return }
        guard D.waitFor(20, "ticks", { (Self.ticks(d.console("origin")).last ?? 0) >= 20 }) else { return }

        let (status, out) = d.ctl(["clone", "origin", "--count", "2"])
        #expect(status == 0, "\(out)\n\(d.log.suffix(3000))")
        #expect(out.contains("2 clones of origin running from snapshot \(d.state)/snapshots/origin/"), "\(out)")
        for name in ["origin-clone1", "origin-clone2"] {
            let copy = "\(d.state)/clones/\(name)/0-rw.img"
            #expect(out.contains("disk \(copy) (copy of \(rw))") || out.contains("disk \(copy) (reflink of \(rw))"), "\(out)")
            #expect(out.contains("disk \(ro) (shared)"), "\(out)")
            #expect(FileManager.default.contents(atPath: copy) == FileManager.default.contents(atPath: rw))
            #expect(FileManager.default.fileExists(atPath: d.vms + "/\(name).json"))
        }
        #expect(d.waitRunning(["origin", "origin-clone1", "origin-clone2"], seconds: 5))
        guard D.waitFor(20, "clones ticking", { Self.ticks(d.console("origin-clone2")).count >= 2 }) else { return }
        #expect(!d.console("origin-clone1").contains("TICKER_START"))

        // From the snapshot directory, under another prefix.
        let (_, listed) = d.ctl(["snapshots", "origin", "--json"])
        guard let directory = (Self.json(listed)["snapshots"] as? [[String: Any]])?.first?["directory"] as? String else {
            Issue.record("no snapshot listed: \(listed)"); return
        }
        let (fromStatus, fromOut) = d.ctl(["clone", "origin", "--count", "1", "--prefix", "f", "--from", directory, "--json"])
        #expect(fromStatus == 0, "\(fromOut)")
        let clones = Self.json(fromOut)["clones"] as? [[String: Any]] ?? []
        #expect(((clones.first?["vm"] as? [String: Any])?["name"] as? String) == "f1", "\(fromOut)")
        #expect(d.waitRunning(["f1"], seconds: 5))
        // The same names again: refused before anything is done.
        let (taken, takenOut) = d.ctl(["clone", "origin", "--count", "1", "--prefix", "f"])
        #expect(taken == 1 && takenOut.contains("VM f1 already exists"), "\(takenOut)")
    }

    /// Bad snapshots start nothing and leave the daemon answering: a corrupt state file (refused
    /// by the daemon's own check, with the checksum message), and a definition whose CPUID the
    /// snapshot was not taken with (refused by the VMM; its message reaches the caller).
    @Test func badSnapshotsStartNothing() throws {
        let d = try Daemon(definitions: [("tick", try Self.ticker("tick"))])
        guard d.waitRunning(["tick"]) else { return }
        guard D.waitFor(20, "ticks", { !Self.ticks(d.console("tick")).isEmpty }) else { return }
        let good = d.dir + "/good"
        let (status, out) = d.ctl(["snapshot", "tick", "--to", good])
        #expect(status == 0, "\(out)")

        func copy(_ name: String) throws -> String {
            let dir = d.dir + "/" + name
            try FileManager.default.copyItem(atPath: good, toPath: dir)
            chmod(dir, 0o700)
            return dir
        }
        let corrupt = try copy("corrupt")
        var state = [UInt8](try Data(contentsOf: URL(fileURLWithPath: SnapshotLayout.state(in: corrupt))))
        state[state.count / 2] ^= 0x40
        try Data(state).write(to: URL(fileURLWithPath: SnapshotLayout.state(in: corrupt)))
        let (corruptStatus, corruptOut) = d.ctl(["restore", corrupt, "--name", "bad1"])
        #expect(corruptStatus == 1 && corruptOut.contains("checksum mismatch") && corruptOut.contains("the file is corrupted"), "\(corruptOut)")

        let cpuid = try copy("cpuid")
        let definition = try Self.ticker("tick", extra: "\"cpu\": {\"disable_features\": [\"tsc_deadline_timer\"]}")
        try definition.write(toFile: SnapshotLayout.definition(in: cpuid), atomically: true, encoding: .utf8)
        chmod(SnapshotLayout.definition(in: cpuid), 0o600)
        let (cpuidStatus, cpuidOut) = d.ctl(["restore", cpuid, "--name", "bad2"])
        #expect(cpuidStatus == 1 && cpuidOut.contains("VM bad2 could not be restored from \(cpuid)") && cpuidOut.contains("CPUID differs"),
                "\(cpuidOut)\n\(d.log.suffix(2000))")

        // Nothing started, nothing installed, the daemon answers.
        let (listStatus, listed) = d.ctl(["list", "--json"])
        #expect(listStatus == 0)
        let names = (Self.json(listed)["vms"] as? [[String: Any]] ?? []).compactMap { $0["name"] as? String }
        #expect(names == ["tick"], "\(listed)")
        #expect(!FileManager.default.fileExists(atPath: d.vms + "/bad1.json") && !FileManager.default.fileExists(atPath: d.vms + "/bad2.json"))
        #expect(Processes.vmms().filter { $0.launch.restore != nil && $0.launch.definition.hasPrefix(d.dir) }.isEmpty)
        #expect(d.state("tick") == "running" && d.process.isRunning)
    }
}
