import APIModels
import Config
import Foundation
import Posix
import VMMInterface

/// Clones (docs/snapshot.md, "Clones"): N running copies of a VM or of a snapshot, each with its
/// own name, MACs, taps and writable disks, all resuming one snapshot's memory file mapped
/// copy-on-write (they share its page cache until they write).
extension Supervisor {
    /// One clone to make: its definition and the disks to copy for it.
    struct PlannedClone: Sendable {
        let name: String
        var json: DefinitionJSON
        /// (origin's disk, clone's copy) for each writable disk.
        var copies: [(source: String, destination: String)]
        /// Every disk, in definition order, as the reply lists it (modes of copies filled in later).
        var disks: [CloneDisk]
        var nets: [CloneNet]
    }

    public func clone(_ name: String, _ request: CloneRequest) async throws(ControlError) -> CloneResult {
        guard !shuttingDown else { throw .conflict("rtvisord is shutting its guests down: nothing is cloned now") }
        let names = try ClonePlan.names(origin: name, prefix: request.prefix, count: request.count)
        try checkCloneNamesFree(names)
        // The origin: a snapshot directory named by the request, or one taken now.
        let origin: (json: DefinitionJSON, definition: VMDefinition)
        var snapshotDirectory: String? = nil
        var socket: String? = nil
        if let from = request.from {
            if let problem = SnapshotDirectory.pathProblem(from, field: "from") { throw .conflict(problem) }
            let directory = from.hasSuffix("/") ? String(from.dropLast()) : from
            let prepared = await Processes.offThePool { () -> Result<(DefinitionJSON, VMDefinition), ControlError> in
                do throws(ControlError) { return .success(try SnapshotDirectory.prepare(directory, renamedTo: nil)) } catch { return .failure(error) }
            }
            origin = try prepared.get()
            snapshotDirectory = directory
        } else {
            let r = try record(name)
            guard case .running = r.lifecycle.phase else {
                throw .conflict("VM \(name) is \(r.state.rawValue), not running: clone a running VM, or a snapshot (--from)")
            }
            origin = try runningDefinition(name)
            socket = paths.controlSocket(name)
        }
        var plans = try planClones(names, origin: origin.json, definition: origin.definition)
        // Snapshot (unless --from) and disk copies, off the actor. The origin stays paused while
        // its writable disks are copied, so the copies match the saved memory.
        let root = paths.snapshots, clonesRoot = paths.clones, originJSON = origin.json.bytes, jobs = plans
        let originSocket = socket, from = snapshotDirectory
        let prepared = await Processes.offThePool { () -> Result<(String, [[CloneDiskMode]]), ControlError> in
            Self.snapshotAndCopy(vm: name, socket: originSocket, snapshotRoot: root, from: from, definition: originJSON,
                                 clonesRoot: clonesRoot, plans: jobs)
        }
        let (directory, modes) = try prepared.get()
        for i in plans.indices {
            var copied = modes[i].makeIterator()
            for d in plans[i].disks.indices where plans[i].disks[d].mode != .shared { plans[i].disks[d].mode = copied.next() ?? .copy }
        }
        var made: [ClonedVM] = []
        for (i, plan) in plans.enumerated() {
            do {
                let vm = try await startFromSnapshot(plan.json, source: RestoreSource(directory: directory, memory: .map), mustBeNew: true)
                made.append(ClonedVM(vm: vm, disks: plan.disks, nets: plan.nets))
            } catch {
                // This clone's and the remaining ones' disk copies go; the running clones stay.
                for rest in plans[i...] { try? FileManager.default.removeItem(atPath: clonesRoot + "/" + rest.name) }
                let list = made.isEmpty ? "none" : made.map(\.vm.name).joined(separator: ", ") + " (running)"
                if !made.isEmpty { journalClones(name, made, directory) }
                throw .failed("clone \(i + 1) of \(plans.count) (\(plan.name)) failed: \(error); clones made: \(list)")
            }
        }
        journalClones(name, made, directory)
        return CloneResult(origin: name, snapshot: directory, clones: made)
    }

    func journalClones(_ origin: String, _ made: [ClonedVM], _ directory: String) {
        event(.vmCloned, .notice, "VM \(origin): \(made.count) clone\(made.count == 1 ? "" : "s") running from snapshot \(directory): \(made.map(\.vm.name).joined(separator: " "))",
              vm: origin, extra: ["VM_CLONES": made.map(\.vm.name).joined(separator: " "), "SNAPSHOT_DIRECTORY": directory])
    }

