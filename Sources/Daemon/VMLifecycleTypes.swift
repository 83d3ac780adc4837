import APIModels
import Config
import Journald
import Logging
#if canImport(Glibc)
import Glibc
import VMMInterface
#endif

// The vocabulary of `VMLifecycle`: what can happen to a VM (`VMEvent`), what the supervisor must
// then do (`VMEffect`), and the values both carry. Plain data: no I/O, no clocks.

/// A VMM process the supervisor watches, with the definition it was started with (which may
/// differ from the loaded one until the next restart: a pending change).
public struct VMProcess: Equatable, Sendable {
    public var pid: pid_t
    /// /proc/PID/stat start time: with the pid, it names the process across pid reuse.
    public var startTime: UInt64
    public var definition: VMDefinition

    public init(pid: pid_t, startTime: UInt64, definition: VMDefinition) {
        self.pid = pid; self.startTime = startTime; self.definition = definition
    }
}

/// Why a stop was asked for; decides what happens when the VMM has ended.
public enum StopIntent: Equatable, Sendable {
    /// Stay stopped.
    case stop
    /// Start again at once with the loaded definition.
    case reboot
    /// The definition is gone: forget the VM.
    case remove
}

/// A snapshot a VMM is started to resume (`rtvisor-vmm --restore DIR`), and how it gets the
/// guest's memory (clones map it, sharing the page cache).
public struct RestoreSource: Equatable, Sendable, CustomStringConvertible {
    public var directory: String
    public var memory: RestoreMemoryMode
    public init(directory: String, memory: RestoreMemoryMode = .copy) { self.directory = directory; self.memory = memory }
    public var description: String { memory == .map ? "\(directory), memory mapped copy-on-write" : directory }
}

/// A VMM started to resume a snapshot, not yet confirmed (`VMLifecycle.restoring`).
public struct RestoringVMM: Equatable, Sendable {
    public var pid: pid_t
    public var source: RestoreSource
    public init(pid: pid_t, source: RestoreSource) { self.pid = pid; self.source = source }
}

/// A same-host upgrade under way (`VMLifecycle.upgrading`): the new VMM, and whether it is
/// known to run the guest.
public struct UpgradingVMM: Equatable, Sendable {
    public var target: VMProcess
    public var confirmed: Bool
    public init(target: VMProcess, confirmed: Bool = false) { self.target = target; self.confirmed = confirmed }
}

/// A VM arriving by live migration (`rtvisorctl migrate-receive`): rtvisord accepted the stream
/// and read its hello and configuration; the VMM gets the connected socket (`--incoming fd:N`)
/// and the configuration's file (`--incoming-config`).
public struct IncomingSource: Equatable, Sendable, CustomStringConvertible {
    /// rtvisord's descriptor of the accepted stream (passed to the VMM, then closed here).
    public var socket: Int32
    public var configFile: String
    public var sourceHost: String
    public init(socket: Int32, configFile: String, sourceHost: String) {
        self.socket = socket; self.configFile = configFile; self.sourceHost = sourceHost
    }
    public var description: String { "incoming migration from \(sourceHost)" }
}

/// A VMM started to take a VM over by live migration, until it serves its control socket (it
/// does once the guest runs here: `VMLifecycle.receiving`).
public struct IncomingVMM: Equatable, Sendable {
    public var pid: pid_t
    public var sourceHost: String
    public init(pid: pid_t, sourceHost: String) { self.pid = pid; self.sourceHost = sourceHost }
}

/// Why a VMM is spawned; its text appears in "VM NAME started (…)".
public enum SpawnReason: Equatable, Sendable, CustomStringConvertible {
    case autostart
    case addedByReload
    case startRequested
    case rebootRequested
    case guestReboot
    case restartPolicy(RestartPolicyKind)
    /// Restore or clone by API request: the VMM resumes a snapshot instead of booting.
    case restoreRequested(RestoreSource)
    /// The VMM takes the VM over from a live migration instead of booting.
    case incomingMigration(IncomingSource)

    /// The reason answers an API request (its spawn's result is the reply).
    var isRequest: Bool {
        switch self {
        case .startRequested, .restoreRequested, .incomingMigration: true
        default: false
        }
    }

    public var description: String {
        switch self {
        case .autostart: "autostart"
        case .addedByReload: "added by reload, autostart"
        case .startRequested: "start requested"
        case .rebootRequested: "reboot requested"
        case .guestReboot: "guest reboot"
        case let .restartPolicy(policy): "restart policy \"\(policy.rawValue)\""
        case let .restoreRequested(source): "restoring snapshot \(source)"
        case let .incomingMigration(source): "\(source)"
        }
    }
}

/// The signals the supervisor sends a VMM.
public enum VMMSignal: Equatable, Sendable, CustomStringConvertible {
    /// SIGUSR1: rtvisor-vmm injects Ctrl-Alt-Del (a graceful guest shutdown).
    case ctrlAltDel
    /// SIGTERM: rtvisor-vmm stops the vCPUs and exits 143.
    case terminate
    case kill
    /// SIGSTOP: pause.
    case freeze
    /// SIGCONT: resume.
    case thaw

