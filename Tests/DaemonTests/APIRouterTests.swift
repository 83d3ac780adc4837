import API
import APIModels
import Daemon
import Foundation
import Logging
import Testing
import TestSupport

/// A VMControl that records calls and answers from a fixed table.
actor FakeControl: VMControl {
    var calls: [String] = []
    var vms: [String: VMStateName] = ["web": .running, "db": .stopped]

    func summary(_ name: String) -> VMSummary {
        VMSummary(name: name, state: vms[name]!, pid: vms[name] == .running ? 42 : nil, autostart: true, restartPolicy: "on-failure",
                  restarts: 0, pendingChange: false, definitionFile: "/etc/rtvisor/vms/\(name).json", since: 0, lastExit: nil)
    }

    func list() -> VMList {
        calls.append("list")
        return VMList(vms: vms.keys.sorted().map(summary), invalidDefinitions: [DefinitionProblem(file: "/etc/rtvisor/vms/bad.json", path: "$.vcpus", reason: "must be an integer")])
    }

    func inspect(_ name: String) throws(ControlError) -> VMDetail {
        calls.append("inspect \(name)")
        guard vms[name] != nil else { throw .notFound("no VM named \"\(name)\"") }
        return VMDetail(summary: summary(name), vcpus: 1, memoryMiB: 32, kernel: "/k", initrd: nil, cmdline: "", consoleSocket: "/run/rtvisor/vms/\(name)/console.sock", cgroup: nil, stopTimeoutSeconds: 30)
    }

    func act(_ action: String, _ name: String, requires: VMStateName, to: VMStateName) throws(ControlError) -> ActionResult {
        calls.append("\(action) \(name)")
        guard let s = vms[name] else { throw .notFound("no VM named \"\(name)\"") }
        guard s == requires else { throw .conflict("VM \(name) is \(s.rawValue)") }
        vms[name] = to
        return ActionResult(name: name, action: action, state: to, message: action)
    }

    func start(_ name: String) throws(ControlError) -> ActionResult { try act("start", name, requires: .stopped, to: .running) }
    func stop(_ name: String, force: Bool) throws(ControlError) -> ActionResult { try act(force ? "stop-force" : "stop", name, requires: .running, to: .stopping) }
    func reboot(_ name: String) throws(ControlError) -> ActionResult { try act("reboot", name, requires: .running, to: .running) }
    func reset(_ name: String) throws(ControlError) -> ActionResult { try act("reset", name, requires: .running, to: .running) }
    /// The VM's definition goes (a follower of its events is then refused).
    func remove(_ name: String) { vms[name] = nil }
    /// The events the tests add; a wait answers at once (tests add what a follower should see first).
    var eventLog = EventLog(capacity: 4)
    func addEvent(_ kind: String, vm: String) {
        eventLog.append(time: 1000, kind: kind, vm: vm, pid: 42, state: .running, message: "VM \(vm): \(kind)", reason: nil, fields: [:])
    }
    func events(after: UInt64?, vm: String?, waitSeconds: Int) async throws(ControlError) -> EventBatch {
        calls.append("events after=\(after.map(String.init) ?? "now") vm=\(vm ?? "*") wait=\(waitSeconds)")
        if let vm, vms[vm] == nil { throw .notFound("no VM named \"\(vm)\"") }
        // Two at a time: the router must ask again while the daemon says there is more.
        let batch = eventLog.after(after ?? eventLog.lastSeq, vm: vm, limit: 2)
        // A long poll with nothing to say takes a moment, as the daemon's would (up to its wait).
        if batch.events.isEmpty && waitSeconds > 0 { try? await Task.sleep(for: .milliseconds(50)) }
        return batch
    }
    func pause(_ name: String) throws(ControlError) -> ActionResult { try act("pause", name, requires: .running, to: .paused) }
    func resume(_ name: String) throws(ControlError) -> ActionResult {
        calls.append("resume \(name)")
        throw .failed("SIGCONT failed")
    }
    nonisolated func validate(_ request: ValidateRequest) async -> ValidateResult {
        Supervisor.validate(request, definitions: "/nonexistent")
    }
    func reload() -> ReloadResult {
        calls.append("reload")
        return ReloadResult(added: ["new"], removed: [], changed: [], pending: [], invalidDefinitions: [])
    }
    func info() -> DaemonInfo { DaemonInfo(version: "test", pid: 1, definitionsDirectory: "/etc/rtvisor/vms", status: "2 VMs") }
    func realtimeCheck(_ name: String?) throws(ControlError) -> [RealtimeCheck] {
        calls.append("rt-check \(name ?? "*")")
        if let name, name != "web" { throw .conflict("VM \(name) has no realtime block") }
        return [RealtimeCheck(name: "web", cpus: [1], running: true, lines: ["real-time check for VM web"], warnings: ["w"])]
    }
    func latency(_ name: String) throws(ControlError) -> LatencySnapshot {
        calls.append("latency \(name)")
        guard name == "web" else { throw .conflict("VM \(name) has no latency probe (realtime.latency_probe_us)") }
        return LatencySnapshot(name: "web", cpu: 1, priority: 51, periodMicroseconds: 1000, samples: 3, minNanoseconds: 1, meanNanoseconds: 2,
                               p50Nanoseconds: 2, p99Nanoseconds: 3, p9999Nanoseconds: 3, maxNanoseconds: 3, buckets: [[1, 1], [2, 1], [3, 1]], updatedAt: 0)
    }
    func consoleTail(_ name: String, lines: Int) throws(ControlError) -> ConsoleTail {
        calls.append("console \(name) \(lines)")
        guard let state = vms[name] else { throw .notFound("no VM named \"\(name)\"") }
        guard state == .running else { throw .conflict("VM \(name) is \(state.rawValue): no console to read") }
        return ConsoleTail(name: name, lines: Array(["Linux version 6.1", "login:"].suffix(lines)))
    }
    func stats(_ name: String?) throws(ControlError) -> StatsList {
        calls.append("stats \(name ?? "*")")
        if let name, vms[name] == nil { throw .notFound("no VM named \"\(name)\"") }
        let names = name.map { [$0] } ?? vms.keys.sorted()
        return StatsList(vms: names.map { n in
            VMStats(name: n, state: vms[n]!, pid: vms[n] == .running ? 42 : nil, vmmStartedAt: nil, restarts: 0,
                    vcpus: [VCPUStats(index: 0, cpuSeconds: 1.5, stealSeconds: 0.25, exits: ["io": 7])],
                    memory: MemoryStats(guestBytes: 32 << 20, residentBytes: nil, lockedBytes: nil, cgroupCurrentBytes: nil, cgroupMaxBytes: nil),
                    disks: [], nics: [], realtime: nil)
        }, collectedAt: 1000)
    }
    func shutdownGuests() -> GuestsResult {
        calls.append("shutdown-guests")
        let running = vms.keys.sorted().filter { vms[$0] == .running }
        for name in running { vms[name] = .stopping }
        return GuestsResult(vms: running.map { ActionResult(name: $0, action: "shutdown", state: .stopping, message: "asked") }, waitSeconds: 35)
    }
    func startGuests() -> GuestsResult {
        calls.append("start-guests")
        let stopped = vms.keys.sorted().filter { vms[$0] == .stopped }
        for name in stopped { vms[name] = .running }
        return GuestsResult(vms: stopped.map { ActionResult(name: $0, action: "start", state: .running, message: "started") }, waitSeconds: 0)
    }
    func snapshot(_ name: String, _ options: SnapshotOptions) throws(ControlError) -> SnapshotResult {
        calls.append("snapshot \(name) to=\(options.to ?? "-") stop=\(options.stop ?? false)")
        guard let s = vms[name] else { throw .notFound("no VM named \"\(name)\"") }
        guard s == .running else { throw .conflict("VM \(name) is \(s.rawValue), not running") }
        if options.stop == true { vms[name] = .stopped }
        return SnapshotResult(name: name, snapshot: SnapshotInfo(directory: options.to ?? "/var/lib/rtvisor/snapshots/\(name)/20261206T021500Z", vm: name,
                                                                 vcpus: 1, memoryMiB: 32, bytesOnDisk: 4096, apparentBytes: 32 << 20),
                              stateBytes: 9000, memoryDataBytes: 4096, pausedMilliseconds: 3, state: vms[name]!)
    }
    func snapshots(vm: String?) -> SnapshotList {
        calls.append("snapshots \(vm ?? "*")")
        return SnapshotList(root: "/var/lib/rtvisor/snapshots", snapshots: [
            SnapshotInfo(directory: "/var/lib/rtvisor/snapshots/web/1", vm: "web", createdAt: 1, vcpus: 1, memoryMiB: 32, bytesOnDisk: 8192, apparentBytes: 1 << 25),
            SnapshotInfo(directory: "/var/lib/rtvisor/snapshots/web/2", bytesOnDisk: 0, apparentBytes: 0, error: "state: checksum mismatch"),
        ].filter { vm == nil || $0.directory.contains("/\(vm!)/") })
    }
    func restore(_ request: RestoreRequest) throws(ControlError) -> RestoredVM {
        let name = request.name ?? "web"
        calls.append("restore \(request.directory) as \(name)")
        if request.directory == "/snapshots/bad" {
            throw .invalidDefinition("/snapshots/bad/definition.json: $.vcpuz: unknown key",
                                     [DefinitionProblem(file: "/snapshots/bad/definition.json", path: "$.vcpuz", reason: "unknown key")])
        }
        if let s = vms[name], s == .running { throw .conflict("VM \(name) is running") }
        vms[name] = .running
        return RestoredVM(name: name, pid: 43, definitionFile: "/etc/rtvisor/vms/\(name).json", directory: request.directory, message: "resumed")
    }
    func clone(_ name: String, _ request: CloneRequest) throws(ControlError) -> CloneResult {
        calls.append("clone \(name) count=\(request.count) prefix=\(request.prefix ?? "-") from=\(request.from ?? "-")")
        guard vms[name] != nil else { throw .notFound("no VM named \"\(name)\"") }
        return CloneResult(origin: name, snapshot: request.from ?? "/s", clones: [])
    }
    func migrationStatus(_ name: String) throws(ControlError) -> MigrationStatus {
        calls.append("migration \(name)")
        guard vms[name] != nil else { throw .notFound("no VM named \"\(name)\"") }
        var s = MigrationStatus(name: name, address: "tcp:b:7010", phase: "pre-copy")
        s.round = 2
        s.dirtyPages = 120
        return s
    }
    func upgrade(_ name: String) throws(ControlError) -> UpgradeResult {
        calls.append("upgrade \(name)")
        guard let s = vms[name] else { throw .notFound("no VM named \"\(name)\"") }
        guard s == .running else { throw .conflict("VM \(name) is \(s.rawValue), not running") }
        return UpgradeResult(name: name, oldPID: 10, newPID: 11, vmm: "/usr/libexec/rtvisor-vmm", memoryHandedOver: true, totalBytes: 900,
                             totalMilliseconds: 12, downtimeMilliseconds: 3, state: .running)
    }
    func migrate(_ name: String, _ request: MigrateRequest) throws(ControlError) -> MigrateResult {
        calls.append("migrate \(name) to \(request.address) downtime=\(request.downtimeMilliseconds ?? 0) rounds=\(request.maxRounds ?? 0) force=\(request.force.map { "\($0)" } ?? "-")")
        guard let s = vms[name] else { throw .notFound("no VM named \"\(name)\"") }
        guard s == .running else { throw .conflict("VM \(name) is \(s.rawValue), not running") }
        vms[name] = .migrated
        return MigrateResult(name: name, sourceHost: "a", address: request.address, rounds: [MigrationRound(pages: 10, bytes: 40960, milliseconds: 1)],
                             totalBytes: 41000, totalMilliseconds: 5, downtimeMilliseconds: 2, state: .migrated)
    }
    func receiveMigration(_ request: IncomingRequest) throws(ControlError) -> IncomingMigration {
        calls.append("receive \(request.listen) as \(request.name ?? "-") map=\(request.diskMap?.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",") ?? "-")")
        if let name = request.name, vms[name] == .running { throw .conflict("VM \(name) is running") }
        return IncomingMigration(id: "1", listen: request.listen, phase: .listening, name: request.name)
    }
    func incomingMigrations() -> IncomingList {
        calls.append("incoming")
        return IncomingList(migrations: [IncomingMigration(id: "1", listen: "unix:/x", phase: .running, name: "moved", sourceHost: "a", pid: 7)])
    }
    func incomingMigration(_ id: String) throws(ControlError) -> IncomingMigration {
        calls.append("incoming \(id)")
        guard id == "1" else { throw .notFound("no incoming migration \(id)") }
        return IncomingMigration(id: "1", listen: "unix:/x", phase: .failed, error: "refused")
    }
}

