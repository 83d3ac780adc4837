import Foundation
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// The metrics listeners of a real rtvisord (docs/metrics.md): metrics.sock serves any local
/// user read-only, the TCP listener rtvisord.json enables serves the same, neither lets a
/// request change a VM, and api.sock still refuses a stranger. The front runs under its
/// seccomp filter (enforce) throughout: a forbidden syscall would have ended it.
@Suite(.enabled(if: Env.kvmAvailable, Env.noKVMReason), .serialized)
struct MetricsDaemonTests {
    typealias D = DaemonProcessTests
    typealias Daemon = SnapshotDaemonTests.Daemon
    /// A name no other suite uses: jails and real-time state are per VM name, host-wide, and
    /// suites run in parallel.
    static let vm = "metrics-idle"

    /// A TCP port nothing listens on now (the kernel's pick, through Python: no socket
    /// structures in Swift here).
    static func freePort() throws -> Int {
        let (_, out) = D.run("/usr/bin/python3", ["-c", "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"])
        return try #require(Int(out.trimmingCharacters(in: .whitespacesAndNewlines)))
    }

    /// curl's status line and body; `as nobody`: run as uid/gid 65534 without groups (setpriv).
    static func curl(_ args: [String], asNobody: Bool = false) -> (status: Int, body: String) {
        let tool = asNobody ? "/usr/bin/setpriv" : "/usr/bin/curl"
        let prefix = asNobody ? ["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/curl"] : []
        let (_, out) = D.run(tool, prefix + ["-s", "-w", "\n%{http_code}"] + args)
        let lines = out.split(separator: "\n", omittingEmptySubsequences: false)
        return (Int(lines.last ?? "") ?? 0, lines.dropLast().joined(separator: "\n"))
    }

    @Test func anyLocalUserAndTheTCPListenerReadMetricsButChangeNothing() throws {
        let port = try Self.freePort()
        let settingsDir = try D.shortTempDir()
        try "{\"metrics\": {\"tcp\": {\"enabled\": true, \"port\": \(port)}}}".write(toFile: settingsDir + "/rtvisord.json", atomically: true, encoding: .utf8)
        let d = try Daemon(definitions: [(Self.vm, try EventsDaemonTests.idle(Self.vm, extra: "\"autostart\": true"))],
                           arguments: ["--settings", settingsDir + "/rtvisord.json"])
        defer { d.stop() }
        guard d.waitRunning([Self.vm]) else { Issue.record("\(Self.vm) not running: \(d.log)"); return }
        // Others may reach the socket: the test's directory is private by default.
        chmod(d.dir, 0o711)
        let metricsSocket = d.dir + "/run/metrics.sock"
        var st = stat()
        #expect(stat(metricsSocket, &st) == 0 && st.st_mode & 0o777 == 0o666, "mode \(String(st.st_mode & 0o777, radix: 8))")

        let running = "rtvisor_vm_state{vm=\"\(Self.vm)\",state=\"running\"} 1"
        let tcp = Self.curl(["http://127.0.0.1:\(port)/metrics"])
        #expect(tcp.status == 200 && tcp.body.contains(running), "\(tcp)")
        let unix = Self.curl(["--unix-socket", metricsSocket, "http://localhost/metrics"], asNobody: true)
        #expect(unix.status == 200 && unix.body.contains(running), "\(unix)")
        let page = Self.curl(["--unix-socket", metricsSocket, "http://localhost/"], asNobody: true)
        #expect(page.status == 200 && page.body.hasPrefix("<!doctype html>"))
        // api.sock: the same stranger cannot even connect (mode 0660; curl's status 000), root
        // gets /metrics there too.
        #expect(Self.curl(["--unix-socket", d.dir + "/run/api.sock", "http://localhost/metrics"], asNobody: true).status == 0)
        #expect(Self.curl(["--unix-socket", d.dir + "/run/api.sock", "http://localhost/metrics"]).body.contains(running))

        for args in [["-X", "POST", "http://127.0.0.1:\(port)/v1/vms/\(Self.vm)/stop"], ["-X", "POST", "--unix-socket", metricsSocket, "http://localhost/v1/vms/\(Self.vm)/stop"],
                     ["http://127.0.0.1:\(port)/v1/vms/\(Self.vm)"], ["-X", "POST", "http://127.0.0.1:\(port)/metrics"]] {
            let r = Self.curl(args)
            #expect([404, 405].contains(r.status), "\(args): \(r)")
        }
        usleep(300_000)
        #expect(d.state(Self.vm) == "running")
        // The front was never replaced (a seccomp kill would have been logged and counted).
        #expect(!d.log.contains("API front process"), "\(d.log)")
    }