    /// No VM, definition file or clone disk directory may have a clone's name yet.
    func checkCloneNamesFree(_ names: [String]) throws(ControlError) {
        for n in names {
            if records[n] != nil { throw .conflict("VM \(n) already exists: choose another prefix (--prefix)") }
            let file = paths.definitions + "/" + n + ".json"
            if HostFiles.exists(file) { throw .conflict("\(file) already exists: choose another prefix (--prefix)") }
            let disks = paths.clones + "/" + n
            if HostFiles.exists(disks) { throw .conflict("\(disks) already exists (left by an earlier clone?): remove it or choose another prefix (--prefix)") }
        }
    }

    /// Every clone's definition: new name, per interface a MAC derived from the name and a tap no
    /// defined VM or host interface has, per writable disk a copy under CLONES/NAME/.
    func planClones(_ names: [String], origin: DefinitionJSON, definition: VMDefinition) throws(ControlError) -> [PlannedClone] {
        var taken = ClonePlan.hostInterfaces()
        for r in records.values {
            for d in [r.loaded.definition, r.current] { taken.formUnion(d.nets.map(\.tap)) }
        }
        var plans: [PlannedClone] = []
        for name in names {
            var plan = PlannedClone(name: name, json: origin, copies: [], disks: [], nets: [])
            plan.json.rename(to: name)
            for (i, _) in definition.nets.enumerated() {
                let mac = ClonePlan.mac(vm: name, index: i), tap = ClonePlan.tap(vm: name, index: i, taken: taken)
                taken.insert(tap)
                plan.json.setNet(i, tap: tap, mac: mac)
                plan.nets.append(CloneNet(tap: tap, mac: NetSettings.format(mac)))
            }
            for (i, disk) in definition.disks.enumerated() {
                if disk.readOnly {
                    plan.disks.append(CloneDisk(source: disk.path, path: disk.path, mode: .shared))
                    continue
                }
                var st = stat()
                if stat(disk.path, &st) == 0 && st.st_mode & S_IFMT == S_IFBLK {
                    throw .conflict("$.disks[\(i)] \(disk.path) is a writable block device: clones get copies of writable disks, which only image files can have (make it read_only, or clone by hand)")
                }
                let copy = ClonePlan.diskPath(clones: paths.clones, vm: name, index: i, source: disk.path)
                plan.json.setDiskPath(i, copy)
                plan.copies.append((disk.path, copy))
                plan.disks.append(CloneDisk(source: disk.path, path: copy, mode: .copy))
            }
            plans.append(plan)
        }
        return plans
    }

    /// Blocking: takes the origin's snapshot (unless `from` names one) with the VM left paused,
    /// copies every clone's disks, resumes the origin. The snapshot directory and the modes of
    /// the copies, in plan order; on failure everything made here is removed.
    static func snapshotAndCopy(vm: String, socket: String?, snapshotRoot: String, from: String?, definition: [UInt8],
                                clonesRoot: String, plans: [PlannedClone]) -> Result<(String, [[CloneDiskMode]]), ControlError> {
        var directory = from ?? ""
        var client: VMMControlClient?
        var made: [String] = []
        func undo() {
            for dir in made { try? FileManager.default.removeItem(atPath: dir) }
            if from == nil && !directory.isEmpty { SnapshotDirectory.remove(directory) }
        }
        do throws(ControlError) {
            if let socket {
                let created = try SnapshotDirectory.createDefault(root: snapshotRoot, vm: vm, at: Date(), definition: definition)
                directory = created.directory
                defer { created.closeFiles() }
                do {
                    let c = try VMMControlClient.connect(socket, timeoutSeconds: 10)
                    c.setTimeout(seconds: snapshotTimeoutSeconds)
                    client = c
                    _ = try c.snapshot(SnapshotRequest(then: .stayPaused, definitionJSON: definition), state: created.state, memory: created.memory)
                } catch {
                    throw ControlError.failed("VM \(vm): snapshot failed: \(error)")
                }
            }
            var modes: [[CloneDiskMode]] = []
            do throws(ControlError) {
                for plan in plans {
                    let dir = clonesRoot + "/" + plan.name
                    do { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700]) } catch {
                        throw .failed("cannot create \(dir): \(error.localizedDescription)")
                    }
                    made.append(dir)
                    var these: [CloneDiskMode] = []
                    for copy in plan.copies {
                        do { these.append(try DiskCopy.copy(from: copy.source, to: copy.destination)) } catch { throw .failed("\(plan.name): \(error)") }
                    }
                    modes.append(these)
                }
            } catch {
                // The origin runs on whatever happened to the copies.
                try? client?.resume()
                throw error
            }
            if let client {
                do { try client.resume() } catch { throw .failed("VM \(vm) stays paused: \(error); rtvisorctl reboot \(vm) if it does not recover") }
            }
            return .success((directory, modes))
        } catch {
            undo()
            return .failure(error)
        }
    }
}
