import API
import APIModels
import Daemon
import Foundation
import Synchronization
import SystemPackage
import VMMInterface
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// The control socket between rtvisord's API front and the daemon (docs/sandbox.md): the router
/// answers the same through `RemoteVMControl` → `ControlServer` as in-process, and a broken
/// peer ends the channel with a reason instead of hanging or crashing either side.
@Suite struct ControlChannelTests {
    static func pair() throws -> (FileDescriptor, FileDescriptor) {
        var fds: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else { throw Errno(rawValue: errno) }
        return (FileDescriptor(rawValue: fds[0]), FileDescriptor(rawValue: fds[1]))
    }

    static let requests: [APIRequest] = [
        APIRequest(method: "GET", target: "/v1/daemon"),
        APIRequest(method: "GET", target: "/v1/vms"),
        APIRequest(method: "GET", target: "/v1/vms/web"),
        APIRequest(method: "GET", target: "/v1/vms/nope"),
        APIRequest(method: "POST", target: "/v1/vms/web/stop?force=1"),
        APIRequest(method: "POST", target: "/v1/vms/web/stop", body: Array(#"{"force": false}"#.utf8)),
        APIRequest(method: "POST", target: "/v1/vms/db/start"),
        APIRequest(method: "POST", target: "/v1/vms/db/pause"),
        APIRequest(method: "POST", target: "/v1/vms/web/resume"),
        APIRequest(method: "POST", target: "/v1/vms/web/reboot"),
        APIRequest(method: "POST", target: "/v1/vms/web/reset"),
        // The event stream's one-shot form and its long poll's errors cross the socket too.
        APIRequest(method: "GET", target: "/v1/events"),
        APIRequest(method: "GET", target: "/v1/events?since=0&vm=web"),
        APIRequest(method: "GET", target: "/v1/events?vm=ghost"),
        APIRequest(method: "POST", target: "/v1/reload"),
        APIRequest(method: "POST", target: "/v1/validate", body: Array(#"{"definition": "{\"name\": \"a b\"}"}"#.utf8)),
        APIRequest(method: "GET", target: "/v1/rt-check"),
        APIRequest(method: "GET", target: "/v1/vms/db/rt-check"),
        APIRequest(method: "GET", target: "/v1/vms/web/latency"),
        APIRequest(method: "GET", target: "/v1/vms/db/latency"),
        APIRequest(method: "GET", target: "/v1/stats"),
        APIRequest(method: "GET", target: "/v1/vms/web/stats"),
        APIRequest(method: "GET", target: "/v1/vms/ghost/stats"),
        APIRequest(method: "POST", target: "/v1/guests/shutdown"),
        APIRequest(method: "POST", target: "/v1/guests/start"),
        APIRequest(method: "DELETE", target: "/v1/vms"),
        // invalid-definition with its problems crosses the socket intact.
        APIRequest(method: "POST", target: "/v1/snapshots/restore", body: Array("{\"directory\": \"/snapshots/bad\"}".utf8)),
    ]

    @Test func theRouterAnswersTheSameThroughTheControlSocket() async throws {
        let (daemonEnd, frontEnd) = try Self.pair()
        let local = APIRouter(control: FakeControl())
        let closed = Mutex<String?>(nil)
        let remoteControl = RemoteVMControl(fd: frontEnd) { reason in closed.withLock { $0 = reason } }
        let remote = APIRouter(control: remoteControl)
        let served = Task { await ControlServer.serve(daemonEnd, control: FakeControl()) }
        for request in Self.requests {
            let a = await local.handle(request), b = await remote.handle(request)
            #expect(a == b, "\(request.method) \(request.target): in-process \(a.status) \(a.text) — through the socket \(b.status) \(b.text)")
        }
        // Concurrent calls (more than the daemon answers at once) are matched to their replies by id.
        let statuses = await withTaskGroup(of: (Int, Int).self) { group in
            for i in 0..<(3 * ControlServer.maxCallsInFlight) {
                group.addTask { (i, await remote.handle(APIRequest(method: "GET", target: i % 2 == 0 ? "/v1/vms/web" : "/v1/vms/nope")).status) }
            }
            return await group.reduce(into: [:]) { $0[$1.0] = $1.1 }
        }
        #expect((0..<(3 * ControlServer.maxCallsInFlight)).allSatisfy { statuses[$0] == ($0 % 2 == 0 ? 200 : 404) })
        // The front closing its end ends the daemon's server with the reason.
        _ = shutdown(frontEnd.rawValue, Int32(SHUT_RDWR))
        let reason = await served.value
        #expect(reason == "the API front closed the control socket")
        try? daemonEnd.close()
    }

    /// Replies come back in completion order, not call order: each is matched by its id.
    @Test func repliesOvertakingEachOtherReachTheirCalls() async throws {
        let (daemonEnd, frontEnd) = try Self.pair()
        // "slow-…" answers once every "fast-…" call was answered (or after 10 s: a server that
        // answers in order never gets there), the rest at once: the later calls finish first.
        let fastAnswered = FastAnswers(expected: 4)
        let served = Task { await ControlServer.serve(daemonEnd, control: SlowControl(fastAnswered: fastAnswered)) }
        let remote = RemoteVMControl(fd: frontEnd) { _ in }
        let order = CompletionOrder()
        let names = (0..<8).map { $0 % 2 == 0 ? "slow-\($0)" : "fast-\($0)" }
        await withTaskGroup(of: Void.self) { group in
            for (i, name) in names.enumerated() {
                group.addTask {
                    try? await Task.sleep(for: .milliseconds(10 * i))
                    let r = try? await remote.inspect(name)
                    #expect(r?.summary.name == name, "the reply to inspect(\(name)) was \(String(describing: r?.summary.name))")
                    order.names.withLock { $0.append(name) }
                }
            }
        }
        let finished = order.names.withLock { $0 }
        #expect(finished.firstIndex(of: "fast-7")! < finished.firstIndex(of: "slow-0")!, "\(finished)")
        _ = shutdown(frontEnd.rawValue, Int32(SHUT_RDWR))
        _ = await served.value
        for fd in [daemonEnd, frontEnd] { try? fd.close() }
    }

    /// A result too large for one frame is refused as an error, and the channel stays usable.
    @Test func aResultLargerThanAFrameIsRefused() async throws {
        let (daemonEnd, frontEnd) = try Self.pair()
        let served = Task { await ControlServer.serve(daemonEnd, control: SlowControl()) }
        let remote = RemoteVMControl(fd: frontEnd) { _ in }
        do {
            _ = try await remote.inspect("huge")
            Issue.record("a 5 MB result crossed the control socket")
        } catch {
            #expect(error.description.contains("larger than the control socket"), "\(error)")
        }
        #expect((try? await remote.inspect("fast-1"))?.summary.name == "fast-1")
        _ = shutdown(frontEnd.rawValue, Int32(SHUT_RDWR))
        _ = await served.value
        for fd in [daemonEnd, frontEnd] { try? fd.close() }
    }

    /// A validate answer does not grow with (problems × the client's file name).
    @Test func validateAnswersAreBounded() {
        let keys = (0..<150).map { "\"unknown\($0)\": 1" }.joined(separator: ", ")
        let request = ValidateRequest(definition: "{\(keys)}", file: String(repeating: "f", count: 100_000), baseDirectory: nil)
        let r = Supervisor.validate(request, definitions: "/nonexistent")
        #expect(!r.valid)
        #expect(r.problems.count == Supervisor.maxValidateProblems + 1, "\(r.problems.count) problems")
        #expect(r.problems.last?.reason.hasSuffix("more problems not shown") == true, "\(String(describing: r.problems.last))")
        #expect(r.problems.allSatisfy { $0.file.count <= 1024 })
    }

    /// Issue 16: the daemon validates for any local client as root; whether an absolute path
    /// exists must not show in the answer, and the client's base directory is ignored.
    @Test func apiValidateRevealsNoFileExistence() throws {
        let dir = try makeTemporaryDirectory("rtvisord-oracle")
        FileManager.default.createFile(atPath: dir + "/secret", contents: Data("x".utf8))
        func answer(_ kernel: String, base: String? = nil) -> ValidateResult {
            Supervisor.validate(ValidateRequest(definition: "{\"name\": \"v\", \"memory_mib\": 64, \"kernel\": \"\(kernel)\"}",
                                                file: "v.json", baseDirectory: base), definitions: "/etc/rtvisor/vms")
        }
        let present = answer(dir + "/secret"), absent = answer(dir + "/no-such-file")
        #expect(present == absent, "\(present) vs \(absent)")
        #expect(present.valid)
        #expect(answer("secret", base: dir) == answer("no-such-file", base: dir), "base_directory is ignored")
    }

    @Test func aMalformedFrameEndsTheChannelAndTheFrontsCallsFail() async throws {
        let (daemonEnd, frontEnd) = try Self.pair()
        let served = Task { await ControlServer.serve(daemonEnd, control: FakeControl()) }
        // A length past the limit: the daemon shuts the socket down rather than allocate it.
        try ControlFrame.write([0xFF, 0xFF, 0xFF, 0x7F, 1, 2, 3], to: frontEnd)
        let reason = await served.value
        #expect(reason.contains("frame length 2147483647 outside 8…"), "\(reason)")
        // A call that is not a ControlCall: refused the same way.
        let (d2, f2) = try Self.pair()
        let served2 = Task { await ControlServer.serve(d2, control: FakeControl()) }
        try ControlFrame.write(ControlFrame.encode(id: 7, payload: Array(#"{"exec": {"path": "/bin/sh"}}"#.utf8)), to: f2)
        #expect(await served2.value.contains("call 7 is not a ControlCall"))
        // The front's side: rtvisord gone → its pending and later calls fail, onClose runs.
        let closed = Mutex<String?>(nil)
        let remote = RemoteVMControl(fd: frontEnd) { reason in closed.withLock { $0 = reason } }
        do {
            _ = try await remote.list()
            Issue.record("a call over a dead control socket succeeded")
        } catch {
            #expect(error.description.contains("rtvisord is not answering") || error.description.contains("cannot reach rtvisord"), "\(error)")
        }
        #expect(DaemonTestsWait.until(5) { closed.withLock { $0 } != nil })
        for fd in [daemonEnd, frontEnd, d2, f2] { try? fd.close() }
    }
}

enum DaemonTestsWait {
    static func until(_ seconds: Double, _ ok: () -> Bool) -> Bool {
        let end = Date().addingTimeInterval(seconds)
        while Date() < end { if ok() { return true }; usleep(20_000) }
        return false
    }
}

final class CompletionOrder: Sendable { let names = Mutex<[String]>([]) }

/// Answers `inspect` for any name: "slow-…" after 2 s (a margin for a loaded machine), "huge" with a 5 MB command line.
/// How many "fast-…" calls `SlowControl` answered; its "slow-…" calls wait for `expected`.
final class FastAnswers: Sendable {
    let expected: Int
    let count = Mutex(0)
    init(expected: Int) { self.expected = expected }
}

struct SlowControl: VMControl {
    /// nil: "slow-…" calls answer after 2 s.
    var fastAnswered: FastAnswers? = nil
    func detail(_ name: String, cmdline: String = "") -> VMDetail {
        VMDetail(summary: VMSummary(name: name, state: .running, pid: 1, autostart: false, restartPolicy: "no", restarts: 0, pendingChange: false,
                                    definitionFile: "/x.json", since: 0, lastExit: nil),
                 vcpus: 1, memoryMiB: 32, kernel: "/k", initrd: nil, cmdline: cmdline, consoleSocket: "/c", cgroup: nil, stopTimeoutSeconds: 30)
    }
    func inspect(_ name: String) async throws(ControlError) -> VMDetail {
        if name.hasPrefix("slow-") {
            if let fastAnswered {
                let deadline = ContinuousClock.now + .seconds(10)
                while fastAnswered.count.withLock({ $0 }) < fastAnswered.expected && ContinuousClock.now < deadline {
                    try? await Task.sleep(for: .milliseconds(10))
                }
            } else {
                try? await Task.sleep(for: .seconds(2))
            }
        }
        if name.hasPrefix("fast-") { fastAnswered?.count.withLock { $0 += 1 } }
        return detail(name, cmdline: name == "huge" ? String(repeating: "x", count: 5 << 20) : "")
    }
    func list() async throws(ControlError) -> VMList { VMList(vms: [], invalidDefinitions: []) }
    func start(_ name: String) async throws(ControlError) -> ActionResult { throw .failed("no") }
    func stop(_ name: String, force: Bool) async throws(ControlError) -> ActionResult { throw .failed("no") }
    func reboot(_ name: String) async throws(ControlError) -> ActionResult { throw .failed("no") }
    func reset(_ name: String) async throws(ControlError) -> ActionResult { throw .failed("no") }
    func events(after: UInt64?, vm: String?, waitSeconds: Int) async throws(ControlError) -> EventBatch { throw .failed("no") }
    func pause(_ name: String) async throws(ControlError) -> ActionResult { throw .failed("no") }
    func resume(_ name: String) async throws(ControlError) -> ActionResult { throw .failed("no") }
    func validate(_ request: ValidateRequest) async throws(ControlError) -> ValidateResult { throw .failed("no") }
    func reload() async throws(ControlError) -> ReloadResult { throw .failed("no") }
    func info() async throws(ControlError) -> DaemonInfo { throw .failed("no") }
    func realtimeCheck(_ name: String?) async throws(ControlError) -> [RealtimeCheck] { throw .failed("no") }
    func latency(_ name: String) async throws(ControlError) -> LatencySnapshot { throw .failed("no") }
    func stats(_ name: String?) async throws(ControlError) -> StatsList { throw .failed("no") }
    func consoleTail(_ name: String, lines: Int) async throws(ControlError) -> ConsoleTail { throw .failed("no") }
    func shutdownGuests() async throws(ControlError) -> GuestsResult { throw .failed("no") }
    func startGuests() async throws(ControlError) -> GuestsResult { throw .failed("no") }
    func snapshot(_ name: String, _ options: SnapshotOptions) async throws(ControlError) -> SnapshotResult { throw .failed("no") }
    func snapshots(vm: String?) async throws(ControlError) -> SnapshotList { throw .failed("no") }
    func restore(_ request: RestoreRequest) async throws(ControlError) -> RestoredVM { throw .failed("no") }
    func clone(_ name: String, _ request: CloneRequest) async throws(ControlError) -> CloneResult { throw .failed("no") }
    func migrate(_ name: String, _ request: MigrateRequest) async throws(ControlError) -> MigrateResult { throw .failed("no") }
    func migrationStatus(_ name: String) async throws(ControlError) -> MigrationStatus { throw .failed("no") }
    func upgrade(_ name: String) async throws(ControlError) -> UpgradeResult { throw .failed("no") }
    func receiveMigration(_ request: IncomingRequest) async throws(ControlError) -> IncomingMigration { throw .failed("no") }
    func incomingMigrations() async throws(ControlError) -> IncomingList { throw .failed("no") }
    func incomingMigration(_ id: String) async throws(ControlError) -> IncomingMigration { throw .failed("no") }
}
