import APIModels
import Daemon
import Foundation

public struct APIRequest: Sendable {
    public var method: String
    /// The request target; a query string is allowed.
    public var target: String
    public var body: [UInt8]
    /// The `Authorization` header (only the dashboard's actions read it: `DashboardActions`).
    public var authorization: String?
    public init(method: String, target: String, body: [UInt8] = [], authorization: String? = nil) {
        self.method = method; self.target = target; self.body = body; self.authorization = authorization
    }
}

public struct APIResponse: Sendable, Equatable {
    public var status: Int
    public var headers: [(String, String)]
    public var body: [UInt8]
    /// A body that goes on after `body` (`GET /v1/events?follow=1`): the server sends each part
    /// as it comes, until `next` returns nil or the client goes away.
    public var stream: ResponseStream?
    public init(status: Int, headers: [(String, String)] = [], body: [UInt8], stream: ResponseStream? = nil) {
        self.status = status; self.headers = headers; self.body = body; self.stream = stream
    }
    public var text: String { String(decoding: body, as: UTF8.self) }
    public static func == (a: Self, b: Self) -> Bool {
        a.status == b.status && a.body == b.body && a.headers.map { $0.0 + ":" + $0.1 } == b.headers.map { $0.0 + ":" + $0.1 }
            && (a.stream == nil) == (b.stream == nil)
    }
}

/// The rest of a streamed response body, part by part; nil: the stream has ended.
public struct ResponseStream: Sendable {
    public let next: @Sendable () async -> [UInt8]?
    public init(next: @escaping @Sendable () async -> [UInt8]?) { self.next = next }
}

/// What answers a listener's requests: the whole API (`APIRouter`, api.sock) or only its
/// read-only part (`MetricsRouter`, metrics.sock and the metrics TCP listener).
public protocol RequestHandling: Sendable {
    func handle(_ request: APIRequest) async -> APIResponse
}

/// The control API's routes (docs/api.yaml), independent of the transport: the HTTP server
/// hands it method, target and body; tests call it directly.
///
///     GET  /v1/daemon                   DaemonInfo
///     GET  /v1/vms                      VMList
///     GET  /v1/vms/{name}               VMDetail
///     POST /v1/vms/{name}/start         ActionResult
///     POST /v1/vms/{name}/stop          ActionResult (body {"force": true} or ?force=true)
///     POST /v1/vms/{name}/reboot|reset|pause|resume
///     POST /v1/validate                 ValidateResult (ValidateRequest body)
///     POST /v1/reload                   ReloadResult
///     GET  /v1/rt-check                 [RealtimeCheck] (every VM with a realtime block)
///     GET  /v1/vms/{name}/rt-check      RealtimeCheck
///     GET  /v1/vms/{name}/latency       LatencySnapshot (realtime.latency_probe_us)
///     POST /v1/guests/shutdown          GuestsResult (every guest asked to shut down; answers at once)
///     POST /v1/guests/start             GuestsResult (every stopped autostart VM started)
///     POST /v1/vms/{name}/snapshot      SnapshotResult (SnapshotOptions body, optional)
///     POST /v1/vms/{name}/clone         CloneResult (CloneRequest body)
///     GET  /v1/snapshots[?vm=NAME]      SnapshotList
///     POST /v1/snapshots/restore        RestoredVM (RestoreRequest body)
///     POST /v1/vms/{name}/migrate       MigrateResult (MigrateRequest body)
///     GET  /v1/vms/{name}/migration     MigrationStatus (a migration under way)
///     POST /v1/vms/{name}/upgrade       UpgradeResult (to a new rtvisor-vmm on this host)
///     POST /v1/migrations/incoming      IncomingMigration (IncomingRequest body; answers once listening)
///     GET  /v1/migrations/incoming      IncomingList
///     GET  /v1/migrations/incoming/{id} IncomingMigration
///     GET  /v1/events[?since=SEQ][&vm=NAME][&follow=1]   DaemonEvent lines (NDJSON); follow: streamed
///     GET  /v1/channels                 ChannelList
///     GET  /v1/stats                    StatsList (every VM)
///     GET  /v1/vms/{name}/stats         VMStats
///     GET  /metrics                     Prometheus text exposition (APIRouter+Metrics.swift)
public struct APIRouter: RequestHandling {
    let control: any VMControl
    public static let maxBody = 1 << 20

