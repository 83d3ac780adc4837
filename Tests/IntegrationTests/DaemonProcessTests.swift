import Foundation
import Testing
import Daemon
import Posix
import TestSupport
import VMMInterface

/// rtvisor-vmm's daemon-facing options and rtvisord itself, as real processes on /dev/kvm,
/// without systemd (scripts/test-systemd-e2e.sh covers systemd and journald).
@Suite(.enabled(if: Env.kvmAvailable, Env.noKVMReason), .serialized)
struct DaemonProcessTests {
    static func binary(_ name: String) -> String {
        let dir = (Env.vmmBinary as NSString).deletingLastPathComponent
        return dir + "/" + name
    }

    /// Short paths: unix socket names are limited to 108 bytes.
    /// rtvisord on `definitions`, its stderr (the log without journald) in the returned pipe.
    static func startDaemon(definitions: String, runDirectory: String) throws -> (Process, Pipe) {
        let daemon = Process()
        daemon.executableURL = URL(fileURLWithPath: binary("rtvisord"))
        daemon.arguments = ["--definitions", definitions, "--run-directory", runDirectory, "--vmm", Env.vmmBinary]
        let err = Pipe()
        daemon.standardError = err
        daemon.standardOutput = FileHandle.nullDevice
        try daemon.run()
        return (daemon, err)
    }

    /// Short: the daemon's sockets go inside (sun_path is 108 bytes).
    static func shortTempDir() throws -> String { try makeTemporaryDirectory("rtvd") }

    static func waitFor(_ seconds: Double, _ what: String, _ ok: () -> Bool) -> Bool {
        let end = Date().addingTimeInterval(seconds)
        while Date() < end { if ok() { return true }; usleep(50_000) }
        Issue.record("timed out after \(seconds) s waiting for \(what)")
        return false
    }

    static func run(_ path: String, _ args: [String], env: [String: String] = [:]) -> (Int32, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = args
        p.environment = ProcessInfo.processInfo.environment.merging(env) { $1 }
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        p.standardInput = FileHandle.nullDevice
        guard (try? p.run()) != nil else { return (-1, "cannot run \(path)") }
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    /// The VMs `rtvisorctl list --json` shows for the daemon at `env`'s API socket ([] when it
    /// does not answer), and one of them by name.
    static func listedVMs(env: [String: String]) -> [[String: Any]] {
        let (status, out) = run(binary("rtvisorctl"), ["list", "--json"], env: env)
        guard status == 0, let d = try? JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any] else { return [] }
        return d["vms"] as? [[String: Any]] ?? []
    }

    static func listedVM(_ name: String, env: [String: String]) -> [String: Any]? {
        listedVMs(env: env).first { $0["name"] as? String == name }
    }

    /// The PID of VM `name` while it is running, else nil.
    static func runningPID(_ name: String, env: [String: String]) -> Int32? {
        guard let vm = listedVM(name, env: env), vm["state"] as? String == "running" else { return nil }
        return (vm["pid"] as? Int).map(Int32.init)
    }