    @Test func theActionsGroupStopsAndStartsWithTheTokenOnly() throws {
        let port = try Self.freePort()
        let settingsDir = try D.shortTempDir()
        // Group root: it exists everywhere; in production a group of operators.
        try "{\"metrics\": {\"dashboard_actions_group\": \"root\", \"tcp\": {\"enabled\": true, \"port\": \(port)}}}"
            .write(toFile: settingsDir + "/rtvisord.json", atomically: true, encoding: .utf8)
        let d = try Daemon(definitions: [(Self.vm, try EventsDaemonTests.idle(Self.vm, extra: "\"autostart\": true"))],
                           arguments: ["--settings", settingsDir + "/rtvisord.json"])
        defer { d.stop() }
        guard d.waitRunning([Self.vm]) else { Issue.record("\(Self.vm) not running: \(d.log)"); return }
        chmod(d.dir, 0o711)
        let tokenFile = d.dir + "/run/dashboard-token"
        var st = stat()
        #expect(stat(tokenFile, &st) == 0 && st.st_mode & 0o777 == 0o640 && st.st_uid == 0 && st.st_gid == 0)
        let token = try String(contentsOfFile: tokenFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(token.count == 64)
        // Not for others: nobody cannot read it.
        #expect(D.run("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", "/bin/cat", tokenFile]).0 != 0)

        let stop = "http://127.0.0.1:\(port)/v1/vms/\(Self.vm)/stop"
        #expect(Self.curl(["http://127.0.0.1:\(port)/dashboard/config"]).body.hasPrefix("{\"actions\":true,"))
        #expect(Self.curl(["-X", "POST", stop]).status == 403)
        #expect(Self.curl(["-X", "POST", "-H", "Authorization: Bearer \(String(repeating: "0", count: 64))", stop]).status == 403)
        usleep(300_000)
        #expect(d.state(Self.vm) == "running")
        let stopped = Self.curl(["-X", "POST", "-H", "Authorization: Bearer \(token)", stop])
        #expect(stopped.status == 200, "\(stopped)")
        #expect(D.waitFor(20, "\(Self.vm) stopped") { d.state(Self.vm) == "stopped" })
        let started = Self.curl(["-X", "POST", "-H", "Authorization: Bearer \(token)", "--unix-socket", d.dir + "/run/metrics.sock",
                                 "http://localhost/v1/vms/\(Self.vm)/start"], asNobody: true)
        #expect(started.status == 200, "the token, not the uid, decides: \(started)")
        #expect(d.waitRunning([Self.vm]))
    }

    @Test func aFileInMetricsSocksPlaceCostsTheMetricsNotTheAPI() throws {
        let dir = try D.shortTempDir()
        try FileManager.default.createDirectory(atPath: dir + "/run", withIntermediateDirectories: true)
        try "not a socket".write(toFile: dir + "/run/metrics.sock", atomically: true, encoding: .utf8)
        let d = try Daemon(definitions: [(Self.vm, try EventsDaemonTests.idle(Self.vm, extra: "\"autostart\": true"))], reusing: dir)
        defer { d.stop() }
        #expect(d.waitRunning([Self.vm]), "\(d.log)")
        #expect(Self.curl(["--unix-socket", dir + "/run/api.sock", "http://localhost/metrics"]).status == 200)
        #expect((try? String(contentsOfFile: dir + "/run/metrics.sock", encoding: .utf8)) == "not a socket", "left alone")
        let log = d.log + ((try? String(contentsOfFile: dir + "/run/rtvisord.log", encoding: .utf8)) ?? "")
        #expect(log.contains("taken by something other than a socket"), "\(log)")
    }

    @Test func aBadSettingsFileStopsRtvisordWithThePathAndReason() throws {
        let dir = try D.shortTempDir()
        try "{\"metrics\": {\"tcp\": {\"port\": 0}}}".write(toFile: dir + "/rtvisord.json", atomically: true, encoding: .utf8)
        let (status, out) = D.run(D.binary("rtvisord"), ["--definitions", dir, "--run-directory", dir + "/run", "--settings", dir + "/rtvisord.json"])
        #expect(status == 1)
        let log = out + ((try? String(contentsOfFile: dir + "/run/rtvisord.log", encoding: .utf8)) ?? "")
        #expect(log.contains("\(dir)/rtvisord.json: $.metrics.tcp.port: must be an integer from 1 to 65535, got 0"), "\(log)")
        // `rtvisord --check` reports it too, without starting.
        let (checkStatus, check) = D.run(D.binary("rtvisord"), ["--check", "--definitions", dir, "--settings", dir + "/rtvisord.json"])
        #expect(checkStatus == 1 && check.contains("$.metrics.tcp.port: must be an integer from 1 to 65535, got 0"), "\(check)")
    }
}
