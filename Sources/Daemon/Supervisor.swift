import APIModels
import Config
import Foundation
import Journald
import Logging
import Realtime
import VMMInterface

/// Supervises one rtvisor-vmm process per VM: starts, stops (graceful, then hard), restarts per
/// policy, pauses, re-adopts VMMs left running by a previous rtvisord, and reloads the
/// definitions directory. All state lives in this actor; process waits run on their own
/// threads and report back here.
public actor Supervisor: VMControl {
    enum Intent: Sendable { case none, stop, reboot, remove }

    struct Record {
        var loaded: LoadedDefinition
        /// The definition the current VMM process was started with.
        var running: VMDefinition?
        var state: VMStateName = .stopped
        var pid: pid_t?
        var startTime: UInt64 = 0
        var isChild = false
        var since: Double = Date().timeIntervalSince1970
        var tracker: RestartTracker
        var restarts = 0
        var lastExit: ExitInfo?
        var intent: Intent = .none
        /// Bumped on every start and stop request: timers from an earlier generation do nothing.
        var generation = 0
        var cgroup: String?

        init(_ loaded: LoadedDefinition) {
            self.loaded = loaded
            tracker = RestartTracker(settings: loaded.definition.daemon.restart)
        }

        /// The definition in force: the running one, else the loaded one.
        var current: VMDefinition { running ?? loaded.definition }

        var pending: Bool {
            guard let running, pid != nil else { return false }
            return LoadedDefinition.machineDiffers(running, loaded.definition)
        }
    }

    public let paths: DaemonPaths
    let logger: Logger
    let cgroups: CgroupPlacement
    let onStatus: @Sendable (String) -> Void
    let version: String
    var records: [String: Record] = [:]
    var invalid: [DefinitionIssue] = []
    var shuttingDown = false
    /// Hard-stop escalation after SIGTERM, before SIGKILL.
    let killGraceSeconds: Double = 5

    /// The group that may use the API and console sockets (`rtvisor`); nil or missing: root only.
    let accessGroup: gid_t?

    public init(paths: DaemonPaths, logger: Logger, cgroups: CgroupPlacement = CgroupPlacement(), version: String,
                accessGroup: String? = nil, onStatus: @escaping @Sendable (String) -> Void) {
        self.paths = paths; self.logger = logger; self.cgroups = cgroups; self.version = version; self.onStatus = onStatus
        self.accessGroup = accessGroup.flatMap { getgrnam($0)?.pointee.gr_gid }
    }

    // MARK: events

    /// One log entry per lifecycle event, with MESSAGE_ID and the VM_* fields.
    func event(_ e: LifecycleEvent, _ level: Logger.Level, _ message: String, vm: String? = nil, pid: pid_t? = nil,
               state: VMStateName? = nil, exitReason: String? = nil, extra: [String: String] = [:],
               file: String = #fileID, function: String = #function, line: UInt = #line) {
        var md: Logger.Metadata = ["MESSAGE_ID": .string(e.messageID), "RTVISOR_EVENT": .string(e.rawValue)]
        if let vm { md["VM_NAME"] = .string(vm) }
        if let pid { md["VM_PID"] = .string(String(pid)) }
        if let state { md["VM_STATE"] = .string(state.rawValue) }
        if let exitReason { md["VM_EXIT_REASON"] = .string(exitReason) }
        if let exitReason, let syscall = VMMExitReport.seccompSyscall(in: exitReason) { md["VM_SECCOMP_SYSCALL"] = .string(syscall) }
        for (k, v) in extra { md[k] = .string(v) }
        logger.log(level: level, "\(message)", metadata: md, source: nil, file: file, function: function, line: line)
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
        let scan = DefinitionDirectory.scan(directory: paths.definitions)
        invalid = scan.problems
        reportInvalid(scan.problems)
        for (name, loaded) in scan.definitions { records[name] = Record(loaded) }
        // VMs a previous rtvisord was running are not autostarted again: if one ended meanwhile,
        // its restart policy has decided (a guest that powered off stays off).
        let managedBefore = adoptRunning()
        // Real-time VMs first: their partition is set up before ordinary guests load the host.
        let order = records.keys.sorted { a, b in
            let ra = records[a]!.loaded.definition.realtime != nil, rb = records[b]!.loaded.definition.realtime != nil
            return ra != rb ? ra : a < b
        }
        for name in order where !managedBefore.contains(name) {
            guard let r = records[name], r.state == .stopped, r.loaded.definition.daemon.autostart else { continue }
            launch(name, why: "autostart")
        }
        publishStatus()
    }

    /// Returns the names that had a state file (running under the previous rtvisord).
    func adoptRunning() -> Set<String> {
        guard let dirs = try? FileManager.default.contentsOfDirectory(atPath: paths.vmsDirectory) else { return [] }
        var seen: Set<String> = []
        for name in dirs.sorted() {
            guard let st = VMStateFile.read(paths.stateFile(name)) else { continue }
            seen.insert(name)
            let alive = Processes.isAlive(st.pid, startTime: st.startTime)
            var record: Record
            if let r = records[name] {
                record = r
            } else {
                // Running, but its definition is gone: adopt it only to stop it.
                guard alive, case let .success(copy) = DefinitionDirectory.load(file: paths.definitionCopy(name), directory: st.baseDirectory, checkFiles: false)
                else { try? FileManager.default.removeItem(atPath: paths.stateFile(name)); continue }
                record = Record(copy)
                record.intent = .remove
            }
            if case let .success(copy) = DefinitionDirectory.load(file: paths.definitionCopy(name), directory: st.baseDirectory, checkFiles: false) {
                record.running = copy.definition
            } else {
                record.running = record.loaded.definition
            }
            record.restarts = st.restarts
            record.cgroup = st.cgroup
            if alive {
                record.pid = st.pid
                record.startTime = st.startTime
                record.isChild = false
                record.state = Processes.stateLetter(of: st.pid) == "T" ? .paused : .running
                record.since = st.startedAt
                records[name] = record
                event(.vmAdopted, .notice, "VM \(name) re-adopted: rtvisor-vmm PID \(st.pid) kept running across the daemon restart",
                      vm: name, pid: st.pid, state: record.state)
                watch(name: name, pid: st.pid, isChild: false, generation: record.generation)
                if record.intent == .remove { requestStop(name, force: false, intent: .remove) }
                else if record.pending { reportPending(name) }
            } else {
                // It ended while no rtvisord was watching: apply the restart policy now.
                record.pid = st.pid
                records[name] = record
                processEnded(name: name, pid: st.pid, outcome: .unknown)
            }
        }
        return seen
    }

    // MARK: launching and watching

    @discardableResult
    func launch(_ name: String, why: String) -> Bool {
        guard var r = records[name] else { return false }
        let fm = FileManager.default
        let dir = paths.vmDirectory(name)
        do {
            try fm.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o750])
            // Set-group-ID directory of group rtvisor: the VMM's console socket (mode 0660)
            // inherits the group, so members can attach.
            if let gid = accessGroup, chown(dir, getuid(), gid) == 0 { chmod(dir, 0o2750) }
            try Data(r.loaded.contents).write(to: URL(fileURLWithPath: paths.definitionCopy(name)), options: .atomic)
        } catch {
            return launchFailed(name, "cannot prepare \(dir): \(error)")
        }
        try? fm.removeItem(atPath: paths.statusFile(name))
        if let rt = r.loaded.definition.realtime, let refusal = admitRealtime(name, rt) { return launchFailed(name, refusal) }
        let wanted = r.loaded.definition.passthrough.map(\.pci)
        if !wanted.isEmpty {
            let running = records.filter { $0.value.pid != nil }.map { (vm: $0.key, devices: $0.value.current.passthrough.map(\.pci)) }
            if let refusal = PassthroughClaims.conflict(vm: name, wants: wanted, running: running, group: { PassthroughClaims.sysfsGroup($0) }) {
                return launchFailed(name, refusal)
            }
        }
        let cgroup = cgroups.prepare(vm: name)
        try? fm.removeItem(atPath: paths.latencyFile(name))
        let launch = paths.vmmLaunch(name, baseDirectory: r.loaded.directory, cgroup: cgroup,
                                     latencyProbe: (r.loaded.definition.realtime?.latencyProbeMicroseconds ?? 0) > 0)
        let pid: pid_t
        do {
            pid = try Processes.spawn([paths.vmm] + launch.arguments, environment: ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"])
        } catch {
            return launchFailed(name, "\(error)")
        }
        r.cgroup = cgroup
        r.pid = pid
        r.isChild = true
        r.startTime = Processes.startTime(of: pid) ?? 0
        r.running = r.loaded.definition
        r.state = .running
        r.intent = .none
        r.generation += 1
        r.since = Date().timeIntervalSince1970
        records[name] = r
        let state = VMStateFile(pid: pid, startTime: r.startTime, definitionFile: r.loaded.file, baseDirectory: r.loaded.directory,
                                startedAt: r.since, restarts: r.restarts, cgroup: r.cgroup)
        do { try state.write(to: paths.stateFile(name)) } catch {
            event(.vmStarted, .warning, "VM \(name): cannot write \(paths.stateFile(name)) (a daemon restart will not re-adopt it): \(error)", vm: name, pid: pid)
        }
        event(.vmStarted, .notice, "VM \(name) started (\(why)): rtvisor-vmm PID \(pid)", vm: name, pid: pid, state: .running,
              extra: ["VM_CGROUP": r.cgroup ?? ""])
        watch(name: name, pid: pid, isChild: true, generation: r.generation)
        if r.loaded.definition.realtime != nil { applyHousekeepingAffinity() }
        publishStatus()
        return true
    }

    // MARK: real-time admission

    /// Why `name` may not start with `rt` now, or nil: its CPUs must be online, not held by another
    /// running real-time VM, and leave the host at least one housekeeping CPU.
    func admitRealtime(_ name: String, _ rt: RealtimeSettings) -> String? {
        let online = Set(HostCPUs().online)
        let offline = rt.cpus.filter { !online.contains($0) }
        if !offline.isEmpty { return PartitionError.offline(vm: name, cpus: offline).description }
        var reserved = Set(rt.cpus)
        for (other, o) in records.sorted(by: { $0.key < $1.key }) where other != name && o.pid != nil {
            guard let ort = o.current.realtime else { continue }
            let overlap = ort.cpus.filter { rt.cpus.contains($0) }
            if !overlap.isEmpty { return PartitionError.cpusTaken(vm: name, owner: other, cpus: overlap).description }
            reserved.formUnion(ort.cpus)
        }
        if online.subtracting(reserved).isEmpty { return PartitionError.noHousekeepingCPU(vm: name, cpus: rt.cpus).description }
        return nil
    }

    /// CPUs of running real-time VMs (other than `name`).
    func reservedRealtimeCPUs(excluding name: String? = nil) -> Set<Int> {
        Set(records.filter { $0.key != name && $0.value.pid != nil }.compactMap { $0.value.current.realtime?.cpus }.joined())
    }

    /// Keeps the daemon's threads and ordinary VMMs off real-time CPUs (all CPUs again once no
    /// real-time VM runs). A real-time VMM confines its own helper threads.
    func applyHousekeepingAffinity() {
        let online = HostCPUs().online
        let reserved = reservedRealtimeCPUs()
        let housekeeping = online.filter { !reserved.contains($0) }
        guard !housekeeping.isEmpty else { return }
        let ordinary = records.values.filter { $0.pid != nil && $0.current.realtime == nil }.compactMap(\.pid)
        for pid in [getpid()] + ordinary {
            for tid in ThreadScheduling.threads(of: pid) { try? ThreadScheduling.setAffinity(housekeeping, tid: tid) }
        }
    }

    func launchFailed(_ name: String, _ why: String) -> Bool {
        guard var r = records[name] else { return false }
        r.state = .failed
        r.pid = nil
        r.lastExit = ExitInfo(status: nil, signal: nil, reason: why, at: Date().timeIntervalSince1970)
        records[name] = r
        event(.vmFailed, .error, "VM \(name) could not be started: \(why)", vm: name, state: .failed, exitReason: why)
        publishStatus()
        return false
    }

    nonisolated func watch(name: String, pid: pid_t, isChild: Bool, generation: Int) {
        let thread = Thread { [self] in
            let outcome = Processes.waitForExit(pid: pid, isChild: isChild)
            Task { await self.processEnded(name: name, pid: pid, outcome: outcome) }
        }
        thread.name = "wait-\(name)"
        thread.start()
    }

    /// A VMM process ended: record why, then stop, reboot, restart per policy or give up.
    func processEnded(name: String, pid: pid_t, outcome rawOutcome: ExitOutcome) {
        guard var r = records[name], r.pid == pid else { return }
        let statusFile = VMMExitReport.read(paths.statusFile(name))
        var outcome = rawOutcome
        if outcome == .unknown, let s = statusFile { outcome = .exited(s.status.code) }
        var reason = statusFile?.reason ?? outcome.description
        if outcome == .unknown { reason = "ended while rtvisord was not its parent, without an exit status (killed)" }
        if case let .signaled(sig) = outcome {
            reason = "rtvisor-vmm killed by signal \(sig)"
            // A seccomp violation: the VMM's SIGSYS handler wrote which thread made which syscall.
            if let s = statusFile, s.reason.hasPrefix(VMMExitReport.seccompPrefix) { reason += " (SIGSYS): " + s.reason }
        }
        var status: Int32? = nil, signal: Int32? = nil
        switch outcome {
        case let .exited(s): status = s
        case let .signaled(s): signal = s
        case .unknown: break
        }
        r.lastExit = ExitInfo(status: status, signal: signal, reason: reason, at: Date().timeIntervalSince1970)
        let wasRealtime = r.current.realtime != nil
        r.pid = nil
        r.running = nil
        r.since = Date().timeIntervalSince1970
        try? FileManager.default.removeItem(atPath: paths.stateFile(name))
        // The VMM's socket file outlives it; nobody listens any more.
        try? FileManager.default.removeItem(atPath: paths.consoleSocket(name))
        cgroups.remove(vm: name)
        let intent = r.intent
        r.intent = .none
        r.generation += 1
        records[name] = r
        let exitText = "\(outcome): \(reason)"
        if wasRealtime {
            // A VMM that died (kill -9, crash) could not undo its host changes: do it here.
            if let done = releaseRealtimePartition(vm: name) {
                event(.vmRealtimeReleased, .notice, "VM \(name): real-time host changes undone after its VMM ended: \(done)", vm: name)
            }
            applyHousekeepingAffinity()
        }

        switch intent {
        case .remove:
            records[name] = nil
            try? FileManager.default.removeItem(atPath: paths.vmDirectory(name))
            event(.vmStopped, .notice, "VM \(name) stopped and removed (its definition is gone): \(exitText)", vm: name, pid: pid, state: .stopped, exitReason: reason)
        case .stop:
            records[name]!.state = .stopped
            event(.vmStopped, .notice, "VM \(name) stopped on request: \(exitText)", vm: name, pid: pid, state: .stopped, exitReason: reason)
        case .reboot:
            records[name]!.restarts += 1
            event(.vmStopped, .notice, "VM \(name) rebooting on request: \(exitText)", vm: name, pid: pid, state: .running, exitReason: reason)
            launch(name, why: "reboot requested")
        case .none:
            if shuttingDown {
                records[name]!.state = .stopped
                event(.vmStopped, .notice, "VM \(name) ended during daemon shutdown: \(exitText)", vm: name, pid: pid, state: .stopped, exitReason: reason)
                break
            }
            let decision = records[name]!.tracker.decide(outcome, now: monotonicSeconds())
            switch decision {
            case let .restart(delayMs, why):
                records[name]!.restarts += 1
                if outcome.isGuestReboot {
                    event(.vmStopped, .notice, "VM \(name): guest rebooted, starting it again", vm: name, pid: pid, state: .running, exitReason: reason)
                    launch(name, why: "guest reboot")
                } else {
                    records[name]!.state = .restarting
                    event(.vmFailed, .error, "VM \(name) ended unexpectedly: \(exitText)", vm: name, pid: pid, state: .restarting, exitReason: reason)
                    event(.vmRestartScheduled, .notice, "VM \(name) restarts in \(delayMs) ms (\(why))", vm: name, state: .restarting,
                          exitReason: reason, extra: ["RESTART_DELAY_MS": String(delayMs)])
                    scheduleRestart(name, afterMs: delayMs, generation: records[name]!.generation)
                }
            case let .stay(why):
                let failed = !outcome.isPowerOff
                records[name]!.state = failed ? .failed : .stopped
                event(failed ? .vmFailed : .vmStopped, failed ? .error : .notice, "VM \(name) \(failed ? "failed" : "stopped"): \(exitText) (\(why))",
                      vm: name, pid: pid, state: records[name]!.state, exitReason: reason)
            case let .giveUp(why):
                records[name]!.state = .failed
                event(.vmRestartLimit, .error, "VM \(name) failed and will not be restarted: \(why)", vm: name, pid: pid, state: .failed, exitReason: reason)
            }
        }
        publishStatus()
    }

    func scheduleRestart(_ name: String, afterMs: Int, generation: Int) {
        Task {
            try? await Task.sleep(for: .milliseconds(afterMs))
            self.restartTimerFired(name, generation: generation)
        }
    }

    func restartTimerFired(_ name: String, generation: Int) {
        guard let r = records[name], r.generation == generation, r.state == .restarting, !shuttingDown else { return }
        launch(name, why: "restart policy \"\(r.loaded.definition.daemon.restart.policy.rawValue)\"")
    }

    // MARK: stopping

    /// Graceful: SIGUSR1 (rtvisor-vmm injects Ctrl-Alt-Del), SIGTERM after the stop timeout,
    /// SIGKILL `killGraceSeconds` later. Forced: SIGTERM at once (rtvisor-vmm stops the vCPUs
    /// and exits 143).
    func requestStop(_ name: String, force: Bool, intent: Intent) {
        guard var r = records[name], let pid = r.pid else { return }
        r.intent = intent
        r.state = .stopping
        r.generation += 1
        records[name] = r
        if Processes.stateLetter(of: pid) == "T" { Processes.signal(pid, SIGCONT) }
        let generation = r.generation
        let timeout = Double(r.loaded.definition.daemon.stopTimeoutSeconds)
        if force {
            Processes.signal(pid, SIGTERM)
            escalate(name, pid: pid, generation: generation, after: killGraceSeconds, signal: SIGKILL, next: nil)
        } else {
            Processes.signal(pid, SIGUSR1)
            escalate(name, pid: pid, generation: generation, after: timeout, signal: SIGTERM, next: killGraceSeconds)
        }
        publishStatus()
    }

    func escalate(_ name: String, pid: pid_t, generation: Int, after seconds: Double, signal: Int32, next: Double?) {
        Task {
            try? await Task.sleep(for: .milliseconds(Int(seconds * 1000)))
            self.escalationDue(name, pid: pid, generation: generation, signal: signal, next: next)
        }
    }

    func escalationDue(_ name: String, pid: pid_t, generation: Int, signal: Int32, next: Double?) {
        guard let r = records[name], r.pid == pid, r.generation == generation else { return }
        event(.vmStopped, .warning, "VM \(name) did not stop in time: sending \(signal == SIGKILL ? "SIGKILL" : "SIGTERM") to PID \(pid)", vm: name, pid: pid, state: .stopping)
        Processes.signal(pid, signal)
        if let next { escalate(name, pid: pid, generation: generation, after: next, signal: SIGKILL, next: nil) }
    }

    /// Daemon stop: every guest is asked to shut down, then waited for (hard-stopped on timeout).
    public func shutdownAll() async {
        shuttingDown = true
        for name in records.keys.sorted() {
            guard let r = records[name] else { continue }
            if r.pid != nil { requestStop(name, force: false, intent: .stop) }
            else if r.state == .restarting { records[name]!.state = .stopped; records[name]!.generation += 1 }
        }
        let longest = records.values.map { $0.loaded.definition.daemon.stopTimeoutSeconds }.max() ?? 0
        let deadline = monotonicSeconds() + Double(longest) + killGraceSeconds + 5
        while records.values.contains(where: { $0.pid != nil }) && monotonicSeconds() < deadline {
            try? await Task.sleep(for: .milliseconds(100))
        }
        publishStatus()
    }

    /// Daemon restart: guests keep running; only in-memory state is dropped.
    public func detachAll() -> Int {
        shuttingDown = true
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
            records[name] = Record(scan.definitions[name]!)
            if scan.definitions[name]!.definition.daemon.autostart { launch(name, why: "added by reload, autostart") }
        }
        for name in plan.changed + plan.settingsChanged {
            records[name]!.loaded = scan.definitions[name]!
            records[name]!.tracker.settings = scan.definitions[name]!.definition.daemon.restart
            if records[name]!.pending { pending.append(name); reportPending(name) }
        }
        for name in plan.keptDespiteInvalidFile {
            event(.definitionInvalid, .warning, "VM \(name): its definition file is now invalid; the last valid definition stays in force", vm: name)
        }
        for name in plan.removed {
            if records[name]?.pid != nil { requestStop(name, force: false, intent: .remove) }
            else {
                records[name] = nil
                try? FileManager.default.removeItem(atPath: paths.vmDirectory(name))
                event(.vmStopped, .notice, "VM \(name) removed (its definition is gone)", vm: name, state: .stopped)
            }
        }
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

    // MARK: VMControl

    func summary(_ r: Record) -> VMSummary {
        VMSummary(name: r.loaded.name, state: r.state, pid: r.pid, autostart: r.loaded.definition.daemon.autostart,
                  restartPolicy: r.loaded.definition.daemon.restart.policy.rawValue, restarts: r.restarts, pendingChange: r.pending,
                  definitionFile: r.loaded.file, since: r.since, lastExit: r.lastExit)
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
                        consoleSocket: paths.consoleSocket(name), cgroup: r.cgroup, stopTimeoutSeconds: r.loaded.definition.daemon.stopTimeoutSeconds)
    }

    public func start(_ name: String) throws(ControlError) -> ActionResult {
        let r = try record(name)
        switch r.state {
        case .running, .paused, .stopping: throw .conflict("VM \(name) is \(r.state.rawValue)")
        case .stopped, .failed, .restarting:
            records[name]!.tracker.reset()
            records[name]!.generation += 1
            guard launch(name, why: "start requested") else { throw .failed(records[name]?.lastExit?.reason ?? "start failed") }
            return ActionResult(name: name, action: "start", state: .running, message: "started, PID \(records[name]!.pid ?? 0)")
        }
    }

    public func stop(_ name: String, force: Bool) throws(ControlError) -> ActionResult {
        let r = try record(name)
        switch r.state {
        case .running, .paused:
            requestStop(name, force: force, intent: .stop)
            return ActionResult(name: name, action: "stop", state: .stopping,
                                message: force ? "stopping now (SIGTERM)" : "asked the guest to shut down (Ctrl-Alt-Del); hard stop after \(r.loaded.definition.daemon.stopTimeoutSeconds) s")
        case .stopping:
            if force, let pid = r.pid { Processes.signal(pid, SIGTERM) }
            return ActionResult(name: name, action: "stop", state: .stopping, message: force ? "already stopping; sent SIGTERM" : "already stopping")
        case .restarting:
            records[name]!.state = .stopped
            records[name]!.generation += 1
            publishStatus()
            return ActionResult(name: name, action: "stop", state: .stopped, message: "pending restart cancelled")
        case .stopped, .failed:
            throw .conflict("VM \(name) is not running (\(r.state.rawValue))")
        }
    }

    public func reboot(_ name: String) throws(ControlError) -> ActionResult {
        let r = try record(name)
        switch r.state {
        case .running, .paused:
            requestStop(name, force: true, intent: .reboot)
            return ActionResult(name: name, action: "reboot", state: .stopping, message: "resetting: the VMM is stopped and started again with the current definition")
        case .stopping:
            throw .conflict("VM \(name) is stopping")
        case .stopped, .failed, .restarting:
            return try start(name)
        }
    }

    public func pause(_ name: String) throws(ControlError) -> ActionResult {
        let r = try record(name)
        guard r.state == .running, let pid = r.pid else { throw .conflict("VM \(name) is \(r.state.rawValue), not running") }
        guard Processes.signal(pid, SIGSTOP) else { throw .failed("SIGSTOP to PID \(pid) failed: \(String(cString: strerror(errno)))") }
        records[name]!.state = .paused
        records[name]!.since = Date().timeIntervalSince1970
        event(.vmPaused, .notice, "VM \(name) paused (rtvisor-vmm PID \(pid) stopped with SIGSTOP)", vm: name, pid: pid, state: .paused)
        publishStatus()
        return ActionResult(name: name, action: "pause", state: .paused, message: "paused")
    }

    public func resume(_ name: String) throws(ControlError) -> ActionResult {
        let r = try record(name)
        guard r.state == .paused, let pid = r.pid else { throw .conflict("VM \(name) is \(r.state.rawValue), not paused") }
        guard Processes.signal(pid, SIGCONT) else { throw .failed("SIGCONT to PID \(pid) failed: \(String(cString: strerror(errno)))") }
        records[name]!.state = .running
        records[name]!.since = Date().timeIntervalSince1970
        event(.vmResumed, .notice, "VM \(name) resumed", vm: name, pid: pid, state: .running)
        publishStatus()
        return ActionResult(name: name, action: "resume", state: .running, message: "resumed")
    }

    public nonisolated func validate(_ request: ValidateRequest) async -> ValidateResult {
        Self.validate(request, defaultBase: paths.definitions)
    }

    /// Problems reported by one validation; the rest are counted (every problem repeats the
    /// client's `file`: the answer must not grow with their product).
    public static let maxValidateProblems = 100

    public static func validate(_ request: ValidateRequest, defaultBase: String) -> ValidateResult {
        let file = String((request.file ?? "definition").prefix(1024))
        do {
            let d = try VMDefinition.parse(Data(request.definition.utf8), file: file, baseDirectory: request.baseDirectory ?? defaultBase)
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

func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}
