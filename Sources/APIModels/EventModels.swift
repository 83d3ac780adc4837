// The event stream's shapes (GET /v1/events, docs/api.yaml): the daemon's lifecycle events as
// the journal gets them, numbered so that a client can ask for what came after the last it saw.

/// One lifecycle event: the same message and fields as its journal entry (docs/daemon.md,
/// "Journal"), plus a sequence number that only grows while rtvisord runs.
public struct DaemonEvent: Codable, Sendable, Equatable {
    /// 1, 2, 3… since rtvisord started (a restarted daemon starts again at 1).
    public var seq: UInt64
    /// Unix time in seconds.
    public var time: Double
    /// The RTVISOR_EVENT name (`vm-started`, `vm-stopped`, … `LifecycleEvent` in Sources/Journald).
    public var kind: String
    public var vm: String?
    public var pid: Int32?
    /// The VM's state the event leaves it in (VM_STATE), when it names one.
    public var state: VMStateName?
    public var message: String
    /// Why the VMM ended, or why something was refused (VM_EXIT_REASON).
    public var reason: String?
    /// The entry's other journal fields (RESTART_DELAY_MS, SNAPSHOT_DIRECTORY, …).
    public var fields: [String: String]

    public init(seq: UInt64, time: Double, kind: String, vm: String?, pid: Int32?, state: VMStateName?, message: String,
                reason: String?, fields: [String: String]) {
        self.seq = seq; self.time = time; self.kind = kind; self.vm = vm; self.pid = pid; self.state = state
        self.message = message; self.reason = reason; self.fields = fields
    }
}

/// The events after a sequence number, as one answer of the daemon (a long poll's, across the
/// API front's control socket, or `GET /v1/events` without `follow`).
public struct EventBatch: Codable, Sendable, Equatable {
    public var events: [DaemonEvent]
    /// What to ask after next time: the newest sequence number looked at (events of other VMs
    /// included), so a filtered follower does not look at them again.
    public var next: UInt64
    /// Events newer than the one asked after that had already left the ring (it keeps the last
    /// `EventLog.capacity`): the caller missed them.
    public var missed: UInt64
    /// The answer stopped at its size limit: ask again after `next` for the rest.
    public var more: Bool

    public init(events: [DaemonEvent], next: UInt64, missed: UInt64, more: Bool = false) {
        self.events = events; self.next = next; self.missed = missed; self.more = more
    }
}
