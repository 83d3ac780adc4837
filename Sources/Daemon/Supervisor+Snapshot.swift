import APIModels
import Config
import Foundation
import Posix
import VMMInterface

/// Snapshot, list and restore (docs/snapshot.md): the VMM saves and resumes the machine; the
/// daemon makes the directory and files it writes into, installs restored VMs as defined VMs and
/// starts their VMMs with `--restore`. Blocking work (the control socket, file checks and copies)
/// runs off the actor, so other VMs' requests go on meanwhile.
extension Supervisor {
    /// Bounds each read and write on a control socket during a snapshot: writing a large guest's
    /// memory takes a while; a VMM that does not answer at all must not hold the request forever.
    static let snapshotTimeoutSeconds = 600
    /// How long a VMM started for a restore may take to resume it (mapping or reading the memory
    /// file) before it is given up on.
    static let restoreTimeoutSeconds = 300.0

    // MARK: snapshot

    public func snapshot(_ name: String, _ options: SnapshotOptions) async throws(ControlError) -> SnapshotResult {
        let r = try record(name)
        guard case let .running(process) = r.lifecycle.phase else {
            if r.state == .paused {
                throw .conflict("VM \(name) is paused (its VMM is stopped with SIGSTOP and cannot answer): resume it first; the snapshot pauses it itself")
            }
            throw .conflict("VM \(name) is \(r.state.rawValue), not running")
        }
        if let to = options.to { try SnapshotDirectory.checkTarget(to) }
        let definition = try runningDefinition(name).json.bytes
        let stop = options.stop ?? false
        let socket = paths.controlSocket(name), root = paths.snapshots
        let outcome = await Processes.offThePool { () -> Result<(String, SnapshotSummary), ControlError> in
            let created: SnapshotDirectory.Created
            do throws(ControlError) {
                if let to = options.to { created = try SnapshotDirectory.create(to, definition: definition) }
                else { created = try SnapshotDirectory.createDefault(root: root, vm: name, at: Date(), definition: definition) }
            } catch { return .failure(error) }
            defer { created.closeFiles() }
            do {
                let client = try VMMControlClient.connect(socket, timeoutSeconds: 10)
                client.setTimeout(seconds: Self.snapshotTimeoutSeconds)
                let summary = try client.snapshot(SnapshotRequest(then: stop ? .stop : .resume, definitionJSON: definition),
                                                  state: created.state, memory: created.memory)
                return .success((created.directory, summary))
            } catch {
                SnapshotDirectory.remove(created.directory)
                return .failure(.failed("VM \(name): snapshot failed: \(error)"))
            }
        }
        let (directory, summary) = try outcome.get()
        event(.vmSnapshotSaved, .notice,
              "VM \(name) saved to \(directory): \(summary.memoryDataBytes >> 20) MiB of \(summary.header.memoryBytes >> 20) MiB memory written, paused \(Int(summary.pausedMilliseconds)) ms\(stop ? "; stopping" : "")",
              vm: name, pid: process.pid, extra: ["SNAPSHOT_DIRECTORY": directory])
        var state = VMStateName.running
        if stop {
            // The VMM exits with savedAndStopped; its lifecycle shows the VM stopped once the wait
            // thread has reported it (it is not restarted: RestartTracker).
            _ = await waitForExit(name, pid: process.pid, seconds: 10)
            state = records[name]?.state ?? .stopped
        }
        return SnapshotResult(name: name, snapshot: SnapshotCatalog.info(directory: directory), stateBytes: summary.stateBytes,
                              memoryDataBytes: summary.memoryDataBytes, pausedMilliseconds: summary.pausedMilliseconds, state: state)
    }

