import VMMInterface

// The control API's JSON shapes (docs/api.yaml), shared by rtvisord and rtvisorctl.
// snake_case on the wire; every type is plain data. Each spells out its public memberwise
// initialiser, alike from type to type: Swift synthesises only an internal one.

/// A VM's lifecycle state as the supervisor sees it.
public enum VMStateName: String, Codable, Sendable, CaseIterable {
    /// Not running; last ended normally (or never started).
    case stopped
    /// The VMM process is starting or running the guest.
    case running
    /// The VMM process is stopped (SIGSTOP), the guest frozen.
    case paused
    /// A stop was requested; waiting for the guest/VMM to end.
    case stopping
    /// Ended unexpectedly; a restart is scheduled (restart policy backoff).
    case restarting
    /// Ended unexpectedly and will not be restarted (policy `no`, or the restart limit was hit).
    case failed
    /// Being received by live migration: its VMM takes the VM over from another host
    /// (`rtvisorctl migrate-receive`); `running` once it runs here.
    case incoming
    /// Moved to another host by live migration (exit status 9): stopped here, never restarted.
    case migrated
}

public struct ExitInfo: Codable, Sendable, Equatable {
    /// rtvisor-vmm's exit status (docs/exit-status.md), when it exited.
    public var status: Int32?
    /// The signal that killed it, when it was killed.
    public var signal: Int32?
    /// rtvisor-vmm's own reason line, or what the daemon knows.
    public var reason: String
    /// Unix time in seconds.
    public var at: Double
    public init(status: Int32?, signal: Int32?, reason: String, at: Double) {
        self.status = status; self.signal = signal; self.reason = reason; self.at = at
    }
}

public struct VMSummary: Codable, Sendable, Equatable {
    public var name: String
    public var state: VMStateName
    public var pid: Int32?
    public var autostart: Bool
    public var restartPolicy: String
    /// Automatic restarts (policy) and reboots since rtvisord loaded the definition.
    public var restarts: Int
    /// The definition file changed since the VM started; applied on its next start/reboot.
    public var pendingChange: Bool
    public var definitionFile: String
    /// Unix time of the last state change.
    public var since: Double
    public var lastExit: ExitInfo?
    /// Unix time the running VMM's guest wrote the boot marker (the `vm-guest-ready` event); nil
    /// before, for a guest that never writes it, and for a VMM this rtvisord re-adopted.
    public var guestReadyAt: Double?
    /// Unix time the running VMM's vCPUs entered the guest: past its set-up, where a start can
    /// still fail. `--wait` waits for it.
    public var guestStartedAt: Double?

    public init(name: String, state: VMStateName, pid: Int32?, autostart: Bool, restartPolicy: String, restarts: Int,
                pendingChange: Bool, definitionFile: String, since: Double, lastExit: ExitInfo?, guestReadyAt: Double? = nil,
                guestStartedAt: Double? = nil) {
        self.name = name; self.state = state; self.pid = pid; self.autostart = autostart
        self.restartPolicy = restartPolicy; self.restarts = restarts; self.pendingChange = pendingChange
        self.definitionFile = definitionFile; self.since = since; self.lastExit = lastExit; self.guestReadyAt = guestReadyAt
        self.guestStartedAt = guestStartedAt
    }

    enum CodingKeys: String, CodingKey {
        case name, state, pid, autostart, restarts, since
        case restartPolicy = "restart_policy", pendingChange = "pending_change"
        case definitionFile = "definition_file", lastExit = "last_exit", guestReadyAt = "guest_ready_at"
        case guestStartedAt = "guest_started_at"
    }
}

public struct VMDetail: Codable, Sendable, Equatable {
    public var summary: VMSummary
    public var vcpus: Int
    public var memoryMiB: Int
    public var kernel: String
    public var initrd: String?
    public var cmdline: String
    public var consoleSocket: String
    public var cgroup: String?
    public var stopTimeoutSeconds: Int