    @Test func sigusr1InjectsCtrlAltDelAndTheIdleGuestPowersOff() throws {
        let dir = try Self.shortTempDir()
        let def = try VMM.writeDefinition(VMM.definition(name: "idle", kernel: try Env.inmate("idle"), memoryMiB: 32, cmdline: "idle.heartbeat=0"), in: URL(fileURLWithPath: dir))
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Env.vmmBinary)
        p.arguments = ["--config", def, "--no-console-input", "--console-socket", dir + "/c.sock", "--status-file", dir + "/status"]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        try p.run()
        guard Self.waitFor(10, "the console socket", { FileManager.default.fileExists(atPath: dir + "/c.sock") }) else { p.terminate(); return }
        // The console socket replays the backlog to a late client.
        usleep(300_000)
        let backlog = try Self.readSocket(dir + "/c.sock", seconds: 1)
        #expect(backlog.contains("IDLE_READY"))
        kill(p.processIdentifier, SIGUSR1)
        let deadline = Date().addingTimeInterval(10)
        while p.isRunning && Date() < deadline { usleep(20_000) }
        if p.isRunning { p.terminate(); Issue.record("the idle guest did not power off after SIGUSR1") }
        p.waitUntilExit()
        #expect(p.terminationStatus == 0)
        let stdout = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(stdout.contains("IDLE_CTRL_ALT_DEL"))
        #expect(try String(contentsOfFile: dir + "/status", encoding: .utf8) == "0 guest powered off\n")
    }

    /// Issue 16: a guest flooding its console gets only its rate limit's worth of journal
    /// entries (the stderr fallback without journald shows them) and one count of the rest,
    /// while a console client still sees every byte.
    @Test(.enabled(if: !FileManager.default.fileExists(atPath: "/run/systemd/journal/socket"), "journald present: entries would not reach stderr"))
    func consoleFloodIsRateLimitedInTheJournalButNotOnTheSocket() throws {
        let dir = try Self.shortTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let lines = 1500
        let def = try VMM.writeDefinition(VMM.definition(name: "flood", kernel: try Env.inmate("flood"), memoryMiB: 32,
                                                         cmdline: "flood.lines=\(lines) flood.long=9000"), in: URL(fileURLWithPath: dir))
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Env.vmmBinary)
        p.arguments = ["--config", def, "--no-console-input", "--console-socket", dir + "/c.sock", "--console-journal", "--status-file", dir + "/status"]
        // A file, not a pipe: a VMM without the limit writes more than a pipe holds.
        _ = FileManager.default.createFile(atPath: dir + "/stderr", contents: nil)
        p.standardError = FileHandle(forWritingAtPath: dir + "/stderr")
        p.standardOutput = FileHandle.nullDevice
        let started = Date()
        try p.run()
        var fd: Int32?
        while fd == nil && p.isRunning && Date().timeIntervalSince(started) < 10 {
            fd = connectToUnixSocket(dir + "/c.sock", receiveTimeoutSeconds: 20)
            if fd == nil { usleep(1000) }
        }
        guard let fd else { Issue.record("could not connect to the console socket"); p.terminate(); return }
        let console = (try? readToEnd(fd)) ?? []
        close(fd)
        p.waitUntilExit()
        let stderr = try String(contentsOfFile: dir + "/stderr", encoding: .utf8)
        let seconds = Date().timeIntervalSince(started)
        #expect(p.terminationStatus == 0)
        // The socket: everything, in order.
        let text = String(decoding: console, as: UTF8.self)
        #expect(text.contains("\nf0\n") || text.hasPrefix("f0\n"))
        #expect(text.contains("\nf\(lines - 1)\n") && text.contains(String(repeating: "x", count: 9000)) && text.contains("INMATE flood PASS"))
        // The journal: the burst (500), 10 lines a second after it, and the count of the rest.
        let entries = stderr.split(separator: "\n").filter { $0.contains("VM_CONSOLE=serial") }
        let summaries = entries.filter { $0.contains("RTVISOR_EVENT=vm-console-suppressed") }
        let journaled = entries.count - summaries.count
        #expect(journaled >= 500 && Double(journaled) <= 500 + 10 * seconds + 1, "\(journaled) console lines journaled in \(seconds) s")
        #expect(!summaries.isEmpty)
        #expect(summaries.allSatisfy { $0.hasPrefix("<4>") && $0.contains(" console lines suppressed (journal rate limit: 500 lines, then 10 per second)") })
        let suppressed = summaries.compactMap { line in
            line.split(separator: " ").first { $0.hasPrefix("VM_CONSOLE_SUPPRESSED=") }.flatMap { Int($0.dropFirst("VM_CONSOLE_SUPPRESSED=".count)) }
        }.reduce(0, +)
        // Every line is either journaled or counted: the short ones, the endless one in three
        // 4 KiB-bounded pieces, FLOOD_DONE and the PASS line.
        #expect(journaled + suppressed == lines + 3 + 2)
        #expect(entries.allSatisfy { $0.utf8.count < 4096 + 100 })
    }

    static func readSocket(_ path: String, seconds: Double) throws -> String {
        guard let fd = connectToUnixSocket(path, receiveTimeoutSeconds: Int(seconds)) else { return "connect failed: \(errno)" }
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: 65536)
        let n = read(fd, &buf, buf.count)
        return n > 0 ? String(decoding: buf[0..<n], as: UTF8.self) : ""
    }

    @Test func daemonRestartsAKilledVMMAndShutdownGuestsStopsIt() throws {
        let dir = try Self.shortTempDir()
        let vms = dir + "/vms"
        try FileManager.default.createDirectory(atPath: vms, withIntermediateDirectories: true)
        try VMM.definition(name: "idle", kernel: try Env.inmate("idle"), memoryMiB: 32, cmdline: "idle.heartbeat=0",
                           extra: "\"autostart\": true, \"restart\": {\"policy\": \"on-failure\", \"backoff_ms\": 100}, \"stop_timeout_s\": 5")
            .write(toFile: vms + "/idle.json", atomically: true, encoding: .utf8)
        try "{\"name\": \"bad\", \"memory_mib\": 1}".write(toFile: vms + "/bad.json", atomically: true, encoding: .utf8)
        let (daemon, err) = try Self.startDaemon(definitions: vms, runDirectory: dir + "/run")
        defer { if daemon.isRunning { kill(daemon.processIdentifier, SIGKILL) } }
        let ctl = Self.binary("rtvisorctl")
        let env = ["RTVISOR_API_SOCKET": dir + "/run/api.sock"]
        func state() -> (String, Int32)? {
            guard let vm = Self.listedVM("idle", env: env) else { return nil }
            return ((vm["state"] as? String) ?? "", Int32((vm["pid"] as? Int) ?? 0))
        }
        guard Self.waitFor(20, "idle running", { state()?.0 == "running" }) else { return }
        let first = state()!.1
        let (_, table) = Self.run(ctl, ["list"], env: env)
        #expect(table.contains("idle") && table.contains("Invalid definitions") && table.contains("$.memory_mib"))
        kill(first, SIGKILL)
        guard Self.waitFor(20, "idle restarted", { if let s = state() { return s.0 == "running" && s.1 != first }; return false }) else { return }
        let second = state()!.1
        let (consoleStatus, console) = Self.run(ctl, ["console", "idle", "--timeout", "1"], env: env)
        #expect(consoleStatus == 0)
        #expect(console.contains("IDLE_READY"))
        // rtvisor-guests.service's stop: every guest shut down, waited for; the daemon stays.
        let (shutdownStatus, shutdown) = Self.run(ctl, ["shutdown-guests"], env: env)
        #expect(shutdownStatus == 0, "\(shutdown)")
        #expect(shutdown.contains("idle: asked the guest to shut down (Ctrl-Alt-Del); hard stop after 5 s"), "\(shutdown)")
        #expect(shutdown.contains("idle: stopped (0: guest powered off)") && shutdown.hasSuffix("every guest has ended\n"), "\(shutdown)")
        // Its jail mount point (an empty directory on the host) went with its other runtime files.
        #expect(!FileManager.default.fileExists(atPath: JailLocation.root(vm: "idle")), "\(JailLocation.root(vm: "idle")) left behind")
        #expect(kill(second, 0) != 0, "the VMM outlived rtvisorctl shutdown-guests")
        #expect(daemon.isRunning)
        kill(daemon.processIdentifier, SIGTERM)
        let deadline = Date().addingTimeInterval(20)
        while daemon.isRunning && Date() < deadline { usleep(50_000) }
        #expect(!daemon.isRunning, "rtvisord did not exit after SIGTERM")
        daemon.waitUntilExit()
        #expect(daemon.terminationStatus == 0)
        let log = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        if !FileManager.default.fileExists(atPath: "/run/systemd/journal/socket") {
            // No journald here: the stderr fallback with <N> priorities.
            #expect(log.contains("<3>invalid definition skipped: \(vms)/bad.json: $.memory_mib"))
            #expect(log.contains("restarts in 100 ms"))
            #expect(log.contains("<5>VM idle stopped on request: exit status 0: guest powered off"))
            #expect(log.contains("IDLE_CTRL_ALT_DEL"))
        }
        try? FileManager.default.removeItem(atPath: dir)
    }
}