func decode<T: Decodable>(_ type: T.Type, _ r: APIResponse) throws -> T { try JSONDecoder().decode(T.self, from: Data(r.body)) }

@Suite struct APIRouterTests {
    @Test func listReturnsVMsAndInvalidDefinitions() async throws {
        let fake = FakeControl()
        let r = await APIRouter(control: fake).handle(APIRequest(method: "GET", target: "/v1/vms"))
        #expect(r.status == 200)
        #expect(r.headers.contains { $0.0 == "Content-Type" && $0.1 == "application/json" })
        let list = try decode(VMList.self, r)
        #expect(list.vms.map(\.name) == ["db", "web"])
        #expect(list.invalidDefinitions.first?.path == "$.vcpus")
        // snake_case on the wire
        #expect(r.text.contains("\"invalid_definitions\"") && r.text.contains("\"restart_policy\":\"on-failure\""))
    }

    @Test func inspectUnknownIs404WithErrorBody() async throws {
        let r = await APIRouter(control: FakeControl()).handle(APIRequest(method: "GET", target: "/v1/vms/nope"))
        #expect(r.status == 404)
        #expect(try decode(APIErrorBody.self, r).error == "no VM named \"nope\"")
    }

    /// Found by the api fuzz target: a query part without a key crashed the daemon.
    @Test func aQueryPartWithoutAKeyIsHarmless() async throws {
        for target in ["/v1/vms?=", "/v1/vms?=x", "/v1/vms?&=&", "/v1/vms?force"] {
            let r = await APIRouter(control: FakeControl()).handle(APIRequest(method: "GET", target: target))
            #expect(r.status == 200, "\(target)")
        }
    }