    public init(summary: VMSummary, vcpus: Int, memoryMiB: Int, kernel: String, initrd: String?, cmdline: String,
                consoleSocket: String, cgroup: String?, stopTimeoutSeconds: Int) {
        self.summary = summary; self.vcpus = vcpus; self.memoryMiB = memoryMiB; self.kernel = kernel
        self.initrd = initrd; self.cmdline = cmdline; self.consoleSocket = consoleSocket; self.cgroup = cgroup
        self.stopTimeoutSeconds = stopTimeoutSeconds
    }

    enum CodingKeys: String, CodingKey {
        case summary, vcpus, kernel, initrd, cmdline, cgroup
        case memoryMiB = "memory_mib", consoleSocket = "console_socket", stopTimeoutSeconds = "stop_timeout_s"
    }
}

/// One problem in a definition file: `FILE: $.json.path: reason`.
public struct DefinitionProblem: Codable, Sendable, Equatable, CustomStringConvertible {
    public var file: String
    public var path: String
    public var reason: String
    public init(file: String, path: String, reason: String) { self.file = file; self.path = path; self.reason = reason }
    public var description: String { "\(file): \(path): \(reason)" }
}

public struct VMList: Codable, Sendable, Equatable {
    public var vms: [VMSummary]
    /// Definition files that were skipped, with every problem found.
    public var invalidDefinitions: [DefinitionProblem]
    public init(vms: [VMSummary], invalidDefinitions: [DefinitionProblem]) { self.vms = vms; self.invalidDefinitions = invalidDefinitions }
    enum CodingKeys: String, CodingKey { case vms, invalidDefinitions = "invalid_definitions" }
}

public struct StopRequest: Codable, Sendable, Equatable {
    /// Skip the graceful (Ctrl-Alt-Del) phase.
    public var force: Bool?
    public init(force: Bool? = nil) { self.force = force }
}

public struct ActionResult: Codable, Sendable, Equatable {
    public var name: String
    public var action: String
    public var state: VMStateName
    public var message: String
    public init(name: String, action: String, state: VMStateName, message: String) {
        self.name = name; self.action = action; self.state = state; self.message = message
    }
}

/// `POST /v1/guests/shutdown` and `POST /v1/guests/start` (rtvisor-guests.service's stop and
/// start): what was done to each VM the request concerned.
public struct GuestsResult: Codable, Sendable, Equatable {
    /// Shutdown: every VM that was running, paused, stopping or waiting to restart; start: every
    /// autostart VM that was stopped.
    public var vms: [ActionResult]
    /// Shutdown: the longest any of those stops may take (its stop timeout plus the hard stop's
    /// grace); by then the daemon has ended every VMM. 0 for start.
    public var waitSeconds: Double
    public init(vms: [ActionResult], waitSeconds: Double) { self.vms = vms; self.waitSeconds = waitSeconds }
    enum CodingKeys: String, CodingKey { case vms, waitSeconds = "wait_s" }
}

/// `POST /v1/validate`: a definition's text, checked as if it were in `baseDirectory`.
public struct ValidateRequest: Codable, Sendable, Equatable {
    public var definition: String
    /// Shown in problems (default "definition").
    public var file: String?
    /// Relative kernel/initrd paths are resolved against it (default /etc/rtvisor/vms).
    public var baseDirectory: String?
    public init(definition: String, file: String? = nil, baseDirectory: String? = nil) {
        self.definition = definition; self.file = file; self.baseDirectory = baseDirectory
    }
    enum CodingKeys: String, CodingKey { case definition, file, baseDirectory = "base_directory" }
}

public struct ValidateResult: Codable, Sendable, Equatable {
    public var valid: Bool
    public var name: String?
    public var problems: [DefinitionProblem]
    public init(valid: Bool, name: String?, problems: [DefinitionProblem]) { self.valid = valid; self.name = name; self.problems = problems }
}