    /// The definition the VM's VMM runs (its copy in the run directory), every path absolute.
    func runningDefinition(_ name: String) throws(ControlError) -> (json: DefinitionJSON, definition: VMDefinition) {
        let r = try record(name)
        let copy = paths.definitionCopy(name)
        let bytes = FileManager.default.contents(atPath: copy).map(Array.init) ?? r.loaded.contents
        do {
            var json = try DefinitionJSON(bytes, file: copy)
            json.makePathsAbsolute(base: r.loaded.directory)
            return (json, try json.validated(base: r.loaded.directory, checkFiles: false))
        } catch {
            throw .failed("VM \(name): its running definition \(copy) cannot be read back: \(error)")
        }
    }

    /// Polls until VM `name` no longer runs `pid` (its wait thread reports the exit), up to `seconds`.
    func waitForExit(_ name: String, pid: pid_t, seconds: Double) async -> Bool {
        let deadline = monotonicSeconds() + seconds
        while records[name]?.pid == pid {
            if monotonicSeconds() >= deadline { return false }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return true
    }

    // MARK: list

    public nonisolated func snapshots(vm: String?) async throws(ControlError) -> SnapshotList {
        if let vm, !ClonePlan.isValidName(vm) { throw .conflict("\"\(vm)\" is not a VM name") }
        let root = paths.snapshots
        return SnapshotList(root: root, snapshots: await Processes.offThePool { SnapshotCatalog.list(root: root, vm: vm) })
    }

    // MARK: restore

    public func restore(_ request: RestoreRequest) async throws(ControlError) -> RestoredVM {
        guard !shuttingDown else { throw .conflict("rtvisord is shutting its guests down: nothing is restored now") }
        if let problem = SnapshotDirectory.pathProblem(request.directory, field: "directory") { throw .conflict(problem) }
        if let name = request.name, !ClonePlan.isValidName(name) {
            throw .conflict("name \"\(name)\" is not a VM name (1–64 letters, digits, '-' and '_')")
        }
        let directory = request.directory.hasSuffix("/") ? String(request.directory.dropLast()) : request.directory
        let prepared = await Processes.offThePool { () -> Result<DefinitionJSON, ControlError> in
            do throws(ControlError) { return .success(try SnapshotDirectory.prepare(directory, renamedTo: request.name).json) } catch {
                return .failure(error)
            }
        }
        let json = try prepared.get()
        return try await startFromSnapshot(json, source: RestoreSource(directory: directory), mustBeNew: false)
    }

    /// Installs `json` as a defined VM and starts its VMM resuming `source`; waits until the VMM
    /// serves its control socket (the snapshot is resumed) or ends (it refused the snapshot: its
    /// reason is the error, and the installation is undone).
    func startFromSnapshot(_ json: DefinitionJSON, source: RestoreSource, mustBeNew: Bool) async throws(ControlError) -> RestoredVM {
        guard let name = json.name else { throw .conflict("\(json.file): $.name: is required") }
        let installed = try install(json, from: "snapshot " + source.directory, mustBeNew: mustBeNew)
        do { _ = try answer(name, .restoreRequested(source)) } catch {
            undoInstall(installed)
            throw error
        }
        guard let process = records[name]?.lifecycle.process else {
            undoInstall(installed)
            throw .failed("VM \(name): its VMM ended at once")
        }
        let pid = process.pid, startTime = process.startTime, socket = paths.controlSocket(name)
        let problem = await Processes.offThePool {
            VMMControlClient.waitUntilServing(socket, timeoutSeconds: Self.restoreTimeoutSeconds) { Processes.isAlive(pid, startTime: startTime) }
        }
        if problem == nil && records[name]?.pid == pid {
            feed(name, .restoreConfirmed(pid: pid))
            return RestoredVM(name: name, pid: pid, definitionFile: installed.file, directory: source.directory,
                              message: "resumed from \(source.directory), PID \(pid)")
        }
        // The lifecycle hears of the exit from the wait thread, with the VMM's own reason.
        if !(await waitForExit(name, pid: pid, seconds: 10)) {
            feed(name, .stopRequested(force: true))
            _ = await waitForExit(name, pid: pid, seconds: VMLifecycle.killGraceSeconds + 2)
        }
        let reason = records[name]?.lifecycle.lastExit?.reason ?? problem ?? "it ended"
        undoInstall(installed)
        throw .failed("VM \(name) could not be restored from \(source.directory): \(reason)")
    }

    /// A definition written into the definitions directory by a restore or clone, and what was
    /// there before (for undoing it).
    struct InstalledDefinition {
        let name: String
        let file: String
        let previous: LoadedDefinition?
    }

    /// Writes the definition into the definitions directory (like `virsh define`) and loads it,
    /// as a reload would. An existing VM of that name must not be running and must have the same
    /// vCPUs and memory (the snapshot's); a clone's name must be new.
    /// `origin` is said in the log ("snapshot DIR"); `vmNoun` and `verb` in refusals ("the
    /// snapshot's VM" has other vCPUs: "restore" it under another name).
    func install(_ json: DefinitionJSON, from origin: String, mustBeNew: Bool, vmNoun: String = "the snapshot's VM",
                 verb: String = "restore") throws(ControlError) -> InstalledDefinition {
        let name = json.name ?? ""
        let incoming: VMDefinition
        do { incoming = try json.validated(base: paths.definitions, checkFiles: false) } catch {
            throw .conflict("\(error)")
        }
        let file: String, previous: LoadedDefinition?
        if let r = records[name] {
            if mustBeNew { throw .conflict("VM \(name) already exists (\(r.loaded.file))") }
            guard r.lifecycle.process == nil, r.state != .restarting else {
                throw .conflict("VM \(name) is \(r.state.rawValue): stop it first, or \(verb) under another name (--name)")
            }
            let old = r.loaded.definition
            guard old.vcpus == incoming.vcpus, old.memoryMiB == incoming.memoryMiB else {
                throw .conflict("VM \(name) is defined in \(r.loaded.file) with \(old.vcpus) vCPUs and \(old.memoryMiB) MiB, \(vmNoun) has \(incoming.vcpus) vCPUs and \(incoming.memoryMiB) MiB: \(verb) it under another name (--name)")
            }
            (file, previous) = (r.loaded.file, r.loaded)
        } else {
            file = paths.definitions + "/" + name + ".json"
            if HostFiles.exists(file) {
                throw .conflict("\(file) exists but defines no VM \(name) (it is invalid or names another VM): \(verb) under another name (--name)")
            }
            previous = nil
        }
        do { try HostFiles.replaceAtomically(file, with: json.bytes) } catch {
            throw .failed("cannot write \(file): \(error)")
        }
        let loaded: LoadedDefinition
        switch DefinitionDirectory.load(file: file, directory: paths.definitions) {
        case let .success(l): loaded = l
        case let .failure(e):
            if let previous { try? HostFiles.replaceAtomically(file, with: previous.contents) } else { unlink(file) }
            throw .invalid(e)
        }
        if previous != nil {
            records[name]!.loaded = loaded
            feed(name, .definitionChanged(loaded.definition))
        } else {
            records[name] = Record(name: name, loaded, daemonLeaving: shuttingDown)
        }
        logger.notice("VM \(name): definition installed in \(file) from \(origin) (it boots normally on its next start)")
        publishStatus()
        return InstalledDefinition(name: name, file: file, previous: previous)
    }

    /// Puts back what `install` replaced: the earlier definition, or no VM at all.
    func undoInstall(_ installed: InstalledDefinition) {
        let name = installed.name
        if let previous = installed.previous {
            try? HostFiles.replaceAtomically(installed.file, with: previous.contents)
            if records[name] != nil {
                records[name]!.loaded = previous
                feed(name, .definitionChanged(previous.definition))
            }
        } else {
            unlink(installed.file)
            if let r = records[name], r.lifecycle.process == nil {
                records[name] = nil
                try? FileManager.default.removeItem(atPath: paths.vmDirectory(name))
            }
        }
        publishStatus()
    }
}
