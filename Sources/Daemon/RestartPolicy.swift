import Config
import VMMInterface

/// How a VMM process ended, as far as the daemon can tell.
public enum ExitOutcome: Equatable, Sendable, CustomStringConvertible {
    /// rtvisor-vmm's exit status (docs/exit-status.md).
    case exited(Int32)
    /// Killed by a signal (e.g. `kill -9`).
    case signaled(Int32)
    /// Ended while rtvisord was not its parent (after a daemon restart) and left no status file:
    /// it was killed before it could write one.
    case unknown

    /// The guest reset the machine.
    public var isGuestReboot: Bool { self == .exited(VMMExitStatus.guestReset.code) }
    /// The guest powered off.
    public var isPowerOff: Bool { self == .exited(VMMExitStatus.guestPoweredOff.code) }

    public var description: String {
        switch self {
        case let .exited(s): "exit status \(s)"
        case let .signaled(s): "killed by signal \(s)"
        case .unknown: "ended, status unknown"
        }
    }
}

public enum RestartDecision: Equatable, Sendable {
    /// Start again after `delayMs`.
    case restart(delayMs: Int, reason: String)
    /// Leave the VM stopped (a power-off under `no`/`on-failure`, or a failure under `no`).
    case stay(reason: String)
    /// Failures came too often: leave the VM failed.
    case giveUp(reason: String)
}

/// The restart policy as a pure state machine over explicit times (seconds on any monotonic
/// clock), so tests drive it without sleeping.
///
/// - A guest reboot (`VMMExitStatus.guestReset`) always starts the VM again at once, like a real machine's reset;
///   it does not count as a failure.
/// - A power-off (`guestPoweredOff`) is restarted only under `always`.
/// - Anything else is a failure: restarted under `on-failure` and `always`, with exponential
///   backoff (`backoff_ms`, doubling, capped at `backoff_max_ms`); more than `limit` automatic
///   restarts within `window_s` and the VM is left failed.
public struct RestartTracker: Equatable, Sendable {
    public var settings: RestartSettings
    /// When each automatic restart in the current window happened.
    public private(set) var recent: [Double] = []

    public init(settings: RestartSettings) { self.settings = settings }

    /// A manual start clears the history.
    public mutating func reset() { recent.removeAll() }

    public mutating func decide(_ outcome: ExitOutcome, now: Double) -> RestartDecision {
        if outcome.isGuestReboot { return .restart(delayMs: 0, reason: "guest rebooted") }
        let failed = !outcome.isPowerOff
        switch (settings.policy, failed) {
        case (.no, false), (.onFailure, false):
            return .stay(reason: "guest powered off")
        case (.no, true):
            return .stay(reason: "\(outcome); restart policy \"no\"")
        case (.always, _), (.onFailure, true):
            break
        }
        recent.removeAll { now - $0 >= Double(settings.windowSeconds) }
        if recent.count >= settings.limit {
            return .giveUp(reason: "\(outcome); restart limit reached (\(settings.limit) in \(settings.windowSeconds) s)")
        }
        let delay = Self.backoff(attempt: recent.count, settings: settings)
        recent.append(now)
        return .restart(delayMs: delay, reason: "\(outcome); restart \(recent.count) of at most \(settings.limit) in \(settings.windowSeconds) s, policy \"\(settings.policy.rawValue)\"")
    }

    /// `backoff_ms · 2^attempt`, capped at `backoff_max_ms` (attempt 0 = the first restart).
    public static func backoff(attempt: Int, settings: RestartSettings) -> Int {
        var d = settings.backoffMs
        for _ in 0..<min(attempt, 40) {
            d *= 2
            if d >= settings.backoffMaxMs { return settings.backoffMaxMs }
        }
        return min(d, settings.backoffMaxMs)
    }
}