    @Test func actionsMapErrorsToStatusCodes() async throws {
        let fake = FakeControl()
        let router = APIRouter(control: fake)
        #expect(await router.handle(APIRequest(method: "POST", target: "/v1/vms/db/start")).status == 200)
        #expect(await router.handle(APIRequest(method: "POST", target: "/v1/vms/db/start")).status == 409)
        #expect(await router.handle(APIRequest(method: "POST", target: "/v1/vms/web/pause")).status == 200)
        #expect(await router.handle(APIRequest(method: "POST", target: "/v1/vms/web/resume")).status == 500)
        #expect(await router.handle(APIRequest(method: "POST", target: "/v1/vms/ghost/reboot")).status == 404)
        #expect(await router.handle(APIRequest(method: "POST", target: "/v1/vms/web/explode")).status == 404)
        #expect(await fake.calls == ["start db", "start db", "pause web", "resume web", "reboot ghost"])
    }

    /// Scripts match `code`, never the message: every error answer has the code of its status.
    @Test func everyErrorCarriesItsStableCode() async throws {
        let router = APIRouter(control: FakeControl())
        _ = await router.handle(APIRequest(method: "POST", target: "/v1/vms/db/start"))
        let cases: [(APIRequest, Int, String)] = [
            (APIRequest(method: "POST", target: "/v1/vms/db/start"), 409, "conflict"),
            (APIRequest(method: "POST", target: "/v1/vms/web/resume"), 500, "failed"),
            (APIRequest(method: "GET", target: "/v1/vms/nope"), 404, "not-found"),
            (APIRequest(method: "POST", target: "/v1/vms/web/explode"), 404, "not-found"),
            (APIRequest(method: "POST", target: "/v1/vms/web/stop", body: Array("force".utf8)), 400, "bad-request"),
            (APIRequest(method: "DELETE", target: "/v1/vms"), 405, "method-not-allowed"),
        ]
        for (request, status, code) in cases {
            let r = await router.handle(request)
            let body = try decode(APIErrorBody.self, r)
            #expect(r.status == status && body.code == code && !body.error.isEmpty, "\(request.method) \(request.target): \(r.status) \(r.text)")
        }
        #expect(APIRouter.error(403, "x").text.contains("\"code\":\"forbidden\""))
        // A restore's invalid definition: 409, code invalid-definition, every problem in `problems`.
        let bad = await router.handle(APIRequest(method: "POST", target: "/v1/snapshots/restore", body: Array("{\"directory\": \"/snapshots/bad\"}".utf8)))
        let badBody = try decode(APIErrorBody.self, bad)
        #expect(bad.status == 409 && badBody.code == "invalid-definition"
                && badBody.problems == [DefinitionProblem(file: "/snapshots/bad/definition.json", path: "$.vcpuz", reason: "unknown key")], "\(bad.text)")
        #expect(APIRouter.error(413, "x").text.contains("\"code\":\"too-large\""))
        #expect(Set(APIErrorCode.allCases.map(\.rawValue)) == ["bad-request", "forbidden", "not-found", "method-not-allowed", "conflict",
                                                              "invalid-definition", "too-large", "failed"])
    }

    @Test func stopForceFromBodyOrQuery() async throws {
        let fake = FakeControl()
        let router = APIRouter(control: fake)
        let r = await router.handle(APIRequest(method: "POST", target: "/v1/vms/web/stop", body: Array("{\"force\": true}".utf8)))
        #expect(r.status == 200)
        #expect(try decode(ActionResult.self, r).state == .stopping)
        await fake.setRunning("web")
        #expect(await router.handle(APIRequest(method: "POST", target: "/v1/vms/web/stop?force=1")).status == 200)
        await fake.setRunning("web")
        #expect(await router.handle(APIRequest(method: "POST", target: "/v1/vms/web/stop")).status == 200)
        #expect(await router.handle(APIRequest(method: "POST", target: "/v1/vms/web/stop", body: Array("force".utf8))).status == 400)
        #expect(await fake.calls == ["stop-force web", "stop-force web", "stop web"])
    }

    @Test func wrongMethodIs405WithAllow() async {
        let router = APIRouter(control: FakeControl())
        let r = await router.handle(APIRequest(method: "DELETE", target: "/v1/vms"))
        #expect(r.status == 405)
        #expect(r.headers.contains { $0.0 == "Allow" && $0.1 == "GET" })
        #expect(await router.handle(APIRequest(method: "GET", target: "/v1/vms/web/start")).status == 405)
        #expect(await router.handle(APIRequest(method: "GET", target: "/v2/vms")).status == 404)
        #expect(await router.handle(APIRequest(method: "GET", target: "/")).status == 404)
    }

    @Test func validateReportsProblemsWithPaths() async throws {
        let router = APIRouter(control: FakeControl())
        let body = try JSONEncoder().encode(ValidateRequest(definition: "{\"name\": \"x y\", \"memory_mib\": 1}", file: "x.json", baseDirectory: "/tmp"))
        let r = await router.handle(APIRequest(method: "POST", target: "/v1/validate", body: Array(body)))
        #expect(r.status == 200)
        let v = try decode(ValidateResult.self, r)
        #expect(!v.valid)
        #expect(Set(v.problems.map(\.path)) == ["$.name", "$.memory_mib", "$.kernel"])
        #expect(v.problems.allSatisfy { $0.file == "x.json" })
        #expect(await router.handle(APIRequest(method: "POST", target: "/v1/validate", body: Array("[]".utf8))).status == 400)
    }

    @Test func guestsShutdownAndStartActOnEveryVM() async throws {
        let fake = FakeControl()
        let router = APIRouter(control: fake)
        let down = await router.handle(APIRequest(method: "POST", target: "/v1/guests/shutdown"))
        #expect(down.status == 200)
        let result = try decode(GuestsResult.self, down)
        #expect(result.vms.map(\.name) == ["web"] && result.waitSeconds == 35)
        #expect(down.text.contains("\"wait_s\":35"))
        let up = try decode(GuestsResult.self, await router.handle(APIRequest(method: "POST", target: "/v1/guests/start")))
        #expect(up.vms.map(\.name) == ["db"])
        #expect(await router.handle(APIRequest(method: "GET", target: "/v1/guests/shutdown")).status == 405)
        #expect(await router.handle(APIRequest(method: "POST", target: "/v1/guests/explode")).status == 404)
        #expect(await fake.calls == ["shutdown-guests", "start-guests"])
    }

    @Test func reloadAndDaemonInfo() async throws {
        let router = APIRouter(control: FakeControl())
        #expect(try decode(ReloadResult.self, await router.handle(APIRequest(method: "POST", target: "/v1/reload"))).added == ["new"])
        #expect(try decode(DaemonInfo.self, await router.handle(APIRequest(method: "GET", target: "/v1/daemon"))).version == "test")
    }
}