    public var number: Int32 {
        switch self {
        case .ctrlAltDel: SIGUSR1
        case .terminate: SIGTERM
        case .kill: SIGKILL
        case .freeze: SIGSTOP
        case .thaw: SIGCONT
        }
    }

    public var description: String {
        switch self {
        case .ctrlAltDel: "SIGUSR1"
        case .terminate: "SIGTERM"
        case .kill: "SIGKILL"
        case .freeze: "SIGSTOP"
        case .thaw: "SIGCONT"
        }
    }
}

/// A VMM found through its state.json when rtvisord starts: a previous rtvisord launched it.
public struct AdoptedVMM: Equatable, Sendable {
    public var process: VMProcess
    public var startedAt: Double
    public var restarts: Int
    public var cgroup: String?
    /// Stopped with SIGSTOP (the VM was paused).
    public var frozen: Bool

    public init(process: VMProcess, startedAt: Double, restarts: Int, cgroup: String?, frozen: Bool) {
        self.process = process; self.startedAt = startedAt; self.restarts = restarts; self.cgroup = cgroup; self.frozen = frozen
    }
}

/// The two clocks a transition may need, read by the caller.
public struct LifecycleTime: Equatable, Sendable {
    /// Unix time in seconds: `since` and `lastExit.at`, shown to users.
    public var wall: Double
    /// Seconds on a monotonic clock: the restart policy's window.
    public var monotonic: Double

    public init(wall: Double, monotonic: Double) { self.wall = wall; self.monotonic = monotonic }
}

/// Everything that can happen to one VM.
public enum VMEvent: Equatable, Sendable {
    // Requests (bootstrap, reload, the control API).
    /// The VM's definition says autostart (daemon start, or added by a reload).
    case autostart(addedByReload: Bool)
    case startRequested
    case stopRequested(force: Bool)
    /// The guest's graceful reboot (`rtvisorctl reboot`): Ctrl-Alt-Del, then a new VMM.
    case rebootRequested
    /// The hard one (`rtvisorctl reset`): SIGTERM to the VMM, then a new VMM.
    case resetRequested
    /// Start the VM from a snapshot (restore, clone): its VMM resumes it instead of booting.
    case restoreRequested(RestoreSource)
    case pauseRequested
    case resumeRequested
    /// Start the VM's VMM taking it over from a live migration (the definition in force is the
    /// one `migrate-receive` installed).
    case incomingRequested(IncomingSource)
    /// A reload changed the VM's daemon settings only: they apply at once.
    case settingsChanged(DaemonSettings)
    /// A reload changed the VM's machine definition: its daemon settings apply at once, the rest
    /// when the next VMM starts (a running one keeps its own: a pending change).
    case definitionChanged(VMDefinition)
    /// A reload found the VM's definition gone.
    case definitionRemoved
    /// Every guest is shut down on request and the daemon stays (`rtvisorctl shutdown-guests`:
    /// rtvisor-guests.service stopping, at host shutdown).
    case shutdownRequested
    /// rtvisord stops in the foreground (SIGINT): every guest is shut down.
    case daemonShutdown
    /// rtvisord stops or restarts (SIGTERM): guests keep running for the next rtvisord to re-adopt.
    case daemonDetach

    // Results of effects the supervisor performed.
    case processSpawned(VMProcess, cgroup: String?)
    case spawnFailed(reason: String)
    case frozen(pid: pid_t)
    case freezeFailed(pid: pid_t, error: String)
    case thawed(pid: pid_t)
    case thawFailed(pid: pid_t, error: String)
    /// The VMM started for a restore answered on its control socket: the snapshot is resumed.
    case restoreConfirmed(pid: pid_t)
    /// The VMM started for an incoming migration answered on its control socket: the guest runs here.
    case incomingConfirmed(pid: pid_t)
    /// A migration of this VM ended without knowing whether the target runs it: its VMM keeps
    /// the guest paused (docs/migration.md, "Exactly one VM running").
    case migrationOutcomeUnknown(pid: pid_t)
    /// The VMM resumed a guest it had kept paused (`migrationOutcomeUnknown`), on request.
    case vmmResumed(pid: pid_t)
    /// A new VMM (`target`) was started to take the running VM over from VMM `pid` (a same-host
    /// upgrade, docs/migration.md): it becomes the VM's process when `pid` ends `migrated`.
    case upgradeStarted(pid: pid_t, target: VMProcess)
    /// The new VMM is known to run the guest (the old one is ended by force if it has not ended).
    case upgradeConfirmed(targetPID: pid_t)
    /// The upgrade did not happen: the old VMM keeps the VM, the new one is gone.
    case upgradeAbandoned(targetPID: pid_t)

