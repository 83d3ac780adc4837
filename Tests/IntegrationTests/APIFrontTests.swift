import API
import Foundation
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// rtvisord's API front (docs/sandbox.md): the process that parses every client's bytes is
/// jailed, unprivileged and under the `api` seccomp filter in every thread; a forbidden syscall
/// in it kills only the front, rtvisord logs the syscall and starts a new front.
@Suite(.serialized)
struct APIFrontTests {
    struct Daemon {
        let process: Process
        let log: Pipe
        let dir: String
        var socket: String { dir + "/run/api.sock" }

        init(environment extra: [String: String] = [:]) throws {
            dir = try DaemonProcessTests.shortTempDir()
            try FileManager.default.createDirectory(atPath: dir + "/vms", withIntermediateDirectories: true)
            process = Process()
            process.executableURL = URL(fileURLWithPath: DaemonProcessTests.binary("rtvisord"))
            process.arguments = ["--definitions", dir + "/vms", "--run-directory", dir + "/run", "--vmm", Env.vmmBinary, "--log-level", "debug"]
            process.environment = ProcessInfo.processInfo.environment.filter { $0.key != "NOTIFY_SOCKET" }.merging(extra) { $1 }
            log = Pipe()
            process.standardError = log
            process.standardOutput = FileHandle.nullDevice
            try process.run()
        }

        /// SIGTERM, then the daemon's whole log (the front's lines included: it shares stderr).
        func stop() -> String {
            if process.isRunning {
                kill(process.processIdentifier, SIGTERM)
                process.waitUntilExit()
            }
            let text = String(decoding: log.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            try? FileManager.default.removeItem(atPath: dir)
            return text
        }

        /// The daemon's child started with `--api-front`.
        var frontPID: pid_t? {
            for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
                guard let pid = pid_t(entry), let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                      let close = stat.lastIndex(of: ")") else { continue }
                let fields = stat[stat.index(after: close)...].split(separator: " ")
                guard fields.count > 1, pid_t(fields[1]) == process.processIdentifier,
                      let cmd = try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/cmdline")),
                      String(decoding: cmd, as: UTF8.self).contains("--api-front") else { continue }
                return pid
            }
            return nil
        }
    }

    /// One HTTP/1.1 request over the unix socket; the whole response ("" if the peer hung up).
    static func request(_ socketPath: String, _ method: String, _ target: String, body: String = "") -> String {
        unixSocketExchange(socketPath, httpRequest(method, target, body: body), receiveTimeoutSeconds: 20) ?? ""
    }

    static func status(_ pid: pid_t, task: String? = nil) -> [String: String] {
        let path = task.map { "/proc/\(pid)/task/\($0)/status" } ?? "/proc/\(pid)/status"
        var fields: [String: String] = [:]
        for line in ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: "\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            fields[String(line[..<colon])] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        return fields
    }

