import APIModels
import Daemon
import Foundation
import Synchronization

/// `GET /v1/events`: the daemon's recent lifecycle events as newline-delimited JSON (one
/// `DaemonEvent` per line, oldest first). `since=SEQ`: only those after it. `follow=1`: the
/// response stays open and each new event follows as a line, the front repeating a long poll
/// to the daemon (`VMControl.events`); without `since`, it starts with the events from now on.
extension APIRouter {
    /// How long one long poll of a follower waits: the front notices a client that went away
    /// within this time of its last event.
    static let followPollSeconds = 10
    static let ndjson = ("Content-Type", "application/x-ndjson")
    public static let missedHeader = "Rtvisor-Events-Missed"

    func events(_ query: [String: String]) async -> APIResponse {
        var since: UInt64?
        if let s = query["since"], !s.isEmpty {
            guard let n = UInt64(s) else { return Self.error(400, "since must be an event's sequence number (0 or more), got \"\(s)\"") }
            since = n
        }
        let vm = query["vm"].flatMap { $0.isEmpty ? nil : $0 }
        if let vm, !ClonePlan.isValidName(vm) { return Self.error(400, "vm must be a VM name, got \"\(vm)\"") }
        let followValue = query["follow"] ?? "0"
        guard ["0", "1", "true", "false", ""].contains(followValue) else { return Self.error(400, "follow must be 1 or 0, got \"\(followValue)\"") }
        let follow = followValue == "1" || followValue == "true"

        // What there is comes at once (a bad vm is a 404, not a stream that stays empty), in as
        // many answers as it takes.
        var body: [UInt8] = []
        var next: UInt64?
        var headers = [Self.ndjson]
        do {
            var batch = try await control.events(after: follow ? since : (since ?? 0), vm: vm, waitSeconds: 0)
            // A `since` older than the ring: say how many are gone (the journal has them).
            if batch.missed > 0 { headers.append((Self.missedHeader, String(batch.missed))) }
            body = Self.lines(batch.events)
            while batch.more {
                batch = try await control.events(after: batch.next, vm: vm, waitSeconds: 0)
                body += Self.lines(batch.events)
            }
            next = batch.next
        } catch {
            return Self.failure(error)
        }
        guard follow, let next else { return APIResponse(status: 200, headers: headers, body: body) }
        let cursor = Cursor(next)
        let control = self.control
        let stream = ResponseStream {
            while !Task.isCancelled {
                let after = cursor.value.withLock { $0 }
                // The daemon gone (the front ends with it) or refusing: the stream ends.
                guard let batch = try? await control.events(after: after, vm: vm, waitSeconds: Self.followPollSeconds) else { return nil }
                cursor.value.withLock { $0 = batch.next }
                if !batch.events.isEmpty { return Self.lines(batch.events) }
            }
            return nil
        }
        return APIResponse(status: 200, headers: headers, body: body, stream: stream)
    }

    static func lines(_ events: [DaemonEvent]) -> [UInt8] {
        var out: [UInt8] = []
        for e in events {
            guard let line = try? encoder.encode(e) else { continue }
            out += line
            out.append(0x0A)
        }
        return out
    }

    static func failure(_ error: ControlError) -> APIResponse {
        switch error {
        case let .notFound(m): Self.error(404, m)
        case let .conflict(m): Self.error(409, m)
        case let .failed(m): Self.error(500, m)
        case let .invalidDefinition(m, problems): Self.json(409, APIErrorBody(error: m, code: .invalidDefinition, problems: problems))
        }
    }
}

/// A follower's position in the stream (the stream's parts are asked for one at a time).
final class Cursor: Sendable {
    let value: Mutex<UInt64>
    init(_ seq: UInt64) { value = Mutex(seq) }
}