    // The outside world.
    /// A watched VMM ended. `statusFile` is what it wrote at exit, if anything.
    case processExited(pid: pid_t, outcome: ExitOutcome, statusFile: VMMExitReport?)
    case restartTimerFired(generation: Int)
    case escalationDue(pid: pid_t, generation: Int, signal: VMMSignal)
    /// At daemon start: a VMM of the previous rtvisord is still running.
    case adopted(AdoptedVMM)
    /// At daemon start: a VMM of the previous rtvisord ended while nobody watched.
    case foundEnded(AdoptedVMM, statusFile: VMMExitReport?)
}

/// One journal entry about the VM (VM_NAME is the VM's; MESSAGE_ID follows `kind`).
public struct VMJournalEntry: Equatable, Sendable, CustomStringConvertible {
    public var kind: LifecycleEvent
    public var level: Logger.Level
    public var message: String
    public var pid: pid_t?
    public var state: VMStateName?
    public var exitReason: String?
    public var extra: [String: String]

    public init(_ kind: LifecycleEvent, _ level: Logger.Level, _ message: String, pid: pid_t? = nil, state: VMStateName? = nil,
                exitReason: String? = nil, extra: [String: String] = [:]) {
        self.kind = kind; self.level = level; self.message = message; self.pid = pid; self.state = state
        self.exitReason = exitReason; self.extra = extra
    }

    public var description: String { "\(kind.rawValue) \(level): \(message)" }
}

/// What the supervisor must do after a transition, in order.
public enum VMEffect: Equatable, Sendable, CustomStringConvertible {
    /// Prepare the run directory, admit and start rtvisor-vmm; report `processSpawned` or `spawnFailed`.
    case spawn(SpawnReason)
    /// Wait for the process on a thread of its own; report `processExited`.
    case watch(pid: pid_t, isChild: Bool)
    case signal(pid: pid_t, VMMSignal)
    /// SIGCONT if the process is stopped (paused, or found stopped after a daemon restart), so it
    /// can act on the stop signal that follows.
    case wakeIfStopped(pid: pid_t)
    /// SIGSTOP; report `frozen` or `freezeFailed`.
    case freeze(pid: pid_t)
    /// SIGCONT; report `thawed` or `thawFailed`.
    case thaw(pid: pid_t)
    /// Report `restartTimerFired(generation)` after the delay.
    case scheduleRestart(afterMs: Int, generation: Int)
    /// Report `escalationDue` after the delay.
    case scheduleEscalation(pid: pid_t, generation: Int, afterSeconds: Double, signal: VMMSignal)
    /// state.json from the current process, for re-adoption by the next rtvisord.
    case writeStateFile
    /// The ended VMM's state.json, console socket and cgroup.
    case removeRuntimeFiles
    /// Undo the host changes of a real-time VMM that may not have undone them itself, or that it
    /// left for a next VMM that will not adopt them (`VMLifecycle.keptPartition`).
    case releaseRealtime
    /// Keep the daemon and ordinary VMMs off the CPUs of running real-time VMs.
    case applyHousekeepingAffinity
    case journal(VMJournalEntry)
    /// sd_notify STATUS.
    case publishStatus
    /// Drop the VM from the supervisor.
    case forgetVM
    /// Delete /run/rtvisor/vms/NAME.
    case removeVMDirectory
    /// The answer to the control API request that caused the transition.
    case reply(Result<ActionResult, ControlError>)
    /// A same-host upgrade's new VMM is the VM's process now: its sockets take the usual paths,
    /// the old VMM's exit report goes.
    case finishUpgrade(pid: pid_t)

    public var description: String {
        switch self {
        case let .spawn(why): "spawn (\(why))"
        case let .watch(pid, isChild): "watch \(pid)\(isChild ? "" : " (not a child)")"
        case let .signal(pid, signal): "\(signal) to \(pid)"
        case let .wakeIfStopped(pid): "SIGCONT to \(pid) if stopped"
        case let .freeze(pid): "freeze \(pid)"
        case let .thaw(pid): "thaw \(pid)"
        case let .scheduleRestart(ms, _): "restart in \(ms) ms"
        case let .scheduleEscalation(pid, _, seconds, signal): "\(signal) to \(pid) in \(seconds) s"
        case .writeStateFile: "write state file"
        case .removeRuntimeFiles: "remove runtime files"
        case .releaseRealtime: "release real-time partition"
        case .applyHousekeepingAffinity: "apply housekeeping affinity"
        case let .journal(entry): "journal \(entry)"
        case .publishStatus: "publish status"
        case .forgetVM: "forget VM"
        case .removeVMDirectory: "remove VM directory"
        case let .finishUpgrade(pid): "finish upgrade to \(pid)"
        case let .reply(.success(result)): "reply \(result.action) \(result.state.rawValue): \(result.message)"
        case let .reply(.failure(error)): "refuse \(error.kind): \(error)"
        }
    }
}

extension ControlError {
    /// For effect descriptions in tests: "conflict", "not found", "failed".
    var kind: String {
        switch self {
        case .notFound: "not found"
        case .conflict: "conflict"
        case .failed: "failed"
        case .invalidDefinition: "invalid definition"
        }
    }
}