    @Test func theFrontIsJailedUnprivilegedAndFilteredInEveryThread() throws {
        let daemon = try Daemon()
        var log = ""
        defer { if log.isEmpty { _ = daemon.stop() } }
        var list = ""
        _ = DaemonProcessTests.waitFor(20, "the API answering") {
            list = Self.request(daemon.socket, "GET", "/v1/vms")
            return list.hasPrefix("HTTP/1.1 200")
        }
        #expect(list.contains("\"vms\":[]"), "\(list)")
        // Every kind of call crosses the control socket: an error, a body, a 404 route.
        #expect(Self.request(daemon.socket, "GET", "/v1/vms/nope").hasPrefix("HTTP/1.1 404"))
        let validate = Self.request(daemon.socket, "POST", "/v1/validate", body: #"{"definition": "{\"name\": \"x\"}"}"#)
        #expect(validate.hasPrefix("HTTP/1.1 200") && validate.contains("\"valid\":false") && validate.contains("$.kernel"), "\(validate)")
        #expect(Self.request(daemon.socket, "GET", "/v1/daemon").contains("\"pid\":\(daemon.process.processIdentifier)"))
        // The hook route is a 404 like any unknown route unless the test hook is armed.
        #expect(Self.request(daemon.socket, "POST", APIFront.testHookTarget).hasPrefix("HTTP/1.1 404"))

        let front = try #require(daemon.frontPID, "no --api-front child of rtvisord")
        let st = Self.status(front)
        #expect(st["Seccomp"] == "2", "\(st)")
        #expect(st["NoNewPrivs"] == "1", "\(st)")
        if geteuid() == 0 {
            let uid = String(APIFront.uid)
            #expect(st["Uid"]?.split(whereSeparator: { $0 == "\t" || $0 == " " }).map(String.init) == [uid, uid, uid, uid], "\(st)")
            #expect(st["Gid"]?.split(whereSeparator: { $0 == "\t" || $0 == " " }).map(String.init) == [uid, uid, uid, uid], "\(st)")
            #expect(st["CapEff"] == "0000000000000000" && st["CapPrm"] == "0000000000000000" && st["CapBnd"] == "0000000000000000", "\(st)")
            // Its own mount namespace, with no /etc, no definitions and no daemon state.
            let root = "/proc/\(front)/root"
            #expect(!FileManager.default.fileExists(atPath: root + "/etc/passwd"))
            #expect(!FileManager.default.fileExists(atPath: root + daemon.dir + "/vms"))
            #expect(!FileManager.default.fileExists(atPath: root + "/dev/kvm"))
            #expect(FileManager.default.fileExists(atPath: root + "/proc/self"))
            let ns = { (pid: pid_t) in try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/ns/mnt") }
            #expect(ns(front) != nil && ns(front) != ns(getpid()))
        }
        // The event loop, Swift's worker threads and the control reader all inherited the filter.
        let tasks = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(front)/task")
        #expect(tasks.count >= 3, "threads: \(tasks)")
        var names: [String] = []
        for t in tasks {
            let ts = Self.status(front, task: t)
            names.append(ts["Name"] ?? "?")
            #expect(ts["Seccomp"] == "2", "thread \(t) (\(ts["Name"] ?? "?")) is not filtered")
        }
        #expect(names.contains { $0.hasPrefix("NIO-ELT") }, "\(names)")
        #expect(names.contains("api-control"), "\(names)")
        // The daemon itself is not confined (it starts and jails the VMMs).
        #expect(Self.status(daemon.process.processIdentifier)["Seccomp"] == "0")

        log = daemon.stop()
        #expect(kill(front, 0) != 0, "the front outlived rtvisord")
        #expect(!log.contains("killed by its seccomp filter"), "\(log)")
    }

    @Test func aForbiddenSyscallKillsOnlyTheFrontAndRtvisordReportsItAndStartsANewOne() throws {
        let daemon = try Daemon(environment: ["RTVISOR_TEST_FORBIDDEN_SYSCALL": "api"])
        _ = DaemonProcessTests.waitFor(20, "the API answering") { Self.request(daemon.socket, "GET", "/v1/vms").hasPrefix("HTTP/1.1 200") }
        let first = try #require(daemon.frontPID)
        // The hook runs socket(AF_INET) on the Swift worker thread handling the request.
        let answer = Self.request(daemon.socket, "POST", APIFront.testHookTarget)
        #expect(answer.isEmpty, "the killed front answered: \(answer)")
        var second: pid_t?
        let back = DaemonProcessTests.waitFor(20, "a new front answering") {
            second = daemon.frontPID
            return second != nil && second != first && Self.request(daemon.socket, "GET", "/v1/vms").hasPrefix("HTTP/1.1 200")
        }
        #expect(back)
        #expect(daemon.process.isRunning)
        #expect(Self.request(daemon.socket, "GET", "/v1/daemon").contains("\"pid\":\(daemon.process.processIdentifier)"))
        let log = daemon.stop()
        if FileManager.default.fileExists(atPath: "/run/systemd/journal/socket") { return }
        let entry = log.split(separator: "\n").first { $0.contains("API front process \(first) killed by its seccomp filter") }
        #expect(entry != nil, "daemon log:\n\(log)")
        if let entry {
            #expect(entry.hasPrefix("<2>"), "\(entry)")   // critical
            #expect(entry.contains("(api filter) of rtvisord's API front made forbidden syscall 41 (socket)"), "\(entry)")
            #expect(entry.contains("API_SECCOMP_SYSCALL=socket"), "\(entry)")
            #expect(entry.contains("RTVISOR_EVENT=api-front-ended"), "\(entry)")
        }
    }
}