extension FakeControl {
    func setRunning(_ name: String) { vms[name] = .running }
}

/// The real HTTP server on a unix socket, spoken to with raw HTTP/1.1.
@Suite struct HTTPServerTests {
    /// Blocking socket I/O on its own thread, so the cooperative pool stays free for the server.
    func exchange(_ path: String, _ request: String) async throws -> String {
        for _ in 0..<500 where !FileManager.default.fileExists(atPath: path) { try await Task.sleep(for: .milliseconds(10)) }
        // The socket file exists from bind(); connections are refused until listen() (a loaded
        // machine can put time between the two).
        for _ in 0..<500 {
            let answer = await withCheckedContinuation { c in
                let t = Thread { c.resume(returning: unixSocketExchange(path, request) ?? "connect failed: \(errno)") }
                t.start()
            }
            if answer != "connect failed: \(ECONNREFUSED)" { return answer }
            try await Task.sleep(for: .milliseconds(10))
        }
        return "connect failed: \(ECONNREFUSED)"
    }

    @Test func servesRequestsOnAUnixSocketWithMode0660() async throws {
        let path = try makeTemporaryDirectory("rtvisord-test") + "/api.sock"
        let server = HTTPServer(router: APIRouter(control: FakeControl()), logger: Logger(label: "test"))
        let task = Task { try await server.run(socketPath: path, groupName: nil) }
        defer { task.cancel() }
        let list = try await exchange(path, "GET /v1/vms HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        #expect(list.hasPrefix("HTTP/1.1 200 OK\r\n"))
        #expect(list.contains("\"name\":\"web\""))
        var st = stat()
        stat(path, &st)
        #expect(st.st_mode & 0o777 == 0o660)
        let body = "{\"force\":true}"
        let stop = try await exchange(path, httpRequest("POST", "/v1/vms/web/stop", body: body))
        #expect(stop.hasPrefix("HTTP/1.1 200 OK\r\n"))
        #expect(stop.contains("\"action\":\"stop-force\""))
        let bad = try await exchange(path, "GARBAGE\r\n\r\n")
        #expect(bad.hasPrefix("HTTP/1.1 400"))
        task.cancel()
        _ = await task.result
        await server.shutdown()
    }
}

/// docs/api.yaml describes every route the router serves, and nothing it does not.
@Suite struct OpenAPIDocumentTests {
    @Test func realtimeCheckRoutes() async throws {
        let fake = FakeControl()
        let router = APIRouter(control: fake)
        let one = await router.handle(APIRequest(method: "GET", target: "/v1/vms/web/rt-check"))
        #expect(one.status == 200)
        #expect(try decode(RealtimeCheck.self, one).cpus == [1])
        let all = await router.handle(APIRequest(method: "GET", target: "/v1/rt-check"))
        #expect(try decode([RealtimeCheck].self, all).map(\.name) == ["web"])
        let plain = await router.handle(APIRequest(method: "GET", target: "/v1/vms/db/rt-check"))
        #expect(plain.status == 409 && plain.text.contains("no realtime block"))
        #expect(await router.handle(APIRequest(method: "POST", target: "/v1/rt-check")).status == 405)
        #expect(await fake.calls == ["rt-check web", "rt-check *", "rt-check db"])
        let latency = await router.handle(APIRequest(method: "GET", target: "/v1/vms/web/latency"))
        #expect(latency.status == 200 && latency.text.contains("\"p99_99_ns\":3"))
        #expect(await router.handle(APIRequest(method: "GET", target: "/v1/vms/db/latency")).status == 409)
    }