extension DaemonProcessTests {
    /// SO_PEERCRED: even through a socket file anyone may open, a peer that is neither root nor
    /// in the access group gets 403 for every request, and the daemon logs who was refused.
    @Test(.enabled(if: getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv") && FileManager.default.isExecutableFile(atPath: "/usr/bin/curl"),
                   "needs root, setpriv and curl"))
    func theAPIRefusesPeersOutsideTheAccessGroup() throws {
        let dir = try Self.shortTempDir()
        let vms = dir + "/vms"
        try FileManager.default.createDirectory(atPath: vms, withIntermediateDirectories: true)
        let (daemon, err) = try Self.startDaemon(definitions: vms, runDirectory: dir + "/run")
        defer { if daemon.isRunning { kill(daemon.processIdentifier, SIGKILL) } }
        let socket = dir + "/run/api.sock"
        // Root is served (and the daemon has set the socket's mode by the time it answers).
        guard Self.waitFor(20, "the API answering root", {
            let (status, out) = Self.run("/usr/bin/curl", ["-s", "-w", "\n%{http_code}", "--unix-socket", socket, "http://rtvisor/v1/vms"])
            return status == 0 && out.hasSuffix("\n200")
        }) else { return }
        // Open the file to everyone (and its directories), so only the credential check stands.
        chmod(socket, 0o666)
        chmod(dir + "/run", 0o755)
        chmod(dir, 0o755)
        let (status, out) = Self.run("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/curl", "-s", "-w", "\n%{http_code}",
                                                          "--unix-socket", socket, "http://rtvisor/v1/vms"])
        #expect(status == 0, "curl as nobody: \(out)")
        #expect(out.hasSuffix("\n403"), "nobody got: \(out)")
        #expect(out.contains("uid 65534") && out.contains("may not use rtvisord's API"))
        kill(daemon.processIdentifier, SIGTERM)
        daemon.waitUntilExit()
        let log = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(log.contains("API connection refused: uid 65534"), "daemon log: \(log.suffix(1500))")
        try? FileManager.default.removeItem(atPath: dir)
    }
}

