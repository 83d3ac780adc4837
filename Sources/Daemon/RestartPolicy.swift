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
    /// The VMM saved the VM to a snapshot and stopped, as asked (`rtvisorctl snapshot --stop`).
    public var isSavedAndStopped: Bool { self == .exited(VMMExitStatus.savedAndStopped.code) }
    /// The VM moved to another VMM by live migration and runs there (`rtvisorctl migrate`).
    public var isMigrated: Bool { self == .exited(VMMExitStatus.migrated.code) }
    /// Ended as someone meant it to: not a failure, whatever the policy.
    public var isDeliberateStop: Bool { isPowerOff || isSavedAndStopped || isMigrated }

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
/// - A guest reboot (`VMMExitStatus.guestReset`) always starts the VM again, under every policy, like
///   a real machine's reset; it does not count as a failure. At once, unless the guest reboots in a
///   loop: then `RebootThrottle` delays it.
/// - A power-off (`guestPoweredOff`) is restarted only under `always`.
/// - A VM saved to a snapshot and stopped on request (`savedAndStopped`) stays stopped under every
///   policy: the stop was asked for, like `rtvisorctl stop`.
/// - A VM that moved to another VMM (`migrated`) stays stopped under every policy too: the
///   guest runs on the target, and a restart here would run it twice.
/// - Anything else is a failure: restarted under `on-failure` and `always`, with exponential
///   backoff (`backoff_ms`, doubling, capped at `backoff_max_ms`); more than `limit` automatic
///   restarts within `window_s` and the VM is left failed.
public struct RestartTracker: Equatable, Sendable {
    public var settings: RestartSettings
    /// When each automatic restart in the current window happened.
    public private(set) var recent: [Double] = []
    public private(set) var reboots: RebootThrottle

    public init(settings: RestartSettings, reboots: RebootThrottle.Limits = .standard) {
        self.settings = settings
        self.reboots = RebootThrottle(limits: reboots)
    }

    /// A manual start clears the history.
    public mutating func reset() {
        recent.removeAll()
        reboots.reset()
    }

    /// A VMM of this VM started at `now` (on the clock `decide` gets): a guest that stays up long
    /// enough is no longer rebooting in a loop.
    public mutating func started(at now: Double) { reboots.started(at: now) }

    public mutating func decide(_ outcome: ExitOutcome, now: Double) -> RestartDecision {
        if outcome.isGuestReboot {
            let (delayMs, reason) = reboots.decide(now: now)
            return .restart(delayMs: delayMs, reason: reason)
        }
        if outcome.isSavedAndStopped { return .stay(reason: "saved to a snapshot and stopped on request") }
        // Starting it here again would run the guest twice (the target runs it).
        if outcome.isMigrated { return .stay(reason: "migrated: it runs on the target") }
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
        backoff(attempt: attempt, first: settings.backoffMs, max: settings.backoffMaxMs)
    }

    /// `first · 2^attempt`, capped at `max`.
    public static func backoff(attempt: Int, first: Int, max: Int) -> Int {
        var d = first
        for _ in 0..<min(attempt, 40) {
            d *= 2
            if d >= max { return max }
        }
        return min(d, max)
    }
}

/// Guest reboots, which are not failures and never make the daemon give up, but must not become
/// a tight spawn loop (a guest that resets at once, over and over). Up to `burst` reboots within
/// `windowSeconds` start the VM again at once; after that each reboot waits, `initialDelayMs`
/// doubling up to `maxDelayMs`, until the guest stays up `stableSeconds` (measured from the
/// VMM's start), which forgets the history. Pure, over explicit monotonic times.
public struct RebootThrottle: Equatable, Sendable {
    /// Other limits: change a copy of `standard` (only tests do).
    public struct Limits: Equatable, Sendable {
        public var burst: Int
        public var windowSeconds: Double
        public var initialDelayMs: Int
        public var maxDelayMs: Int
        public var stableSeconds: Double

        /// 5 reboots in a minute pass at once: an admin rebooting a guest by hand a few times, or
        /// a guest's own update-and-reboot, never waits. A guest past that reboots in a loop
        /// (a kernel with `panic=1` that panics at boot, a reset right at start): it waits 1 s,
        /// 2 s, 4 s, … up to a minute between runs, so it costs at most one spawn and boot a
        /// minute instead of all the CPU a spawn loop can take, and it still comes back by itself
        /// once fixed (a reboot is not a failure). A minute of uptime counts as "booted and stayed
        /// up": the next reboot is at once again.
        public static let standard = Limits(burst: 5, windowSeconds: 60, initialDelayMs: 1000, maxDelayMs: 60_000, stableSeconds: 60)
    }

    public let limits: Limits
    /// When each reboot within the window happened.
    public private(set) var recent: [Double] = []
    /// Reboots delayed since the guest last stayed up: the backoff exponent.
    public private(set) var delayed = 0
    /// The current VMM's start, if known.
    public private(set) var startedAt: Double?

    public init(limits: Limits = .standard) { self.limits = limits }

    public mutating func started(at now: Double) { startedAt = now }

    public mutating func reset() {
        recent.removeAll()
        delayed = 0
    }

    /// The guest rebooted at `now`: how long to wait before starting it again, and why.
    public mutating func decide(now: Double) -> (delayMs: Int, reason: String) {
        if let s = startedAt, now - s >= limits.stableSeconds { reset() }
        startedAt = nil
        recent.removeAll { now - $0 >= limits.windowSeconds }
        recent.append(now)
        // Once delayed, a loop stays delayed until the guest stays up, even when the delays have
        // spread its reboots out of the window.
        guard delayed > 0 || recent.count > limits.burst else { return (0, "guest rebooted") }
        let delay = RestartTracker.backoff(attempt: delayed, first: limits.initialDelayMs, max: limits.maxDelayMs)
        delayed += 1
        return (delay, "guest reboot loop: more than \(limits.burst) reboots within \(Self.seconds(limits.windowSeconds)) s and not "
                    + "\(Self.seconds(limits.stableSeconds)) s up since; delayed reboot \(delayed), delays double up to \(limits.maxDelayMs) ms")
    }

    private static func seconds(_ s: Double) -> String { s == s.rounded() ? String(Int(s)) : String(s) }
}
