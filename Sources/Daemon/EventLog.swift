import APIModels

/// The daemon's recent lifecycle events, for `GET /v1/events` and `rtvisorctl events`/`--wait`:
/// a bounded ring (the journal keeps the history; this is for whoever watches now), each event
/// numbered so that a watcher asks for what came after the last it saw and misses nothing
/// while it reconnects or repeats its long poll. Pure data: the Supervisor owns one and wakes
/// its long-polling callers.
public struct EventLog: Sendable {
    /// Enough for a burst (every VM of a large host starting at once) between two polls of a
    /// watcher; a slower one is told how many it missed.
    public static let defaultCapacity = 1000
    /// The longest a long poll may wait for an event: a follower whose client went away is
    /// noticed within this time, and the API front's control-call slot is given back.
    public static let maxWaitSeconds = 30

    public let capacity: Int
    /// Oldest first; at most `capacity`.
    public private(set) var events: [DaemonEvent] = []
    /// The newest sequence number handed out (0: none yet).
    public private(set) var lastSeq: UInt64 = 0

    public init(capacity: Int = defaultCapacity) { self.capacity = max(1, capacity) }

    /// Numbers the event and keeps it, dropping the oldest beyond the capacity.
    @discardableResult
    public mutating func append(time: Double, kind: String, vm: String?, pid: Int32?, state: VMStateName?, message: String,
                                reason: String?, fields: [String: String]) -> DaemonEvent {
        lastSeq += 1
        let e = DaemonEvent(seq: lastSeq, time: time, kind: kind, vm: vm, pid: pid, state: state, message: message, reason: reason, fields: fields)
        if events.count == capacity { events.removeFirst() }
        events.append(e)
        return e
    }

    /// Events in one answer at most: a batch must fit a control-socket frame (4 MiB) whatever the
    /// messages say; a caller asks again for the rest (`EventBatch.more`).
    public static let batchLimit = 250

    /// The events after `seq` (of one VM, if `vm` is given), oldest first, at most `limit`. `next`
    /// is the newest sequence number looked at, so a caller that repeats with it sees each event
    /// once.
    public func after(_ asked: UInt64, vm: String? = nil, limit: Int = batchLimit) -> EventBatch {
        // A number this rtvisord never handed out comes from an earlier one (the numbering starts
        // again at 1): everything here is new to that caller, who reconnected after a restart.
        let seq = asked > lastSeq ? 0 : asked
        let oldest = events.first?.seq ?? lastSeq + 1
        // Numbers seq+1 … oldest-1 were handed out and are gone.
        let missed = oldest > seq + 1 ? oldest - seq - 1 : 0
        var found: [DaemonEvent] = []
        for e in events where e.seq > seq && (vm == nil || e.vm == vm) {
            if found.count == limit { return EventBatch(events: found, next: found.last!.seq, missed: missed, more: true) }
            found.append(e)
        }
        return EventBatch(events: found, next: max(seq, lastSeq), missed: missed, more: false)
    }
}