    @Test func statsOfAllVMsAndOfOne() async throws {
        let fake = FakeControl()
        let router = APIRouter(control: fake)
        let all = await router.handle(APIRequest(method: "GET", target: "/v1/stats"))
        #expect(all.status == 200)
        #expect(try decode(StatsList.self, all).vms.map(\.name) == ["db", "web"])
        let one = await router.handle(APIRequest(method: "GET", target: "/v1/vms/web/stats"))
        #expect(one.status == 200 && one.text.contains("\"cpu_s\":1.5") && one.text.contains("\"exits\":{\"io\":7}"), "\(one.text)")
        #expect(try decode(VMStats.self, one).pid == 42)
        #expect(await router.handle(APIRequest(method: "GET", target: "/v1/vms/ghost/stats")).status == 404)
        #expect(await router.handle(APIRequest(method: "POST", target: "/v1/stats")).status == 405)
        #expect(await fake.calls == ["stats *", "stats web", "stats ghost"])
    }

    @Test func aRunningVMsConsoleEndIsServedAsLines() async throws {
        let fake = FakeControl()
        let router = APIRouter(control: fake)
        let tail = await router.handle(APIRequest(method: "GET", target: "/v1/vms/web/console?lines=1"))
        #expect(tail.status == 200, "\(tail.text)")
        #expect(try decode(ConsoleTail.self, tail) == ConsoleTail(name: "web", lines: ["login:"]))
        #expect(await router.handle(APIRequest(method: "GET", target: "/v1/vms/web/console")).status == 200, "20 lines by default")
        #expect(await router.handle(APIRequest(method: "GET", target: "/v1/vms/web/console?lines=0")).status == 400)
        #expect(await router.handle(APIRequest(method: "GET", target: "/v1/vms/web/console?lines=101")).status == 400)
        #expect(await router.handle(APIRequest(method: "GET", target: "/v1/vms/db/console")).status == 409, "db is stopped")
        #expect(await router.handle(APIRequest(method: "POST", target: "/v1/vms/web/console")).status == 405)
        #expect(await fake.calls == ["console web 1", "console web 20", "console db 20"])
    }