    public init(control: any VMControl) { self.control = control }

    public func handle(_ request: APIRequest) async -> APIResponse {
        let (path, query) = Self.split(request.target)
        if path == "/metrics" {
            guard request.method == "GET" else { return Self.methodNotAllowed("GET") }
            return await metrics()
        }
        let parts = path.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
        guard parts.first == "v1" else { return Self.error(404, "no such endpoint: \(path)") }
        let rest = Array(parts.dropFirst())
        switch rest.count {
        case 1 where rest[0] == "daemon":
            guard request.method == "GET" else { return Self.methodNotAllowed("GET") }
            return await run { () async throws(ControlError) in try await control.info() }
        case 1 where rest[0] == "vms":
            guard request.method == "GET" else { return Self.methodNotAllowed("GET") }
            return await run { () async throws(ControlError) in try await control.list() }
        case 1 where rest[0] == "reload":
            guard request.method == "POST" else { return Self.methodNotAllowed("POST") }
            return await run { () async throws(ControlError) in try await control.reload() }
        case 1 where rest[0] == "validate":
            guard request.method == "POST" else { return Self.methodNotAllowed("POST") }
            guard let req = try? JSONDecoder().decode(ValidateRequest.self, from: Data(request.body)) else {
                return Self.error(400, "body must be a JSON object {\"definition\": \"<definition JSON text>\", \"file\"?: …, \"base_directory\"?: …}")
            }
            return await run { () async throws(ControlError) in try await control.validate(req) }
        case 1 where rest[0] == "rt-check":
            guard request.method == "GET" else { return Self.methodNotAllowed("GET") }
            return await run { () async throws(ControlError) in try await control.realtimeCheck(nil) }
        case 3 where rest[0] == "vms" && rest[2] == "rt-check":
            guard request.method == "GET" else { return Self.methodNotAllowed("GET") }
            return await run { () async throws(ControlError) in try await control.realtimeCheck(rest[1]).first! }
        case 3 where rest[0] == "vms" && rest[2] == "migration":
            guard request.method == "GET" else { return Self.methodNotAllowed("GET") }
            return await run { () async throws(ControlError) in try await control.migrationStatus(rest[1]) }
        case 1 where rest[0] == "stats": return await stats(request.method, vm: nil)
        case 3 where rest[0] == "vms" && rest[2] == "stats": return await stats(request.method, vm: rest[1])
        case 3 where rest[0] == "vms" && rest[2] == "console": return await consoleTail(request.method, vm: rest[1], lines: query["lines"])
        case 3 where rest[0] == "vms" && rest[2] == "latency":
            guard request.method == "GET" else { return Self.methodNotAllowed("GET") }
            return await run { () async throws(ControlError) in try await control.latency(rest[1]) }
        case 2 where rest[0] == "guests":
            guard request.method == "POST" else { return Self.methodNotAllowed("POST") }
            switch rest[1] {
            case "shutdown": return await run { () async throws(ControlError) in try await control.shutdownGuests() }
            case "start": return await run { () async throws(ControlError) in try await control.startGuests() }
            default: return Self.error(404, "no such action: \(rest[1]) (shutdown, start)")
            }
        case 1 where rest[0] == "events":
            guard request.method == "GET" else { return Self.methodNotAllowed("GET") }
            return await events(query)
        case 1 where rest[0] == "channels":
            guard request.method == "GET" else { return Self.methodNotAllowed("GET") }
            return await run { () async throws(ControlError) in try await control.channels() }
        case 1 where rest[0] == "snapshots":
            guard request.method == "GET" else { return Self.methodNotAllowed("GET") }
            let vm = query["vm"].flatMap { $0.isEmpty ? nil : $0 }
            if let vm, !ClonePlan.isValidName(vm) { return Self.error(400, "vm must be a VM name, got \"\(vm)\"") }
            return await run { () async throws(ControlError) in try await control.snapshots(vm: vm) }
        case 2 where rest[0] == "snapshots" && rest[1] == "restore":
            guard request.method == "POST" else { return Self.methodNotAllowed("POST") }
            guard let req = try? JSONDecoder().decode(RestoreRequest.self, from: Data(request.body)) else {
                return Self.error(400, "body must be a JSON object {\"directory\": \"/absolute/snapshot/directory\", \"name\"?: \"NEW\"}")
            }
            if let problem = SnapshotDirectory.pathProblem(req.directory, field: "directory") { return Self.error(400, problem) }
            if let name = req.name, !ClonePlan.isValidName(name) { return Self.error(400, "name must be a VM name (1–64 letters, digits, '-' and '_'), got \"\(name)\"") }
            return await run { () async throws(ControlError) in try await control.restore(req) }
        case 2 where rest[0] == "migrations" && rest[1] == "incoming":
            if request.method == "GET" { return await run { () async throws(ControlError) in try await control.incomingMigrations() } }
            guard request.method == "POST" else { return Self.methodNotAllowed("GET, POST") }
            guard let req = try? JSONDecoder().decode(IncomingRequest.self, from: Data(request.body)) else {
                return Self.error(400, "body must be a JSON object {\"listen\": \"unix:PATH|tcp:HOST:PORT\", \"name\"?: \"NEW\", \"disk_map\"?: {\"/old\": \"/new\"}, \"timeout_s\"?: N}")
            }
            if let problem = Self.incomingProblem(req) { return Self.error(400, problem) }
            return await run { () async throws(ControlError) in try await control.receiveMigration(req) }
        case 3 where rest[0] == "migrations" && rest[1] == "incoming":
            guard request.method == "GET" else { return Self.methodNotAllowed("GET") }
            return await run { () async throws(ControlError) in try await control.incomingMigration(rest[2]) }
        case 2 where rest[0] == "vms":
            guard request.method == "GET" else { return Self.methodNotAllowed("GET") }
            return await run { () async throws(ControlError) in try await control.inspect(rest[1]) }
        case 3 where rest[0] == "vms":
            guard request.method == "POST" else { return Self.methodNotAllowed("POST") }
            let name = rest[1]
            switch rest[2] {
            case "start": return await run { () async throws(ControlError) in try await control.start(name) }
            case "stop":
                var force = query["force"] == "true" || query["force"] == "1"
                if !request.body.isEmpty {
                    guard let s = try? JSONDecoder().decode(StopRequest.self, from: Data(request.body)) else {
                        return Self.error(400, "body must be a JSON object {\"force\": true|false}")
                    }
                    force = force || (s.force ?? false)
                }
                return await run { () async throws(ControlError) in try await control.stop(name, force: force) }
            case "reboot": return await run { () async throws(ControlError) in try await control.reboot(name) }
            case "reset": return await run { () async throws(ControlError) in try await control.reset(name) }
            case "pause": return await run { () async throws(ControlError) in try await control.pause(name) }
            case "resume": return await run { () async throws(ControlError) in try await control.resume(name) }
            case "snapshot":
                var options = SnapshotOptions()
                if !request.body.isEmpty {
                    guard let o = try? JSONDecoder().decode(SnapshotOptions.self, from: Data(request.body)) else {
                        return Self.error(400, "body must be a JSON object {\"to\"?: \"/absolute/new/directory\", \"stop\"?: true|false}")
                    }
                    options = o
                }
                if let to = options.to, let problem = SnapshotDirectory.pathProblem(to, field: "to") { return Self.error(400, problem) }
                return await run { () async throws(ControlError) in try await control.snapshot(name, options) }
            case "clone":
                guard let req = try? JSONDecoder().decode(CloneRequest.self, from: Data(request.body)) else {
                    return Self.error(400, "body must be a JSON object {\"count\": 1…64, \"prefix\"?: \"P\", \"from\"?: \"/snapshot/directory\"}")
                }
                guard CloneRequest.countRange.contains(req.count) else { return Self.error(400, "count must be 1–64, got \(req.count)") }
                if let from = req.from, let problem = SnapshotDirectory.pathProblem(from, field: "from") { return Self.error(400, problem) }
                do throws(ControlError) { _ = try ClonePlan.names(origin: name, prefix: req.prefix, count: req.count) } catch { return Self.error(400, error.description) }
                return await run { () async throws(ControlError) in try await control.clone(name, req) }
            case "migrate":
                guard let req = try? JSONDecoder().decode(MigrateRequest.self, from: Data(request.body)) else {
                    return Self.error(400, "body must be a JSON object {\"address\": \"unix:PATH|tcp:HOST:PORT\", \"downtime_ms\"?: N, \"max_rounds\"?: N, \"force\"?: true|false, \"timeout_s\"?: N, \"max_bandwidth_mib_s\"?: N}")
                }
                if let problem = Self.migrateProblem(req) { return Self.error(400, problem) }
                return await run { () async throws(ControlError) in try await control.migrate(name, req) }
            case "upgrade":
                return await run { () async throws(ControlError) in try await control.upgrade(name) }
            default: return Self.error(404, "no such action: \(rest[2]) (start, stop, reboot, reset, pause, resume, snapshot, clone, migrate, upgrade)")
            }
        default:
            return Self.error(404, "no such endpoint: \(path)")
        }
    }

