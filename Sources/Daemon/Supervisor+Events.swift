import APIModels

/// The event stream's daemon side: `events(after:vm:waitSeconds:)` is a long poll, so the API
/// front follows the stream by repeating one bounded call (no stream across the control socket,
/// nothing to clean up when a front dies: its call just ends by its deadline).
extension Supervisor {
    public func events(after seq: UInt64?, vm: String?, waitSeconds: Int) async throws(ControlError) -> EventBatch {
        if let vm, records[vm] == nil, !eventLog.events.contains(where: { $0.vm == vm }) {
            // A typo must not look like a quiet VM; a VM removed since may still have events.
            throw .notFound("no VM named \"\(vm)\"")
        }
        // Without a sequence number: from now on.
        let start = seq ?? eventLog.lastSeq
        var batch = eventLog.after(start, vm: vm)
        let wait = min(max(waitSeconds, 0), EventLog.maxWaitSeconds)
        guard batch.events.isEmpty, wait > 0 else { return batch }
        let deadline = ContinuousClock.now + .seconds(wait)
        while batch.events.isEmpty, ContinuousClock.now < deadline {
            await nextEvent(orUntil: deadline)
            batch = eventLog.after(start, vm: vm)
        }
        return batch
    }

    /// A long poll waiting, and the timer that ends its wait at the deadline.
    struct EventWaiter {
        let continuation: CheckedContinuation<Void, Never>
        var timer: Task<Void, Never>?
    }

    /// Returns after the next event, or at the deadline.
    func nextEvent(orUntil deadline: ContinuousClock.Instant) async {
        let id = nextEventWaiter
        nextEventWaiter += 1
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            eventWaiters[id] = EventWaiter(continuation: c)
            eventWaiters[id]?.timer = Task { [weak self] in
                // Cancelled when an event wakes the poll first: no sleeping task per event.
                guard (try? await Task.sleep(until: deadline, clock: .continuous)) != nil else { return }
                await self?.wakeEventWaiter(id)
            }
        }
    }

    func wakeEventWaiter(_ id: UInt64) { eventWaiters.removeValue(forKey: id)?.continuation.resume() }

    func wakeEventWaiters() {
        let waiters = eventWaiters.values
        eventWaiters = [:]
        for w in waiters {
            w.timer?.cancel()
            w.continuation.resume()
        }
    }
}
