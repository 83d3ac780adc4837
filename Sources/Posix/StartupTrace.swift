import Synchronization

/// How long each step of a start-up took (`rtvisor-vmm --trace-startup`): steps are marked as
/// they end, each with the time since the previous mark; the first is measured from `origin`.
/// Disabled, `mark` is one atomic load.
public final class StartupTrace: Sendable {
    public struct Step: Equatable, Sendable {
        public let name: String
        /// Nanoseconds since the previous step ended (or since the origin).
        public let nanoseconds: UInt64
        /// Nanoseconds since the origin.
        public let sinceOrigin: UInt64
        public init(name: String, nanoseconds: UInt64, sinceOrigin: UInt64) {
            self.name = name; self.nanoseconds = nanoseconds; self.sinceOrigin = sinceOrigin
        }
    }

    public let isEnabled: Bool
    private let origin: UInt64
    private let state: Mutex<(last: UInt64, steps: [Step], finished: Bool)>

    public init(enabled: Bool, origin: UInt64 = monotonicNanoseconds()) {
        isEnabled = enabled
        self.origin = origin
        state = Mutex((origin, [], false))
    }

    /// Records that `step` just ended (at `now`).
    public func mark(_ step: String, now: UInt64 = monotonicNanoseconds()) {
        guard isEnabled else { return }
        state.withLock { s in
            guard !s.finished else { return }
            s.steps.append(Step(name: step, nanoseconds: now &- s.last, sinceOrigin: now &- origin))
            s.last = now
        }
    }

    /// The steps so far; after `finish()` no more are recorded.
    public var steps: [Step] { state.withLock { $0.steps } }

    /// Ends the trace (later marks are ignored) and returns it as one line, or nil if disabled
    /// or already finished.
    public func finish() -> String? {
        guard isEnabled else { return nil }
        return state.withLock { s -> String? in
            guard !s.finished else { return nil }
            s.finished = true
            return "startup trace (ms): " + s.steps.map { "\($0.name) \(Self.ms($0.nanoseconds))" }.joined(separator: ", ")
                + "; total \(Self.ms(s.last &- origin))"
        }
    }

    public static func ms(_ ns: UInt64) -> String {
        let hundredths = (ns + 5_000) / 10_000
        let frac = hundredths % 100
        return "\(hundredths / 100).\(frac < 10 ? "0" : "")\(frac)"
    }
}
