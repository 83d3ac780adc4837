// definition and api: text inputs.
//
// definition: the input is a VM definition file. VMDefinition.parse must return a definition or
//   throw DefinitionError with at least one issue, for any bytes. Relative paths resolve against
//   a directory holding `vmlinux`, `initrd.cpio` and `disk.img` (so seeds can be valid).
// api: byte 0 picks the method (GET, POST, PUT, DELETE, HEAD, or the raw text before the first
//   space), then the request target up to the first newline, then the body; APIRouter.handle runs
//   against a fixed fake VM control (VMs "web" running, "db" stopped). The answer must be one of
//   the documented statuses with a JSON body.
import API
import VMMInterface
import APIModels
import Config
import Daemon
import Dispatch
import Foundation

let definitionBase: String = {
    let dir = "/tmp/rtvisor-fuzz-files"
    mkdir(dir, 0o755)
    for name in ["vmlinux", "initrd.cpio", "disk.img"] {
        let fd = open(dir + "/" + name, O_CREAT | O_RDWR | O_CLOEXEC, 0o644)
        if fd >= 0 { ftruncate(fd, 4096); close(fd) }
    }
    return dir
}()

func fuzzDefinition(_ input: UnsafeRawBufferPointer) -> String {
    let data = Data(input)
    do {
        let d = try VMDefinition.parse(data, file: "fuzz.json", baseDirectory: definitionBase)
        return "valid: \(d.name), \(d.vcpus) vCPU(s), \(d.disks.count) disk(s), \(d.nets.count) net(s)"
    } catch let e as DefinitionError {
        precondition(!e.issues.isEmpty, "DefinitionError without issues")
        return "invalid: \(e.issues.count) issue(s), first: \(e.issues[0].path): \(e.issues[0].reason)"
    } catch {
        preconditionFailure("VMDefinition.parse threw \(type(of: error)), not DefinitionError: \(error)")
    }
}

/// A VMControl answering from a fixed table; it keeps no state, so iterations are independent.
final class FuzzControl: VMControl {
    let vms: [String: VMStateName] = ["web": .running, "db": .stopped]

