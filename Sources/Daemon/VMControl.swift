import APIModels
import Config

/// What the control API can ask of the daemon (the Supervisor implements it; API tests use a
/// fake; the API front process's `RemoteVMControl` forwards every call to rtvisord, so any call
/// can fail).
public protocol VMControl: Sendable {
    func list() async throws(ControlError) -> VMList
    func inspect(_ name: String) async throws(ControlError) -> VMDetail
    func start(_ name: String) async throws(ControlError) -> ActionResult
    func stop(_ name: String, force: Bool) async throws(ControlError) -> ActionResult
    /// The guest's graceful reboot: Ctrl-Alt-Del, and a new VMM once the guest has shut down.
    func reboot(_ name: String) async throws(ControlError) -> ActionResult
    /// The hard reset: the VMM is stopped at once (SIGTERM) and a new one started.
    func reset(_ name: String) async throws(ControlError) -> ActionResult
    func pause(_ name: String) async throws(ControlError) -> ActionResult
    func resume(_ name: String) async throws(ControlError) -> ActionResult
    func validate(_ request: ValidateRequest) async throws(ControlError) -> ValidateResult
    func reload() async throws(ControlError) -> ReloadResult
    func info() async throws(ControlError) -> DaemonInfo
    /// The real-time host report of one VM with a `realtime` block, or of all of them.
    func realtimeCheck(_ name: String?) async throws(ControlError) -> [RealtimeCheck]
    /// The wake-up latency histogram of a real-time VM with a probe.
    func latency(_ name: String) async throws(ControlError) -> LatencySnapshot
    /// Asks every guest to shut down (graceful stop; a reset in progress ends as a stop, a pending
    /// restart is cancelled) and answers at once, with how long the stops may take
    /// (rtvisor-guests.service's stop, at host shutdown).
    func shutdownGuests() async throws(ControlError) -> GuestsResult
    /// Starts every autostart VM that is stopped (rtvisor-guests.service's start).
    func startGuests() async throws(ControlError) -> GuestsResult
    /// Saves a running VM into a new snapshot directory (docs/snapshot.md); it runs on, or stops.
    func snapshot(_ name: String, _ options: SnapshotOptions) async throws(ControlError) -> SnapshotResult
    /// The snapshots under the daemon's snapshot directory, of one VM or all.
    func snapshots(vm: String?) async throws(ControlError) -> SnapshotList
    /// Installs a snapshot's VM (renamed, if asked) as a defined VM and resumes it.
    func restore(_ request: RestoreRequest) async throws(ControlError) -> RestoredVM
    /// N running copies of a VM (snapshotted first) or of a snapshot.
    func clone(_ name: String, _ request: CloneRequest) async throws(ControlError) -> CloneResult
    /// Moves a running VM live to the target listening at `request.address` (docs/migration.md).
    func migrate(_ name: String, _ request: MigrateRequest) async throws(ControlError) -> MigrateResult
    /// Moves a running VM to a new rtvisor-vmm (the binary installed now) on this host, its RAM
    /// and taps handed over as descriptors (docs/migration.md, "Upgrading the VMM").
    func upgrade(_ name: String) async throws(ControlError) -> UpgradeResult
    /// How the migration of a VM goes, as its VMM last reported it.
    func migrationStatus(_ name: String) async throws(ControlError) -> MigrationStatus
    /// Listens for one VM sent by another host's `migrate`; answers once listening.
    func receiveMigration(_ request: IncomingRequest) async throws(ControlError) -> IncomingMigration
    func incomingMigrations() async throws(ControlError) -> IncomingList
    func incomingMigration(_ id: String) async throws(ControlError) -> IncomingMigration
    /// The lifecycle events after sequence number `after` (nil: from now on), of one VM or all; if
    /// there are none yet, waits up to `waitSeconds` (at most `EventLog.maxWaitSeconds`) for one.
    func events(after: UInt64?, vm: String?, waitSeconds: Int) async throws(ControlError) -> EventBatch
    /// The shared-memory channels and their peers (docs/channels.md).
    func channels() async throws(ControlError) -> ChannelList
    /// Statistics of one VM (a list of one) or of all, read now (`StatsCollector`).
    func stats(_ name: String?) async throws(ControlError) -> StatsList
    /// The last `lines` lines of a running VM's console (asked of its VMM).
    func consoleTail(_ name: String, lines: Int) async throws(ControlError) -> ConsoleTail
}

public enum ControlError: Error, Equatable, Sendable, CustomStringConvertible {
    /// No VM of that name (HTTP 404).
    case notFound(String)
    /// The VM is in a state where the action makes no sense (HTTP 409).
    case conflict(String)
    /// The action was tried and failed (HTTP 500).
    case failed(String)
    /// A definition the request brings (a restore's) is invalid: HTTP 409 with code
    /// invalid-definition and each problem in the error's `problems` (docs/api.yaml).
    case invalidDefinition(String, [DefinitionProblem])

    public var description: String {
        switch self {
        case let .notFound(s), let .conflict(s), let .failed(s), let .invalidDefinition(s, _): s
        }
    }

    /// A `DefinitionError` as the answer: the problems listed, and in the message.
    public static func invalid(_ e: DefinitionError) -> ControlError {
        .invalidDefinition(e.issues.map(\.description).joined(separator: "; "),
                           e.issues.map { DefinitionProblem(file: $0.file, path: $0.path, reason: $0.reason) })
    }
}