extension DaemonProcessTests {
    /// A daemon killed between spawning a VMM and writing its state file (simulated: kill -9,
    /// then the state file removed): the next daemon finds the VMM by its command line and adopts
    /// it instead of starting a second one (issue 16).
    @Test func aVMMWithoutAStateFileIsAdoptedNotStartedTwice() throws {
        let dir = try Self.shortTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let vms = dir + "/vms"
        try FileManager.default.createDirectory(atPath: vms, withIntermediateDirectories: true)
        try VMM.definition(name: "orphan", kernel: try Env.inmate("idle"), memoryMiB: 32, cmdline: "idle.heartbeat=0",
                           extra: "\"autostart\": true, \"stop_timeout_s\": 5")
            .write(toFile: vms + "/orphan.json", atomically: true, encoding: .utf8)
        let env = ["RTVISOR_API_SOCKET": dir + "/run/api.sock"]
        func pid() -> Int32? { Self.runningPID("orphan", env: env) }
        let (first, _) = try Self.startDaemon(definitions: vms, runDirectory: dir + "/run")
        guard Self.waitFor(20, "orphan running", { pid() != nil }) else { kill(first.processIdentifier, SIGKILL); return }
        let vmm = pid()!
        defer { kill(vmm, SIGKILL) }
        kill(first.processIdentifier, SIGKILL)
        // Dead is enough (Foundation's waitUntilExit does not return for this child here).
        guard Self.waitFor(10, "the first rtvisord gone", { [nil, "Z", "X"].contains(Processes.stateLetter(of: first.processIdentifier)) }) else { return }
        try FileManager.default.removeItem(atPath: dir + "/run/vms/orphan/state.json")
        let (second, err) = try Self.startDaemon(definitions: vms, runDirectory: dir + "/run")
        defer { if second.isRunning { kill(second.processIdentifier, SIGKILL) } }
        guard Self.waitFor(20, "orphan adopted", { pid() != nil }) else { return }
        #expect(pid() == vmm, "a second VMM was started instead of adopting PID \(vmm)")
        #expect(Processes.vmms(running: dir + "/run/vms/orphan/definition.json").map(\.pid) == [vmm])
        #expect(FileManager.default.fileExists(atPath: dir + "/run/vms/orphan/state.json"))
        // SIGINT (Ctrl-C in the foreground) stops the guests, unlike SIGTERM.
        kill(second.processIdentifier, SIGINT)
        second.waitUntilExit()
        // Its parent died: it may stay a zombie until init reaps it.
        #expect([nil, "Z", "X"].contains(Processes.stateLetter(of: vmm)), "the adopted VMM outlived the daemon's stop")
        if !FileManager.default.fileExists(atPath: "/run/systemd/journal/socket") {
            let log = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            #expect(log.contains("left no state file"), "\(log)")
        }
    }