    func summary(_ name: String) -> VMSummary {
        VMSummary(name: name, state: vms[name]!, pid: vms[name] == .running ? 42 : nil, autostart: true, restartPolicy: "on-failure",
                  restarts: 0, pendingChange: false, definitionFile: "/etc/rtvisor/vms/\(name).json", since: 0, lastExit: nil)
    }
    func list() -> VMList { VMList(vms: vms.keys.sorted().map(summary), invalidDefinitions: []) }
    func inspect(_ name: String) throws(ControlError) -> VMDetail {
        guard vms[name] != nil else { throw .notFound("no VM named \"\(name)\"") }
        return VMDetail(summary: summary(name), vcpus: 1, memoryMiB: 32, kernel: "/k", initrd: nil, cmdline: "",
                        consoleSocket: "/run/rtvisor/vms/\(name)/console.sock", cgroup: nil, stopTimeoutSeconds: 30)
    }
    func act(_ action: String, _ name: String, requires: VMStateName, to: VMStateName) throws(ControlError) -> ActionResult {
        guard let s = vms[name] else { throw .notFound("no VM named \"\(name)\"") }
        guard s == requires else { throw .conflict("VM \(name) is \(s.rawValue)") }
        return ActionResult(name: name, action: action, state: to, message: action)
    }
    func start(_ name: String) throws(ControlError) -> ActionResult { try act("start", name, requires: .stopped, to: .running) }
    func reset(_ name: String) throws(ControlError) -> ActionResult { try act("reset", name, requires: .running, to: .running) }
    /// A fixed event, never a wait: a fuzz iteration must not sleep.
    func events(after: UInt64?, vm: String?, waitSeconds: Int) throws(ControlError) -> EventBatch {
        if let vm, vms[vm] == nil { throw .notFound("no VM named \"\(vm)\"") }
        let e = DaemonEvent(seq: 1, time: 0, kind: "vm-started", vm: "web", pid: 42, state: .running, message: "VM web started", reason: nil, fields: [:])
        return EventBatch(events: (after ?? 1) < 1 && (vm == nil || vm == "web") ? [e] : [], next: 1, missed: 0)
    }
    func stop(_ name: String, force: Bool) throws(ControlError) -> ActionResult { try act(force ? "stop-force" : "stop", name, requires: .running, to: .stopping) }
    func reboot(_ name: String) throws(ControlError) -> ActionResult { try act("reboot", name, requires: .running, to: .running) }
    func pause(_ name: String) throws(ControlError) -> ActionResult { try act("pause", name, requires: .running, to: .paused) }
    func resume(_ name: String) throws(ControlError) -> ActionResult { throw .failed("SIGCONT failed") }
    func validate(_ request: ValidateRequest) -> ValidateResult { Supervisor.validate(request, definitions: definitionBase) }
    func reload() -> ReloadResult { ReloadResult(added: [], removed: [], changed: [], pending: [], invalidDefinitions: []) }
    func info() -> DaemonInfo { DaemonInfo(version: "fuzz", pid: 1, definitionsDirectory: "/etc/rtvisor/vms", status: "2 VMs") }
    func realtimeCheck(_ name: String?) throws(ControlError) -> [RealtimeCheck] {
        if let name, name != "web" { throw .conflict("VM \(name) has no realtime block") }
        return [RealtimeCheck(name: "web", cpus: [1], running: true, lines: ["real-time check for VM web"], warnings: [])]
    }
    func latency(_ name: String) throws(ControlError) -> LatencySnapshot {
        guard name == "web" else { throw .conflict("VM \(name) has no latency probe (realtime.latency_probe_us)") }
        return LatencySnapshot(name: "web", cpu: 1, priority: 51, periodMicroseconds: 1000, samples: 3, minNanoseconds: 1, meanNanoseconds: 2,
                               p50Nanoseconds: 2, p99Nanoseconds: 3, p9999Nanoseconds: 3, maxNanoseconds: 3, buckets: [[1, 1]], updatedAt: 0)
    }
    func stats(_ name: String?) throws(ControlError) -> StatsList {
        if let name, vms[name] == nil { throw .notFound("no VM named \"\(name)\"") }
        return StatsList(vms: (name.map { [$0] } ?? vms.keys.sorted()).map { n in
            VMStats(name: n, state: vms[n]!, pid: vms[n] == .running ? 42 : nil, vmmStartedAt: nil, restarts: 0, vcpus: [], memory: nil,
                    disks: [], nics: [], realtime: nil)
        }, collectedAt: 0)
    }
    func consoleTail(_ name: String, lines: Int) throws(ControlError) -> ConsoleTail {
        guard vms[name] == .running else { throw vms[name] == nil ? .notFound("no VM named \"\(name)\"") : .conflict("VM \(name) is not running") }
        return ConsoleTail(name: name, lines: Array(["booting", "ready"].suffix(lines)))
    }
    func shutdownGuests() -> GuestsResult {
        GuestsResult(vms: [ActionResult(name: "web", action: "shutdown", state: .stopping, message: "shutdown")], waitSeconds: 35)
    }
    func startGuests() -> GuestsResult {
        GuestsResult(vms: [ActionResult(name: "db", action: "start", state: .running, message: "start")], waitSeconds: 0)
    }
    func snapshot(_ name: String, _ options: SnapshotOptions) throws(ControlError) -> SnapshotResult {
        _ = try act("snapshot", name, requires: .running, to: .running)
        return SnapshotResult(name: name, snapshot: SnapshotInfo(directory: options.to ?? "/var/lib/rtvisor/snapshots/\(name)/x"), stateBytes: 1,
                              memoryDataBytes: 0, pausedMilliseconds: 1, state: options.stop == true ? .stopped : .running)
    }
    func snapshots(vm: String?) -> SnapshotList { SnapshotList(root: "/var/lib/rtvisor/snapshots", snapshots: []) }
    func restore(_ request: RestoreRequest) throws(ControlError) -> RestoredVM {
        let name = request.name ?? "restored"
        guard vms[name] == nil else { throw .conflict("VM \(name) is \(vms[name]!.rawValue)") }
        return RestoredVM(name: name, pid: 43, definitionFile: "/etc/rtvisor/vms/\(name).json", directory: request.directory, message: "resumed")
    }
    func clone(_ name: String, _ request: CloneRequest) throws(ControlError) -> CloneResult {
        guard vms[name] == .running || request.from != nil else { throw .conflict("VM \(name) is not running") }
        return CloneResult(origin: name, snapshot: request.from ?? "/s", clones: [])
    }
    func migrationStatus(_ name: String) throws(ControlError) -> MigrationStatus {
        _ = try act("migration", name, requires: .running, to: .running)
        return MigrationStatus(name: name, address: "unix:/fuzz", phase: "pre-copy")
    }
    func upgrade(_ name: String) throws(ControlError) -> UpgradeResult {
        _ = try act("upgrade", name, requires: .running, to: .running)
        return UpgradeResult(name: name, oldPID: 1, newPID: 2, vmm: "/fuzz", memoryHandedOver: true, totalBytes: 0, totalMilliseconds: 0,
                             downtimeMilliseconds: 0, state: .running)
    }
    func migrate(_ name: String, _ request: MigrateRequest) throws(ControlError) -> MigrateResult {
        _ = try act("migrate", name, requires: .running, to: .migrated)
        return MigrateResult(name: name, sourceHost: "fuzz", address: request.address, rounds: [], totalBytes: 0, totalMilliseconds: 0,
                             downtimeMilliseconds: 0, state: .migrated)
    }
    func receiveMigration(_ request: IncomingRequest) throws(ControlError) -> IncomingMigration {
        if let name = request.name, vms[name] == .running { throw .conflict("VM \(name) is running") }
        return IncomingMigration(id: "1", listen: request.listen, phase: .listening, name: request.name)
    }
    func incomingMigrations() -> IncomingList { IncomingList(migrations: []) }
    func incomingMigration(_ id: String) throws(ControlError) -> IncomingMigration {
        guard id == "1" else { throw .notFound("no incoming migration \(id)") }
        return IncomingMigration(id: "1", listen: "unix:/x", phase: .listening)
    }
}