    @Test func everyRouteIsDocumented() async throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let yaml = try String(contentsOf: root.appendingPathComponent("docs/api.yaml"), encoding: .utf8)
        let documented = Set(yaml.split(separator: "\n").filter { $0.hasPrefix("  /v1/") }.map { String($0.dropFirst(2).dropLast()) })
        let routes: Set<String> = ["/v1/daemon", "/v1/vms", "/v1/vms/{name}", "/v1/vms/{name}/start", "/v1/vms/{name}/stop",
                                   "/v1/vms/{name}/reboot", "/v1/vms/{name}/reset", "/v1/vms/{name}/pause", "/v1/vms/{name}/resume", "/v1/validate", "/v1/reload",
                                   "/v1/rt-check", "/v1/vms/{name}/rt-check", "/v1/vms/{name}/latency", "/v1/guests/shutdown", "/v1/guests/start",
                                   "/v1/vms/{name}/snapshot", "/v1/vms/{name}/clone", "/v1/snapshots", "/v1/snapshots/restore",
                                   "/v1/vms/{name}/migrate", "/v1/migrations/incoming", "/v1/migrations/incoming/{id}", "/v1/vms/{name}/upgrade",
                                   "/v1/vms/{name}/migration", "/v1/events",
                                   "/v1/stats", "/v1/vms/{name}/stats", "/v1/vms/{name}/console", "/v1/channels"]
        #expect(documented == routes)
        // And the router answers each of them (not 404).
        let router = APIRouter(control: FakeControl())
        for route in routes {
            let path = route.replacingOccurrences(of: "{name}", with: "web").replacingOccurrences(of: "{id}", with: "1")
            let method = ["/v1/daemon", "/v1/vms", "/v1/vms/web", "/v1/rt-check", "/v1/vms/web/rt-check", "/v1/vms/web/latency", "/v1/snapshots",
                          "/v1/migrations/incoming/1", "/v1/vms/web/migration", "/v1/events", "/v1/stats", "/v1/vms/web/stats",
                          "/v1/channels", "/v1/vms/web/console"].contains(path) ? "GET" : "POST"
            let bodies = ["/v1/validate": "{\"definition\": \"{}\"}", "/v1/vms/web/clone": "{\"count\": 1}", "/v1/snapshots/restore": "{\"directory\": \"/s\", \"name\": \"new\"}",
                          "/v1/vms/web/migrate": "{\"address\": \"unix:/x\"}", "/v1/migrations/incoming": "{\"listen\": \"tcp:0.0.0.0:7010\"}"]
            let body = Array((bodies[path] ?? "").utf8)
            #expect(await router.handle(APIRequest(method: method, target: path, body: body)).status != 404, "\(method) \(path)")
        }
    }