    /// Issue 16: SIGTERM (systemctl stop and restart alike) leaves the guests running and the
    /// next rtvisord re-adopts them; `rtvisorctl shutdown-guests` (rtvisor-guests.service's
    /// stop, at host shutdown) stops them.
    @Test func sigtermLeavesGuestsRunningForTheNextDaemon() throws {
        let dir = try Self.shortTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let vms = dir + "/vms"
        try FileManager.default.createDirectory(atPath: vms, withIntermediateDirectories: true)
        try VMM.definition(name: "kept", kernel: try Env.inmate("idle"), memoryMiB: 32, cmdline: "idle.heartbeat=0",
                           extra: "\"autostart\": true, \"stop_timeout_s\": 5")
            .write(toFile: vms + "/kept.json", atomically: true, encoding: .utf8)
        let ctl = Self.binary("rtvisorctl")
        let env = ["RTVISOR_API_SOCKET": dir + "/run/api.sock"]
        func pid() -> Int32? { Self.runningPID("kept", env: env) }
        let (first, firstErr) = try Self.startDaemon(definitions: vms, runDirectory: dir + "/run")
        defer { if first.isRunning { kill(first.processIdentifier, SIGKILL) } }
        guard Self.waitFor(20, "kept running", { pid() != nil }) else { return }
        let vmm = pid()!
        defer { kill(vmm, SIGKILL) }
        kill(first.processIdentifier, SIGTERM)
        // Dead is enough (Foundation's waitUntilExit does not return for a child whose own child lives on).
        guard Self.waitFor(20, "the first rtvisord gone", { [nil, "Z", "X"].contains(Processes.stateLetter(of: first.processIdentifier)) }) else { return }
        #expect(![nil, "Z", "X"].contains(Processes.stateLetter(of: vmm)), "SIGTERM stopped the guest")
        let (second, _) = try Self.startDaemon(definitions: vms, runDirectory: dir + "/run")
        defer { if second.isRunning { kill(second.processIdentifier, SIGKILL) } }
        guard Self.waitFor(20, "kept re-adopted", { pid() != nil }) else { return }
        #expect(pid() == vmm, "the next rtvisord did not re-adopt PID \(vmm)")
        let (status, out) = Self.run(ctl, ["shutdown-guests"], env: env)
        #expect(status == 0, "\(out)")
        #expect(out.contains("kept: stopped (0: guest powered off)"), "\(out)")
        #expect([nil, "Z", "X"].contains(Processes.stateLetter(of: vmm)), "the guest outlived rtvisorctl shutdown-guests")
        kill(second.processIdentifier, SIGTERM)
        second.waitUntilExit()
        // Read only now: the VMM inherited the first daemon's stderr and held the pipe open.
        if !FileManager.default.fileExists(atPath: "/run/systemd/journal/socket") {
            let log = String(decoding: firstErr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            #expect(log.contains("rtvisord stopping (SIGTERM): 1 guest(s) keep running"), "\(log.suffix(1500))")
        }
    }

    /// Issue 16: `rtvisorctl validate` runs the parser itself, with the caller's permissions and
    /// without a daemon, and reports what the daemon's validation reported (files included).
    @Test func validateWorksLocallyWithoutADaemon() throws {
        let dir = try Self.shortTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        FileManager.default.createFile(atPath: dir + "/vmlinux", contents: Data("x".utf8))
        try #"{"name": "good", "memory_mib": 64, "kernel": "vmlinux"}"#.write(toFile: dir + "/good.json", atomically: true, encoding: .utf8)
        try #"{"name": "bad one", "memory_mib": 1, "kernel": "missing", "vcpuz": 2}"#.write(toFile: dir + "/bad.json", atomically: true, encoding: .utf8)
        let env = ["RTVISOR_API_SOCKET": dir + "/no-daemon.sock"]
        let (okStatus, ok) = Self.run(Self.binary("rtvisorctl"), ["validate", dir + "/good.json"], env: env)
        #expect(okStatus == 0 && ok == "\(dir)/good.json: OK (good)\n", "\(ok)")
        let (badStatus, bad) = Self.run(Self.binary("rtvisorctl"), ["validate", dir + "/bad.json"], env: env)
        #expect(badStatus == 1)
        #expect(bad.split(separator: "\n").map(String.init) == [
            "\(dir)/bad.json: $.vcpuz: unknown key (did you mean \"vcpus\"?)",
            "\(dir)/bad.json: $.name: must be 1–64 characters of letters, digits, '-' and '_', got \"bad one\"",
            "\(dir)/bad.json: $.memory_mib: must be an integer from 8 to 1048576, got 1",
            "\(dir)/bad.json: $.kernel: \(dir)/missing: No such file or directory",
        ], "\(bad)")
    }
}