let router = APIRouter(control: FuzzControl())

final class ResponseBox: @unchecked Sendable { var response: APIResponse?; var reply: [UInt8]? }

/// Runs a task's jobs on the thread that enqueues them: a task started with this preference runs
/// inline until its first real suspension, so `APIRouter.handle` over the fake control (which
/// never suspends) completes before `Task.init` returns, with no thread hop per input.
final class InlineExecutor: TaskExecutor {
    func enqueue(_ job: consuming ExecutorJob) {
        job.runSynchronously(on: asUnownedTaskExecutor())
    }
}
let inlineExecutor = InlineExecutor()

func fuzzAPI(_ input: UnsafeRawBufferPointer) -> String {
    guard let first = input.first else { return "empty" }
    var rest = Array(input.dropFirst())
    let methods = ["GET", "POST", "PUT", "DELETE", "HEAD"]
    var method: String
    if Int(first) % 6 < methods.count {
        method = methods[Int(first) % 6]
    } else {
        let space = rest.firstIndex(of: 0x20) ?? 0
        method = String(decoding: rest[..<space], as: UTF8.self)
        rest = Array(rest[min(space + 1, rest.count)...])
    }
    let newline = rest.firstIndex(of: 0x0A) ?? rest.count
    let request = APIRequest(method: method, target: String(decoding: rest[..<newline], as: UTF8.self),
                             body: Array(rest[min(newline + 1, rest.count)...]))
    // APIRouter.handle is async; it runs inline (see InlineExecutor). Should it ever suspend,
    // the semaphore waits for it on whatever thread resumes it.
    let box = ResponseBox()
    let done = DispatchSemaphore(value: 0)
    Task(executorPreference: inlineExecutor) {
        box.response = await router.handle(request)
        done.signal()
    }
    done.wait()
    let r = box.response!
    precondition([200, 400, 404, 405, 409, 500].contains(r.status), "status \(r.status)")
    if r.headers.contains(where: { $0.0 == "Content-Type" && $0.1.hasPrefix("text/plain") }) {
        // GET /metrics: Prometheus' text format, each line a comment or `name[{labels}] value`.
        for line in r.text.split(separator: "\n") {
            let name = line.prefix { $0.isLetter || $0.isNumber || $0 == "_" || $0 == ":" }
            precondition(line.hasPrefix("# ") || (!name.isEmpty && line.contains(" ")), "not an exposition line: \(line)")
        }
    } else if r.headers.contains(where: { $0 == ("Content-Type", "application/x-ndjson") }) {
        // GET /v1/events: one JSON object per line (none is fine).
        for line in r.body.split(separator: 0x0A) {
            precondition((try? JSONSerialization.jsonObject(with: Data(line))) != nil, "an event line is not JSON: \(r.text)")
        }
    } else {
        precondition((try? JSONSerialization.jsonObject(with: Data(r.body))) != nil, "body is not JSON: \(r.text)")
    }
    return "\(request.method) \(request.target) → \(r.status) \(r.text.prefix(120))"
}

/// rtvisord's side of the control socket, fed what a subverted API front could send: frames
/// (length, id, JSON `ControlCall`) back to back. Each frame is length-checked, decoded and, if
/// it is a call, answered by the fake control; the first malformed frame ends the stream, as it
/// ends the real channel. Invariant: every reply is one well-formed frame echoing the call's id.
func fuzzControl(_ input: UnsafeRawBufferPointer) -> String {
    var bytes = Array(input)[...]
    var answered = 0
    while bytes.count >= 4 {
        let length: Int
        do { length = try ControlFrame.bodyLength(Array(bytes.prefix(4))) } catch { return "\(answered) call(s), then \(error)" }
        bytes = bytes.dropFirst(4)
        guard bytes.count >= length else { return "\(answered) call(s), then a frame cut short" }
        let frame = Array(bytes.prefix(length))
        bytes = bytes.dropFirst(length)
        let id: UInt64, call: ControlCall
        do { (id, call) = try ControlServer.decodeCall(frame) } catch { return "\(answered) call(s), then \(error)" }
        let box = ResponseBox()
        let done = DispatchSemaphore(value: 0)
        Task(executorPreference: inlineExecutor) {
            box.reply = await ControlServer.reply(id: id, to: call, on: FuzzControl())
            done.signal()
        }
        done.wait()
        let reply = box.reply!
        let replyLength = try? ControlFrame.bodyLength(Array(reply.prefix(4)))
        precondition(replyLength == reply.count - 4, "reply length header \(String(describing: replyLength)) for \(reply.count - 4) bytes")
        let decoded = try? ControlFrame.decode(Array(reply.dropFirst(4)))
        precondition(decoded?.id == id && decoded.map { ControlFrame.Outcome(rawValue: $0.payload.first ?? 0xFF) != nil } == true, "reply to \(id) malformed")
        answered += 1
    }
    return "\(answered) call(s)"
}
