import APIModels
import Config
import Foundation
import Journald
import Logging
import Realtime
import VMMInterface

/// Supervises one rtvisor-vmm process per VM: starts, stops (graceful, then hard), restarts per
/// policy, pauses, re-adopts VMMs left running by a previous rtvisord, and reloads the
/// definitions directory. What happens to a VM is decided by its `VMLifecycle` (a pure state
/// machine); this actor feeds it events and performs the effects it returns (Supervisor+Effects).
/// Process waits run on their own threads and report back here.
public actor Supervisor: VMControl {
    struct Record {
        var loaded: LoadedDefinition
        var lifecycle: VMLifecycle

        init(name: String, _ loaded: LoadedDefinition, daemonLeaving: Bool = false) {
            self.loaded = loaded
            lifecycle = VMLifecycle(name: name, definition: loaded.definition, since: Date().timeIntervalSince1970, daemonLeaving: daemonLeaving)
        }

        var state: VMStateName { lifecycle.stateName }
        var pid: pid_t? { lifecycle.process?.pid }

        /// The definition in force: the running process's, else the loaded one.
        var current: VMDefinition { lifecycle.process?.definition ?? loaded.definition }

        var pending: Bool {
            guard let running = lifecycle.process?.definition else { return false }
            return LoadedDefinition.machineDiffers(running, loaded.definition)
        }
    }

    public let paths: DaemonPaths
    let logger: Logger
    let cgroups: CgroupPlacement
    /// Reads what `stats` reports beyond the records (procfs, cgroupfs, the VMMs' counters).
    let statsCollector = StatsCollector()
    let onStatus: @Sendable (String) -> Void
    let version: String
    var records: [String: Record] = [:]
    var invalid: [DefinitionIssue] = []
    /// Set by shutdownAll/detachAll; VMs a reload adds afterwards start with it too.
    var shuttingDown = false
    /// VMs whose VMM is sending them to another host now (one migration at a time per VM).
    var migrating: Set<String> = []
    /// The migrations under way, as their VMMs report them after each round.
    var migrationProgress: [String: MigrationStatus] = [:]
    /// Incoming migrations by id (`migrate-receive`), kept after they end so a caller can look.
    var incoming: [String: IncomingMigration] = [:]
    /// Shared-memory channels' memory and doorbells, kept for the daemon's lifetime (docs/channels.md).
    var channels = ChannelStore()
    var nextIncomingID = 1
    /// The recent lifecycle events (`GET /v1/events`), and the long polls waiting for the next.
    var eventLog = EventLog()
    var eventWaiters: [UInt64: EventWaiter] = [:]
    var nextEventWaiter: UInt64 = 1
    /// Our ends of the notice sockets of VMMs just spawned, until their `watch` takes them.
    var noticeSockets: [pid_t: Int32] = [:]
    /// When each running VMM's guest signalled ready (Unix time), by PID.
    var guestReadyAt: [pid_t: Double] = [:]
    /// VMMs spawned with a notice socket, and when their vCPUs entered the guest (nil: not yet).
    var guestStartedAt: [pid_t: Double?] = [:]

    /// The group that may use the API and console sockets (`rtvisor`); nil or missing: root only.
    let accessGroup: gid_t?

    public init(paths: DaemonPaths, logger: Logger, cgroups: CgroupPlacement = CgroupPlacement(), version: String,
                accessGroup: String? = nil, onStatus: @escaping @Sendable (String) -> Void) {
        self.paths = paths; self.logger = logger; self.cgroups = cgroups; self.version = version; self.onStatus = onStatus
        self.accessGroup = accessGroup.flatMap { getgrnam($0)?.pointee.gr_gid }
    }

    // MARK: events

    /// One log entry per lifecycle event, with MESSAGE_ID and the VM_* fields, and the same
    /// event in the ring that `GET /v1/events` serves: both are built from one `DaemonEvent`.
    func event(_ e: LifecycleEvent, _ level: Logger.Level, _ message: String, vm: String? = nil, pid: pid_t? = nil,
               state: VMStateName? = nil, exitReason: String? = nil, extra: [String: String] = [:],
               file: String = #fileID, function: String = #function, line: UInt = #line) {
        var fields = extra
        if let exitReason, let syscall = VMMExitReport.seccompSyscall(in: exitReason) { fields["VM_SECCOMP_SYSCALL"] = syscall }
        let recorded = eventLog.append(time: Date().timeIntervalSince1970, kind: e.rawValue, vm: vm, pid: pid, state: state,
                                       message: message, reason: exitReason, fields: fields)
        var md: Logger.Metadata = ["MESSAGE_ID": .string(e.messageID), "RTVISOR_EVENT": .string(recorded.kind)]
        if let vm = recorded.vm { md["VM_NAME"] = .string(vm) }
        if let pid = recorded.pid { md["VM_PID"] = .string(String(pid)) }
        if let state = recorded.state { md["VM_STATE"] = .string(state.rawValue) }
        if let reason = recorded.reason { md["VM_EXIT_REASON"] = .string(reason) }
        for (k, v) in recorded.fields { md[k] = .string(v) }
        logger.log(level: level, "\(message)", metadata: md, source: nil, file: file, function: function, line: line)
        wakeEventWaiters()
    }

    func reportInvalid(_ issues: [DefinitionIssue]) {
        for i in issues {
            event(.definitionInvalid, .error, "invalid definition skipped: \(i)",
                  extra: ["DEFINITION_FILE": i.file, "JSON_PATH": i.path, "REASON": i.reason])
        }
    }

    public var statusText: String {
        let running = records.values.filter { $0.state == .running }.count
        let paused = records.values.filter { $0.state == .paused }.count
        let failed = records.values.filter { $0.state == .failed }.count
        var s = "\(running) VM\(running == 1 ? "" : "s") running"
        if paused > 0 { s += ", \(paused) paused" }
        s += ", \(records.count - running - paused - failed) not running"
        if failed > 0 { s += ", \(failed) failed" }
        if !invalid.isEmpty {
            let files = Set(invalid.map(\.file)).count
            s += "; \(files) invalid definition\(files == 1 ? "" : "s")"
        }
        return s
    }

    func publishStatus() { onStatus(statusText) }

    // MARK: startup

    /// Loads the definitions, re-adopts VMMs a previous rtvisord left running, starts autostart VMs.
    public func bootstrap() {
        for d in [paths.run, paths.vmsDirectory] {
            try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        }
        if cgroups.base != nil { logger.notice("\(cgroups.enableControllers())") }
        let scan = DefinitionDirectory.scan(directory: paths.definitions)
        invalid = scan.problems
        reportInvalid(scan.problems)
        for (name, loaded) in scan.definitions { records[name] = Record(name: name, loaded) }
        // VMs a previous rtvisord was running are not autostarted again: if one ended meanwhile,
        // its restart policy has decided (a guest that powered off stays off).
        let managedBefore = adoptRunning()
        Task { await recoverPausesKeptByVMMs() }
        for name in startOrder where !managedBefore.contains(name) {
            guard let r = records[name], r.loaded.definition.daemon.autostart else { continue }
            feed(name, .autostart(addedByReload: false))
        }
        publishStatus()
    }

    /// The VMs in the order they are autostarted: real-time VMs first (their partition is set up
    /// before ordinary guests load the host), then by name.
    var startOrder: [String] {
        records.keys.sorted { a, b in
            let ra = records[a]!.loaded.definition.realtime != nil, rb = records[b]!.loaded.definition.realtime != nil
            return ra != rb ? ra : a < b
        }
    }

    /// Returns the names that had a state file (running under the previous rtvisord).
    func adoptRunning() -> Set<String> {
        guard let dirs = try? FileManager.default.contentsOfDirectory(atPath: paths.vmsDirectory) else { return [] }
        var seen: Set<String> = []
        // Read once, and only if some VM directory has no state file: every stopped VM's has none.
        var running: [(pid: pid_t, launch: VMMLaunch)]?
        for name in dirs.sorted() {
            var st = VMStateFile.read(paths.stateFile(name))
            if st == nil {
                if running == nil { running = Processes.vmms() }
                st = orphanState(name, among: running!)
            }
            guard let st else { continue }
            seen.insert(name)
            let alive = Processes.isAlive(st.pid, startTime: st.startTime)
            let copy = DefinitionDirectory.load(file: paths.definitionCopy(name), directory: st.baseDirectory, checkFiles: false)
            let definitionGone = records[name] == nil
            if definitionGone {
                // Running, but its definition is gone: adopt it only to stop it.
                guard alive, case let .success(loaded) = copy else { try? FileManager.default.removeItem(atPath: paths.stateFile(name)); continue }
                records[name] = Record(name: name, loaded)
            }
            let running: VMDefinition
            if case let .success(loaded) = copy { running = loaded.definition } else { running = records[name]!.loaded.definition }
            let found = AdoptedVMM(process: VMProcess(pid: st.pid, startTime: st.startTime, definition: running), startedAt: st.startedAt,
                                   restarts: st.restarts, cgroup: st.cgroup, frozen: alive && Processes.stateLetter(of: st.pid) == "T")
            if alive {
                recoverChannels(name, pid: st.pid, running)
                feed(name, .adopted(found))
                if definitionGone { feed(name, .definitionRemoved) }
                else if records[name]?.pending == true { reportPending(name) }
            } else {
                feed(name, .foundEnded(found, statusFile: exitStatusFile(name)))
            }
        }
        return seen
    }

    /// A VMM running VM `name`'s definition copy without a state file: the previous rtvisord died
    /// between spawning it and writing the file. Its state is rebuilt from its command line and
    /// written, so it is adopted rather than a second VMM started.
    func orphanState(_ name: String, among vmms: [(pid: pid_t, launch: VMMLaunch)]) -> VMStateFile? {
        guard let found = vmms.first(where: { $0.launch.definition == paths.definitionCopy(name) }),
              let startTime = Processes.startTime(of: found.pid), let base = found.launch.baseDirectory else { return nil }
        let state = VMStateFile(pid: found.pid, startTime: startTime, definitionFile: records[name]?.loaded.file ?? paths.definitionCopy(name),
                                baseDirectory: base, startedAt: Date().timeIntervalSince1970, restarts: 0, cgroup: found.launch.cgroup ?? cgroups.directory(of: found.pid))
        try? state.write(to: paths.stateFile(name))
        event(.vmAdopted, .warning, "VM \(name): rtvisor-vmm PID \(found.pid) runs its definition but left no state file (the previous rtvisord ended between starting it and recording it): adopting it",
              vm: name, pid: found.pid)
        return state
    }

    // MARK: the lifecycle

    /// Feeds one event into a VM's lifecycle and performs the resulting effects (and those of
    /// the events they report back); returns the API answer if the event produced one.
    @discardableResult
    func feed(_ name: String, _ event: VMEvent) -> Result<ActionResult, ControlError>? {
        guard var record = records[name] else { return nil }
        let effects = record.lifecycle.handle(event, at: .now())
        records[name] = record
        var answer: Result<ActionResult, ControlError>?
        for effect in effects {
            if let a = perform(effect, for: name) { answer = a }
        }
        return answer
    }

    // MARK: daemon stop

    /// Foreground stop (SIGINT): every guest is asked to shut down, then waited for (hard-stopped
    /// on timeout).
    public func shutdownAll() async {
        shuttingDown = true
        for name in records.keys.sorted() { feed(name, .daemonShutdown) }
        let longest = records.values.map { $0.loaded.definition.daemon.stopTimeoutSeconds }.max() ?? 0
        let deadline = monotonicSeconds() + Double(longest) + VMLifecycle.killGraceSeconds + 5
        while records.values.contains(where: { $0.pid != nil }) && monotonicSeconds() < deadline {
            try? await Task.sleep(for: .milliseconds(100))
        }
        publishStatus()
    }

    /// Daemon stop or restart (SIGTERM): guests keep running; only in-memory state is dropped.
    public func detachAll() -> Int {
        shuttingDown = true
        for name in records.keys.sorted() { feed(name, .daemonDetach) }
        return records.values.filter { $0.pid != nil }.count
    }

    // MARK: reload

    public func reload() -> ReloadResult {
        let scan = DefinitionDirectory.scan(directory: paths.definitions)
        let plan = ReloadPlan.make(current: records.mapValues(\.loaded), scan: scan)
        invalid = scan.problems
        reportInvalid(scan.problems)
        var pending: [String] = []
        for name in plan.added {
            let loaded = scan.definitions[name]!
            records[name] = Record(name: name, loaded, daemonLeaving: shuttingDown)
            if loaded.definition.daemon.autostart { feed(name, .autostart(addedByReload: true)) }
        }
        for name in plan.changed + plan.settingsChanged {
            let loaded = scan.definitions[name]!
            records[name]!.loaded = loaded
            feed(name, plan.changed.contains(name) ? .definitionChanged(loaded.definition) : .settingsChanged(loaded.definition.daemon))
            if records[name]!.pending { pending.append(name); reportPending(name) }
        }
        for name in plan.keptDespiteInvalidFile {
            event(.definitionInvalid, .warning, "VM \(name): its definition file is now invalid; the last valid definition stays in force", vm: name)
        }
        for name in plan.removed { feed(name, .definitionRemoved) }
        event(.daemonReloaded, .notice, "definitions reloaded: \(plan.added.count) added, \(plan.removed.count) removed, \(plan.changed.count) changed (\(pending.count) pending until restart), \(Set(scan.problems.map(\.file)).count) invalid",
              extra: ["VMS_ADDED": plan.added.joined(separator: " "), "VMS_REMOVED": plan.removed.joined(separator: " "),
                      "VMS_CHANGED": plan.changed.joined(separator: " "), "VMS_PENDING": pending.joined(separator: " ")])
        publishStatus()
        return ReloadResult(added: plan.added, removed: plan.removed, changed: plan.changed + plan.settingsChanged, pending: pending,
                            invalidDefinitions: scan.apiProblems)
    }

    func reportPending(_ name: String) {
        event(.definitionPending, .notice, "VM \(name): definition changed; the change applies when the VM restarts (pending)", vm: name,
              pid: records[name]?.pid, state: records[name]?.state)
    }
}

extension LifecycleTime {
    /// Both clocks, read once per event.
    static func now() -> LifecycleTime { LifecycleTime(wall: Date().timeIntervalSince1970, monotonic: monotonicSeconds()) }
}

func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}