    /// What is wrong with a migrate request's fields, before the daemon sees it.
    static func migrateProblem(_ r: MigrateRequest) -> String? {
        do throws(ControlError) { _ = try Supervisor.streamAddress(r.address, field: "address") } catch { return error.description }
        if let d = r.downtimeMilliseconds, !MigrateRequest.downtimeRange.contains(d) { return "downtime_ms must be 1–60000, got \(d)" }
        if let n = r.maxRounds, !MigrateRequest.roundsRange.contains(n) { return "max_rounds must be 1–1000, got \(n)" }
        if let t = r.timeoutSeconds, !MigrateRequest.timeoutRange.contains(t) { return "timeout_s must be 1–86400, got \(t)" }
        if let b = r.maxBandwidthMiBps, !MigrateRequest.bandwidthRange.contains(b) { return "max_bandwidth_mib_s must be 1–1000000, got \(b)" }
        return nil
    }

    static func incomingProblem(_ r: IncomingRequest) -> String? {
        do throws(ControlError) { _ = try Supervisor.streamAddress(r.listen, field: "listen") } catch { return error.description }
        if let name = r.name, !ClonePlan.isValidName(name) { return "name must be a VM name (1–64 letters, digits, '-' and '_'), got \"\(name)\"" }
        if let problem = DefinitionJSON.diskMapProblem(r.diskMap ?? [:]) { return problem }
        if let t = r.timeoutSeconds, !IncomingRequest.timeoutRange.contains(t) { return "timeout_s must be 1–86400, got \(t)" }
        return nil
    }

