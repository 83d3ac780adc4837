import APIModels
import Foundation
import Posix
import VMMInterface

/// Where the daemon keeps things. `/run/rtvisor/vms/NAME/` holds, per VM: `definition.json`
/// (the exact bytes the VMM runs), `state.json` (pid and start time, for re-adoption),
/// `console.sock` and `control.sock` (owned by the VMM) and `exit-status` (written by the VMM
/// when it ends). `/var/lib/rtvisor` (`state`) holds snapshots and clones' disks.
public struct DaemonPaths: Sendable {
    public var definitions: String
    public var run: String
    public var vmm: String
    public var apiSocket: String
    public var state: String

    public init(definitions: String, run: String, vmm: String, apiSocket: String, state: String = APIPaths.defaultStateDirectory) {
        self.definitions = definitions; self.run = run; self.vmm = vmm; self.apiSocket = apiSocket; self.state = state
    }

    /// The read-only listener of `GET /metrics` and the dashboard (docs/metrics.md), next to
    /// the API socket's default place.
    public var metricsSocket: String { run + "/metrics.sock" }

    /// `snapshots/NAME/TIMESTAMP/`: where `rtvisorctl snapshot` writes by default and what
    /// `rtvisorctl snapshots` lists.
    public var snapshots: String { state + "/snapshots" }
    /// `clones/NAME/`: a clone's copies of its origin's writable disks.
    public var clones: String { state + "/clones" }

    public var vmsDirectory: String { run + "/vms" }
    public func vmDirectory(_ name: String) -> String { vmsDirectory + "/" + name }
    public func definitionCopy(_ name: String) -> String { vmDirectory(name) + "/definition.json" }
    public func stateFile(_ name: String) -> String { vmDirectory(name) + "/state.json" }
    public func consoleSocket(_ name: String) -> String { vmDirectory(name) + "/console.sock" }
    public func statusFile(_ name: String) -> String { vmDirectory(name) + "/exit-status" }
    /// The VMM's control socket (`VMMControl`: pause, resume, snapshot), mode 0600.
    public func controlSocket(_ name: String) -> String { vmDirectory(name) + "/control.sock" }
    /// A real-time VM's wake-up latency histogram, written by its VMM.
    public func latencyFile(_ name: String) -> String { vmDirectory(name) + "/latency.json" }
    /// An incoming migration's `MigrationConfig` (JSON), read by rtvisord from the stream and
    /// passed to the VMM with `--incoming-config`.
    public func incomingConfig(_ name: String) -> String { vmDirectory(name) + "/incoming-config.json" }
    /// Where a same-host upgrade's new VMM keeps its control and console sockets and its exit
    /// report until it takes the VM over (the old VMM has the usual ones, its exit report owned
    /// by its jail's uid); then they are renamed to the usual paths (`Supervisor.upgrade`).
    public func upgradePath(_ path: String) -> String { path + ".upgrade" }
    /// The files a same-host upgrade's new VMM has at `upgradePath`s.
    public func upgradeFiles(_ name: String) -> [String] { [controlSocket(name), consoleSocket(name), statusFile(name)] }
    /// The descriptor an incoming migration's stream has in the VMM (`--incoming fd:3`).
    public static let incomingStreamFD: Int32 = 3

    /// How rtvisord starts VM `name`'s VMM: the copied definition resolved against its original
    /// directory, no stdin console, console and logs to journald and the console socket, the
    /// exit report and (with a latency probe) the latency file in the VM's run directory.
    /// A real-time VM's VMM leaves its partition for the next one when the guest resets: the
    /// lifecycle either starts that VMM or undoes the partition (`VMLifecycle.keptPartition`).
    /// Every VMM serves its control socket; one started for a restore resumes the snapshot.
    /// `upgrade`: the new VMM of a same-host upgrade, taking the VM over on descriptor 3.
    public func vmmLaunch(_ name: String, baseDirectory: String, cgroup: String?, latencyProbe: Bool, realtime: Bool = false,
                          restore: RestoreSource? = nil, incoming: IncomingSource? = nil, upgrade: Bool = false) -> VMMLaunch {
        var launch = VMMLaunch(definition: definitionCopy(name))
        launch.baseDirectory = baseDirectory
        launch.consoleInput = false
        launch.consoleSocket = consoleSocket(name)
        launch.consoleJournal = true
        launch.logJournal = true
        launch.statusFile = statusFile(name)
        launch.cgroup = cgroup
        if latencyProbe { launch.latencyFile = latencyFile(name) }
        launch.keepRealtimePartitionOnReset = realtime
        launch.controlSocket = controlSocket(name)
        if let restore {
            launch.restore = restore.directory
            launch.restoreMemory = restore.memory
        }
        if let incoming {
            launch.incoming = MigrationAddress.fd(Self.incomingStreamFD).description
            launch.incomingConfig = incoming.configFile
        }
        // A same-host upgrade: the old VMM sends hello and configuration itself, and keeps its
        // sockets until the new one runs the guest.
        if upgrade {
            launch.incoming = MigrationAddress.fd(Self.incomingStreamFD).description
            launch.controlSocket = upgradePath(controlSocket(name))
            launch.consoleSocket = upgradePath(consoleSocket(name))
            launch.statusFile = upgradePath(statusFile(name))
        }
        return launch
    }
}

/// `state.json`: what the next rtvisord needs to re-adopt a running VMM.
public struct VMStateFile: Codable, Equatable, Sendable {
    public var pid: Int32
    /// /proc/PID/stat start time: guards against pid reuse.
    public var startTime: UInt64
    public var definitionFile: String
    public var baseDirectory: String
    public var startedAt: Double
    public var restarts: Int
    public var cgroup: String?

    public init(pid: Int32, startTime: UInt64, definitionFile: String, baseDirectory: String, startedAt: Double, restarts: Int, cgroup: String?) {
        self.pid = pid; self.startTime = startTime; self.definitionFile = definitionFile
        self.baseDirectory = baseDirectory; self.startedAt = startedAt; self.restarts = restarts; self.cgroup = cgroup
    }

    enum CodingKeys: String, CodingKey {
        case pid, restarts, cgroup
        case startTime = "start_time", definitionFile = "definition_file", baseDirectory = "base_directory", startedAt = "started_at"
    }

    public func write(to path: String) throws {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        try HostFiles.replaceAtomically(path, with: Array(try enc.encode(self)))
    }

    public static func read(_ path: String) -> VMStateFile? {
        guard let d = FileManager.default.contents(atPath: path) else { return nil }
        return try? JSONDecoder().decode(VMStateFile.self, from: d)
    }
}