    @Test func migrateRoutes() async throws {
        let fake = FakeControl()
        let router = APIRouter(control: fake)
        func post(_ target: String, _ body: String) async -> APIResponse { await router.handle(APIRequest(method: "POST", target: target, body: Array(body.utf8))) }
        // Upgrade first: web is migrated away below.
        let upgraded = await post("/v1/vms/web/upgrade", "")
        #expect(upgraded.status == 200 && upgraded.text.contains("\"old_pid\":10") && upgraded.text.contains("\"new_pid\":11")
                && upgraded.text.contains("\"memory_handed_over\":true") && upgraded.text.contains("\"state\":\"running\""), "\(upgraded.text)")
        #expect(await post("/v1/vms/ghost/upgrade", "").status == 404)
        let status = await router.handle(APIRequest(method: "GET", target: "/v1/vms/web/migration"))
        #expect(status.status == 200 && status.text.contains("\"dirty_pages\":120") && status.text.contains("\"phase\":\"pre-copy\""), "\(status.text)")
        let moved = await post("/v1/vms/web/migrate", #"{"address": "tcp:[::1]:7010", "downtime_ms": 50, "max_rounds": 5, "force": false}"#)
        #expect(moved.status == 200 && moved.text.contains("\"state\":\"migrated\"") && moved.text.contains("\"downtime_ms\":2") && moved.text.contains("\"source_host\":\"a\""))
        #expect(try decode(MigrateResult.self, moved).rounds == [MigrationRound(pages: 10, bytes: 40960, milliseconds: 1)])
        #expect(await post("/v1/vms/web/migrate", #"{"address": "unix:/x"}"#).status == 409, "migrated: not running any more")
        #expect(await post("/v1/vms/ghost/migrate", #"{"address": "unix:/x"}"#).status == 404)
        // Bad requests never reach the daemon.
        for (body, error) in [(#"{"address": "fd:3"}"#, "address: fd:N is rtvisor-vmm's; rtvisord takes unix:PATH or tcp:HOST:PORT"),
                              (#"{"address": "unix:rel.sock"}"#, "address: unix:PATH needs an absolute path, got \"rel.sock\""),
                              (#"{"address": "host:1"}"#, "address: host:1: not a migration address (unix:PATH, tcp:HOST:PORT or fd:N)"),
                              (#"{"address": "unix:/x", "downtime_ms": 0}"#, "downtime_ms must be 1–60000, got 0"),
                              (#"{"address": "unix:/x", "max_rounds": 5000}"#, "max_rounds must be 1–1000, got 5000"),
                              (#"{"address": "unix:/x", "timeout_s": 0}"#, "timeout_s must be 1–86400, got 0"),
                              (#"{"address": "unix:/x", "max_bandwidth_mib_s": 0}"#, "max_bandwidth_mib_s must be 1–1000000, got 0")] {
            let r = await post("/v1/vms/web/migrate", body)
            #expect(r.status == 400 && (try? decode(APIErrorBody.self, r).error) == error, "\(body): \(r.text)")
        }
        #expect(await post("/v1/vms/web/migrate", "").status == 400)
        #expect(await router.handle(APIRequest(method: "GET", target: "/v1/vms/web/migrate")).status == 405)


        let listening = await post("/v1/migrations/incoming", #"{"listen": "unix:/run/in.sock", "name": "moved", "disk_map": {"/a/r.img": "/b/r.img"}}"#)
        #expect(try listening.status == 200 && decode(IncomingMigration.self, listening).phase == .listening)
        for body in [#"{"listen": "unix:/x", "name": "a/b"}"#, #"{"listen": "unix:/x", "disk_map": {"r.img": "/b"}}"#, #"{"listen": "fd:4"}"#,
                     #"{"listen": "unix:/x", "timeout_s": 0}"#, #"{"name": "x"}"#] {
            #expect(await post("/v1/migrations/incoming", body).status == 400, "\(body)")
        }
        let list = await router.handle(APIRequest(method: "GET", target: "/v1/migrations/incoming"))
        #expect(try decode(IncomingList.self, list).migrations.first?.name == "moved" && list.text.contains("\"source_host\":\"a\""))
        let one = await router.handle(APIRequest(method: "GET", target: "/v1/migrations/incoming/1"))
        #expect(try decode(IncomingMigration.self, one).error == "refused")
        #expect(await router.handle(APIRequest(method: "GET", target: "/v1/migrations/incoming/9")).status == 404)
        #expect(await router.handle(APIRequest(method: "DELETE", target: "/v1/migrations/incoming")).status == 405)
        #expect(await fake.calls == ["upgrade web", "upgrade ghost", "migration web", "migrate web to tcp:[::1]:7010 downtime=50 rounds=5 force=false", "migrate web to unix:/x downtime=0 rounds=0 force=-",
                                     "migrate ghost to unix:/x downtime=0 rounds=0 force=-", "receive unix:/run/in.sock as moved map=/a/r.img=/b/r.img",
                                     "incoming", "incoming 1", "incoming 9"])
    }

    @Test func snapshotRoute() async throws {
        let fake = FakeControl()
        let router = APIRouter(control: fake)
        let plain = await router.handle(APIRequest(method: "POST", target: "/v1/vms/web/snapshot"))
        #expect(plain.status == 200)
        let result = try decode(SnapshotResult.self, plain)
        #expect(result.state == .running && result.snapshot.directory == "/var/lib/rtvisor/snapshots/web/20261206T021500Z")
        #expect(plain.text.contains("\"paused_ms\":3") && plain.text.contains("\"bytes_on_disk\":4096") && plain.text.contains("\"memory_data_bytes\":4096"))
        let stopped = await router.handle(APIRequest(method: "POST", target: "/v1/vms/web/snapshot", body: Array(#"{"to": "/srv/snap/one", "stop": true}"#.utf8)))
        #expect(try decode(SnapshotResult.self, stopped).state == .stopped)
        // Not running any more: the fake's conflict, as 409.
        #expect(await router.handle(APIRequest(method: "POST", target: "/v1/vms/web/snapshot")).status == 409)
        #expect(await router.handle(APIRequest(method: "POST", target: "/v1/vms/ghost/snapshot")).status == 404)
        // Bad bodies never reach the daemon.
        let relative = await router.handle(APIRequest(method: "POST", target: "/v1/vms/web/snapshot", body: Array(#"{"to": "snap"}"#.utf8)))
        let relativeError = try decode(APIErrorBody.self, relative).error
        #expect(relative.status == 400 && relativeError == "to must be an absolute path, got \"snap\"")
        #expect(await router.handle(APIRequest(method: "POST", target: "/v1/vms/web/snapshot", body: Array("[1]".utf8))).status == 400)
        #expect(await router.handle(APIRequest(method: "GET", target: "/v1/vms/web/snapshot")).status == 405)
        #expect(await fake.calls == ["snapshot web to=- stop=false", "snapshot web to=/srv/snap/one stop=true", "snapshot web to=- stop=false", "snapshot ghost to=- stop=false"])
    }

    @Test func snapshotListRoute() async throws {
        let fake = FakeControl()
        let router = APIRouter(control: fake)
        let all = await router.handle(APIRequest(method: "GET", target: "/v1/snapshots"))
        #expect(all.status == 200)
        let list = try decode(SnapshotList.self, all)
        #expect(list.snapshots.count == 2 && list.snapshots[1].error == "state: checksum mismatch" && list.snapshots[1].vm == nil)
        #expect(all.text.contains("\"apparent_bytes\":33554432") && all.text.contains("\"memory_mib\":32"))
        #expect(await router.handle(APIRequest(method: "GET", target: "/v1/snapshots?vm=web")).status == 200)
        #expect(await router.handle(APIRequest(method: "GET", target: "/v1/snapshots?vm=../etc")).status == 400)
        #expect(await router.handle(APIRequest(method: "POST", target: "/v1/snapshots")).status == 405)
        #expect(await fake.calls == ["snapshots *", "snapshots web"])
    }

    @Test func restoreRoute() async throws {
        let fake = FakeControl()
        let router = APIRouter(control: fake)
        let ok = await router.handle(APIRequest(method: "POST", target: "/v1/snapshots/restore", body: Array(#"{"directory": "/s/one", "name": "copy"}"#.utf8)))
        #expect(ok.status == 200)
        #expect(try decode(RestoredVM.self, ok) == RestoredVM(name: "copy", pid: 43, definitionFile: "/etc/rtvisor/vms/copy.json", directory: "/s/one", message: "resumed"))
        #expect(ok.text.contains("\"definition_file\""))
        // "web" is running: 409.
        #expect(await router.handle(APIRequest(method: "POST", target: "/v1/snapshots/restore", body: Array(#"{"directory": "/s/one"}"#.utf8))).status == 409)
        for bad in [#"{"directory": "s/one"}"#, #"{"directory": "/s/../etc"}"#, #"{"directory": "/s", "name": "a b"}"#, #"{"name": "x"}"#, ""] {
            #expect(await router.handle(APIRequest(method: "POST", target: "/v1/snapshots/restore", body: Array(bad.utf8))).status == 400, "\(bad)")
        }
        #expect(await router.handle(APIRequest(method: "GET", target: "/v1/snapshots/restore")).status == 405)
        #expect(await fake.calls == ["restore /s/one as copy", "restore /s/one as web"])
    }

    @Test func cloneRoute() async throws {
        let fake = FakeControl()
        let router = APIRouter(control: fake)
        let ok = await router.handle(APIRequest(method: "POST", target: "/v1/vms/web/clone", body: Array(#"{"count": 2, "prefix": "w"}"#.utf8)))
        let cloned = try decode(CloneResult.self, ok)
        #expect(ok.status == 200 && cloned.origin == "web")
        #expect(await router.handle(APIRequest(method: "POST", target: "/v1/vms/web/clone", body: Array(#"{"count": 1, "from": "/s/one"}"#.utf8))).status == 200)
        #expect(await router.handle(APIRequest(method: "POST", target: "/v1/vms/ghost/clone", body: Array(#"{"count": 1}"#.utf8))).status == 404)
        for bad in [#"{"count": 0}"#, #"{"count": 65}"#, #"{"count": 1, "prefix": "a b"}"#, #"{"count": 1, "from": "rel"}"#, #"{"prefix": "w"}"#, ""] {
            let r = await router.handle(APIRequest(method: "POST", target: "/v1/vms/web/clone", body: Array(bad.utf8)))
            #expect(r.status == 400, "\(bad): \(r.text)")
        }
        #expect(await fake.calls == ["clone web count=2 prefix=w from=-", "clone web count=1 prefix=- from=/s/one", "clone ghost count=1 prefix=- from=-"])
    }
}