extension DaemonProcessTests {
    /// One typing session per console (issue 16): the first client to type holds it, a second is
    /// told it is read-only, and `--force`'s request takes the seat, telling the holder.
    @Test func aConsoleHasOneTypingSessionAndForceTakesItOver() throws {
        let dir = try Self.shortTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let socket = dir + "/c.sock"
        let config = try VMM.writeDefinition(VMM.definition(name: "seat", kernel: try Env.inmate("idle"), memoryMiB: 32, cmdline: "idle.heartbeat=0"),
                                             in: URL(fileURLWithPath: dir))
        let vmm = Process()
        vmm.executableURL = URL(fileURLWithPath: Env.vmmBinary)
        vmm.arguments = ["--config", config, "--no-console-input", "--console-socket", socket]
        vmm.standardOutput = FileHandle.nullDevice
        vmm.standardError = FileHandle.nullDevice
        try vmm.run()
        defer { kill(vmm.processIdentifier, SIGKILL) }
        guard Self.waitFor(10, "console socket", { FileManager.default.fileExists(atPath: socket) }) else { return }
        /// Reads from `fd` until `text` arrives or 5 s pass.
        func received(_ fd: Int32, _ text: String) -> Bool {
            var got: [UInt8] = []
            var buf = [UInt8](repeating: 0, count: 4096)
            let deadline = Date().addingTimeInterval(5)
            while Date() < deadline {
                let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                if n > 0 { got += buf[0..<n] } else if n == 0 { break }
                if String(decoding: got, as: UTF8.self).contains(text) { return true }
            }
            return false
        }
        guard let a = connectToUnixSocket(socket, receiveTimeoutSeconds: 1), let b = connectToUnixSocket(socket, receiveTimeoutSeconds: 1) else {
            Issue.record("cannot connect to \(socket)"); return
        }
        defer { close(a); close(b) }
        _ = "a".withCString { send(a, $0, 1, 0) }
        usleep(200_000)
        _ = "b".withCString { send(b, $0, 1, 0) }
        #expect(received(b, "read-only here"), "the second session was not told it is read-only")
        guard let c = connectToUnixSocket(socket, receiveTimeoutSeconds: 1) else { Issue.record("third connect"); return }
        defer { close(c) }
        _ = ConsoleSeat.takeOverRequest.withUnsafeBytes { send(c, $0.baseAddress, $0.count, 0) }
        #expect(received(a, "took over"), "the holder was not told of the take-over")
    }
}