public struct ReloadResult: Codable, Sendable, Equatable {
    public var added: [String]
    public var removed: [String]
    public var changed: [String]
    /// Running VMs whose definition changed: the change applies when they restart.
    public var pending: [String]
    public var invalidDefinitions: [DefinitionProblem]
    public init(added: [String], removed: [String], changed: [String], pending: [String], invalidDefinitions: [DefinitionProblem]) {
        self.added = added; self.removed = removed; self.changed = changed; self.pending = pending
        self.invalidDefinitions = invalidDefinitions
    }
    enum CodingKeys: String, CodingKey { case added, removed, changed, pending, invalidDefinitions = "invalid_definitions" }
}

public struct DaemonInfo: Codable, Sendable, Equatable {
    public var version: String
    public var pid: Int32
    public var definitionsDirectory: String
    public var status: String
    public init(version: String, pid: Int32, definitionsDirectory: String, status: String) {
        self.version = version; self.pid = pid; self.definitionsDirectory = definitionsDirectory; self.status = status
    }
    enum CodingKeys: String, CodingKey { case version, pid, status, definitionsDirectory = "definitions_directory" }
}

public struct APIErrorBody: Codable, Sendable, Equatable {
    /// For people: may change wording between releases.
    public var error: String
    /// For scripts: one of `APIErrorCode` (a string, so a newer daemon's code still decodes).
    public var code: String?
    public var problems: [DefinitionProblem]?
    public init(error: String, code: APIErrorCode? = nil, problems: [DefinitionProblem]? = nil) {
        self.error = error; self.code = code?.rawValue; self.problems = problems
    }
}

/// The stable, machine-readable `code` of every API error (docs/api.yaml, Error): scripts match
/// it, never the message. One per kind of failure, which the HTTP status also tells apart.
public enum APIErrorCode: String, Codable, Sendable, CaseIterable {
    /// 400: a malformed body, parameter or name.
    case badRequest = "bad-request"
    /// 403: the caller may not use the API (not root, not in the group).
    case forbidden
    /// 404: no such VM, snapshot, migration, endpoint or action.
    case notFound = "not-found"
    /// 405: the endpoint exists, the method does not (the Allow header lists the methods).
    case methodNotAllowed = "method-not-allowed"
    /// 409: the VM's state (or the daemon's) does not allow the action.
    case conflict
    /// 409: a definition the request brings (a restore's) is invalid; `problems` lists each.
    case invalidDefinition = "invalid-definition"
    /// 413: the request body is over 1 MiB.
    case tooLarge = "too-large"
    /// 500: the action was tried and failed (the message says why).
    case failed

    public init(status: Int) {
        switch status {
        case 403: self = .forbidden
        case 404: self = .notFound
        case 405: self = .methodNotAllowed
        case 409: self = .conflict
        case 413: self = .tooLarge
        case 400..<500: self = .badRequest
        default: self = .failed
        }
    }
}

public enum APIPaths {
    public static let defaultSocket = "/run/rtvisor/api.sock"
    public static let defaultRunDirectory = "/run/rtvisor"
    public static let defaultDefinitions = "/etc/rtvisor/vms"
    /// Disk images, snapshots (`snapshots/NAME/TIMESTAMP/`) and clones' disks (`clones/NAME/`).
    public static let defaultStateDirectory = "/var/lib/rtvisor"
}

/// `GET /v1/vms/{name}/rt-check`, `GET /v1/rt-check`: what the host offers a real-time VM's CPUs.
public struct RealtimeCheck: Codable, Sendable, Equatable {
    public var name: String
    public var cpus: [Int]
    public var running: Bool
    /// One line per CPU (isolcpus/nohz_full/rcu_nocbs, SMT siblings, governor, IRQs), then warnings.
    public var lines: [String]
    public var warnings: [String]
    public init(name: String, cpus: [Int], running: Bool, lines: [String], warnings: [String]) {
        self.name = name; self.cpus = cpus; self.running = running; self.lines = lines; self.warnings = warnings
    }
}

/// `GET /v1/vms/{name}/latency`: the VMM's latency file as the API serves it (the type is the
/// daemon↔VMM contract's, `VMMInterface.LatencySnapshot`).
public typealias LatencySnapshot = VMMInterface.LatencySnapshot
