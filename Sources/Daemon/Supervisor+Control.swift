import APIModels
import Config
import Foundation
import Realtime

/// The control API (`VMControl`): queries answered from the records, actions fed into the VM's
/// lifecycle, whose reply effect is the answer.
extension Supervisor {
    func summary(_ r: Record) -> VMSummary {
        VMSummary(name: r.loaded.name, state: r.state, pid: r.pid, autostart: r.loaded.definition.daemon.autostart,
                  restartPolicy: r.loaded.definition.daemon.restart.policy.rawValue, restarts: r.lifecycle.restarts, pendingChange: r.pending,
                  definitionFile: r.loaded.file, since: r.lifecycle.since, lastExit: r.lifecycle.lastExit,
                  guestReadyAt: r.pid.flatMap { guestReadyAt[$0] }, guestStartedAt: guestStarted(r))
    }

    /// When the running VMM's vCPUs entered the guest. A VMM spawned without a notice socket
    /// (re-adopted, or taken over by an upgrade or a migration) was past its set-up when it
    /// became this VM's: its running state's start stands for it.
    func guestStarted(_ r: Record) -> Double? {
        guard let pid = r.pid, r.state == .running || r.state == .paused || r.state == .stopping else { return nil }
        if let noticed = guestStartedAt[pid] { return noticed }
        return r.lifecycle.since
    }

    public func list() -> VMList {
        VMList(vms: records.keys.sorted().map { summary(records[$0]!) },
               invalidDefinitions: invalid.map { DefinitionProblem(file: $0.file, path: $0.path, reason: $0.reason) })
    }

    func record(_ name: String) throws(ControlError) -> Record {
        guard let r = records[name] else { throw .notFound("no VM named \"\(name)\"") }
        return r
    }

    /// The latest histogram of a real-time VM's wake-up latency probe (kept after it stops).
    public func latency(_ name: String) throws(ControlError) -> LatencySnapshot {
        let r = try record(name)
        guard (r.current.realtime?.latencyProbeMicroseconds ?? 0) > 0 else {
            throw .conflict("VM \(name) has no latency probe (realtime.latency_probe_us)")
        }
        // A jailed VMM rewrites the file in place (it cannot rename in rtvisord's directory): a
        // read may catch it half written, so a bad read is retried.
        for attempt in 0..<5 {
            if let s = LatencySnapshot.read(paths.latencyFile(name)) { return s }
            if attempt < 4 { usleep(20_000) }
        }
        throw .conflict("VM \(name) has no latency samples yet")
    }

    public func realtimeCheck(_ name: String?) throws(ControlError) -> [RealtimeCheck] {
        var names = records.keys.sorted().filter { records[$0]!.loaded.definition.realtime != nil }
        if let name { names = [try record(name).loaded.name] }
        var checks: [RealtimeCheck] = []
        for n in names {
            let r = records[n]!
            guard let rt = r.current.realtime else { throw .conflict("VM \(n) has no realtime block") }
            let report = RealtimeReport(vm: n, cpus: rt.cpus, otherRealtimeCPUs: reservedRealtimeCPUs(excluding: n), exitsDisabled: rt.exits.contains(.hlt))
            checks.append(RealtimeCheck(name: n, cpus: rt.cpus, running: r.pid != nil, lines: report.lines, warnings: report.warnings))
        }
        return checks
    }

    public func inspect(_ name: String) throws(ControlError) -> VMDetail {
        let r = try record(name)
        let d = r.current
        return VMDetail(summary: summary(r), vcpus: d.vcpus, memoryMiB: d.memoryMiB, kernel: d.kernel, initrd: d.initrd, cmdline: d.cmdline,
                        consoleSocket: paths.consoleSocket(name), cgroup: r.lifecycle.cgroup, stopTimeoutSeconds: r.loaded.definition.daemon.stopTimeoutSeconds)
    }

    public func start(_ name: String) throws(ControlError) -> ActionResult {
        try answer(name, .startRequested)
    }

    public func stop(_ name: String, force: Bool) throws(ControlError) -> ActionResult {
        try answer(name, .stopRequested(force: force))
    }

    public func reboot(_ name: String) throws(ControlError) -> ActionResult {
        try answer(name, .rebootRequested)
    }

    public func reset(_ name: String) throws(ControlError) -> ActionResult {
        try answer(name, .resetRequested)
    }

    public func pause(_ name: String) throws(ControlError) -> ActionResult {
        try answer(name, .pauseRequested)
    }

    public func resume(_ name: String) async throws(ControlError) -> ActionResult {
        let r = try record(name)
        if r.lifecycle.pausedByVMM, let pid = r.pid { return try await resumeThroughVMM(name, pid: pid) }
        return try answer(name, .resumeRequested)
    }

    /// Feeds an API request into the VM's lifecycle; its reply is the answer.
    func answer(_ name: String, _ request: VMEvent) throws(ControlError) -> ActionResult {
        _ = try record(name)
        // Every request event replies, at once or when the spawn it asked for has been tried.
        guard let reply = feed(name, request) else { throw .failed("VM \(name): no answer to \(request)") }
        return try reply.get()
    }

    public nonisolated func validate(_ request: ValidateRequest) async -> ValidateResult {
        Self.validate(request, definitions: paths.definitions)
    }

    /// Problems reported by one validation; the rest are counted (every problem repeats the
    /// client's `file`: the answer must not grow with their product).
    public static let maxValidateProblems = 100

    /// The API's validation runs as root for any local client (issue 16): the client's
    /// `base_directory` is ignored (relative paths resolve against the definitions directory) and
    /// no file is looked at, so it cannot tell whether a path exists; `rtvisorctl validate`
    /// checks the files itself, with the caller's own permissions.
    public static func validate(_ request: ValidateRequest, definitions: String) -> ValidateResult {
        let file = String((request.file ?? "definition").prefix(1024))
        do {
            let d = try VMDefinition.parse(Data(request.definition.utf8), file: file, baseDirectory: definitions, checkFiles: false)
            return ValidateResult(valid: true, name: d.name, problems: [])
        } catch let e as DefinitionError {
            var problems = e.issues.prefix(maxValidateProblems).map { DefinitionProblem(file: $0.file, path: $0.path, reason: $0.reason) }
            if e.issues.count > maxValidateProblems {
                problems.append(DefinitionProblem(file: file, path: "$", reason: "\(e.issues.count - maxValidateProblems) more problems not shown"))
            }
            return ValidateResult(valid: false, name: nil, problems: problems)
        } catch {
            return ValidateResult(valid: false, name: nil, problems: [DefinitionProblem(file: file, path: "$", reason: "\(error)")])
        }
    }

    public func info() -> DaemonInfo {
        DaemonInfo(version: version, pid: getpid(), definitionsDirectory: paths.definitions, status: statusText)
    }

    /// For the watchdog: proves the actor is not stuck.
    public func ping() -> Bool { true }
}