    func run<T: Encodable>(_ body: () async throws(ControlError) -> T) async -> APIResponse {
        do {
            return Self.json(200, try await body())
        } catch {
            switch error {
            case let .notFound(m): return Self.error(404, m)
            case let .conflict(m): return Self.error(409, m)
            case let .failed(m): return Self.error(500, m)
            case let .invalidDefinition(m, problems):
                return Self.json(409, APIErrorBody(error: m, code: .invalidDefinition, problems: problems))
            }
        }
    }

    static func split(_ target: String) -> (String, [String: String]) {
        guard let q = target.firstIndex(of: "?") else { return (target, [:]) }
        var query: [String: String] = [:]
        for pair in target[target.index(after: q)...].split(separator: "&") {
            // Keep empty parts: "=" or "=x" must not leave kv empty (the fuzzer's first find).
            let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            query[String(kv[0])] = kv.count > 1 ? String(kv[1]) : ""
        }
        return (String(target[..<q]), query)
    }

    static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return e
    }()

    public static func json(_ status: Int, _ value: some Encodable) -> APIResponse {
        var body = (try? encoder.encode(value)).map { Array($0) } ?? Array("{\"error\":\"encoding failed\"}".utf8)
        body.append(0x0A)
        return APIResponse(status: status, headers: [("Content-Type", "application/json")], body: body)
    }

    /// Every error answer carries its stable code next to the message (`APIErrorCode`).
    public static func error(_ status: Int, _ message: String) -> APIResponse {
        json(status, APIErrorBody(error: message, code: APIErrorCode(status: status)))
    }

    static func methodNotAllowed(_ allow: String) -> APIResponse {
        var r = error(405, "method not allowed; use \(allow)")
        r.headers.append(("Allow", allow))
        return r
    }
}
