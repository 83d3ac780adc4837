/// Fixed 128-bit MESSAGE_IDs for rtvisor's lifecycle events (like systemd's catalog ids), so
/// `journalctl MESSAGE_ID=…` finds every such event across versions. Random ids, generated once
/// (Python's uuid4); never change them.
public enum LifecycleEvent: String, CaseIterable, Sendable {
    case daemonReady = "daemon-ready"
    case daemonStopping = "daemon-stopping"
    case daemonReloaded = "daemon-reloaded"
    case definitionInvalid = "definition-invalid"
    case definitionPending = "definition-pending"
    case vmStarted = "vm-started"
    case vmAdopted = "vm-adopted"
    case vmStopped = "vm-stopped"
    case vmFailed = "vm-failed"
    case vmRestartScheduled = "vm-restart-scheduled"
    case vmRestartLimit = "vm-restart-limit"
    case vmPaused = "vm-paused"
    case vmResumed = "vm-resumed"
    case vmConsole = "vm-console"
    /// Console lines a VM's journal rate limit dropped (`VM_CONSOLE_SUPPRESSED` = how many).
    case vmConsoleSuppressed = "vm-console-suppressed"
    /// Host changes of a real-time VM undone by the daemon after its VMM ended.
    case vmRealtimeReleased = "vm-realtime-released"
    /// Every guest asked to shut down on request (`rtvisorctl shutdown-guests`: rtvisor-guests.service stopping).
    case guestsShutdown = "guests-shutdown"
    /// The autostart VMs that were stopped started on request (`rtvisorctl start-guests`: rtvisor-guests.service starting).
    case guestsStarted = "guests-started"
    /// A VM saved to a snapshot directory (`SNAPSHOT_DIRECTORY`; docs/snapshot.md).
    case vmSnapshotSaved = "vm-snapshot-saved"
    /// A VM resumed from a snapshot by a restore or a clone (`SNAPSHOT_DIRECTORY`).
    case vmRestored = "vm-restored"
    /// Clones made of a VM or snapshot (`VM_CLONES`, `SNAPSHOT_DIRECTORY`).
    case vmCloned = "vm-cloned"
    /// A VM moved to another host by live migration (`MIGRATION_SOURCE_HOST`, `MIGRATION_DESTINATION`).
    case vmMigrated = "vm-migrated"
    /// A live migration that did not move the VM (refused, failed, or of unknown outcome: `MIGRATION_OUTCOME`).
    case vmMigrationFailed = "vm-migration-failed"
    /// A VM received from another host runs here (`MIGRATION_SOURCE_HOST`, `MIGRATION_DESTINATION`).
    case vmMigratedIn = "vm-migrated-in"
    /// A running VM moved to a new rtvisor-vmm on this host, the guest running on (`VM_OLD_PID`).
    case vmUpgraded = "vm-upgraded"
    /// The guest wrote the boot marker: it is up (`VM_GUEST_READY_MS` after VM creation).
    case vmGuestReady = "vm-guest-ready"
    /// A real-time VM's partition is in force (`VM_REALTIME_CPUS`, `VM_REALTIME_PRIORITY`).
    case vmRealtimeApplied = "vm-realtime-applied"

    public var messageID: String {
        switch self {
        case .daemonReady: "bbcc5c5093ea49079f3ac5d1605ad04c"
        case .daemonStopping: "fb00b310b9cb4aad836ea1fa4d3c83ac"
        case .daemonReloaded: "0ebc77a3c6824a25a26bf0a426bcfcf0"
        case .definitionInvalid: "2db17792ecdf4c33a0d45fff5210783c"
        case .definitionPending: "813b4aa90c1b44fa9eb0120b5bd3c049"
        case .vmStarted: "ba0b1ae689bd47a7ae1c3e66abd5a16b"
        case .vmAdopted: "66e17a180a5048688fbb9d4317acab4c"
        case .vmStopped: "fab278c2d2cd4109af3ddc8c87aab4f7"
        case .vmFailed: "8cf25365198240b4804a5e7a4e226edc"
        case .vmRestartScheduled: "e9df7a599c634dacbc312040720372cf"
        case .vmRestartLimit: "28a9720047604faa8216783a950a3fb4"
        case .vmPaused: "59e3062da4034c439921c56eff47e57f"
        case .vmResumed: "b3b970ac4869473ab0bcb56faa27590c"
        case .vmConsole: "78b000b79d4a45068ae0a6b24d0c4f43"
        case .vmConsoleSuppressed: "5c284978482c464fbedca8e7fcb1645f"
        case .vmRealtimeReleased: "bc0fa290b0234b34bebec63aafed23b3"
        case .guestsShutdown: "8b850b145a4847dea6565c90b3e29e69"
        case .guestsStarted: "5d8cb222db914bb4b502ede1205937df"
        case .vmSnapshotSaved: "f7f7f27472394bf4ba3b86228b48f7e9"
        case .vmRestored: "15b5a400f86f4d90bfe7ea2e7f7fbf92"
        case .vmCloned: "0d672b2f66f64813a6942182239043dc"
        case .vmMigrated: "5ad874c9f0c74f26a74d5b755fef66fd"
        case .vmMigrationFailed: "87629455bfb149908eb2941b311d3c84"
        case .vmMigratedIn: "c1b917aa691b4d028bfc97684ba5594b"
        case .vmUpgraded: "3e0d6f1b8a2c4f57b9d1c7a4e6f02b35"
        case .vmGuestReady: "d58d0dd574ad487caae95d9aed7cf71a"
        case .vmRealtimeApplied: "65e764cb44a44bf5b5be09a41a8d5b40"
        }
    }
}
