import Config
import Daemon
import Testing

@Suite struct RestartPolicyTests {
    func tracker(_ policy: RestartPolicyKind, limit: Int = 3, window: Int = 60, backoff: Int = 100, max: Int = 1000) -> RestartTracker {
        RestartTracker(settings: RestartSettings(policy: policy, limit: limit, windowSeconds: window, backoffMs: backoff, backoffMaxMs: max))
    }

    @Test func policyNo() {
        var t = tracker(.no)
        #expect(t.decide(.exited(0), now: 0) == .stay(reason: "guest powered off"))
        #expect(t.decide(.signaled(9), now: 1) == .stay(reason: "killed by signal 9; restart policy \"no\""))
        #expect(t.decide(.exited(6), now: 2) == .stay(reason: "exit status 6; restart policy \"no\""))
    }

    @Test func guestRebootAlwaysRestartsAtOnceAndIsNotCounted() {
        for p in RestartPolicyKind.allCases {
            var t = tracker(p, limit: 1)
            for i in 0..<5 { #expect(t.decide(.exited(3), now: Double(i)) == .restart(delayMs: 0, reason: "guest rebooted")) }
            #expect(t.recent.isEmpty)
        }
    }

    @Test func onFailureRestartsFailuresNotPowerOff() {
        var t = tracker(.onFailure)
        #expect(t.decide(.exited(0), now: 0) == .stay(reason: "guest powered off"))
        guard case .restart(100, _) = t.decide(.signaled(9), now: 1) else { Issue.record("expected a restart"); return }
        guard case .restart(200, _) = t.decide(.exited(4), now: 2) else { Issue.record("expected a restart"); return }
        guard case .restart(400, _) = t.decide(.unknown, now: 3) else { Issue.record("expected a restart"); return }
        guard case let .giveUp(reason) = t.decide(.exited(1), now: 4) else { Issue.record("expected to give up"); return }
        #expect(reason == "exit status 1; restart limit reached (3 in 60 s)")
    }

    @Test func alwaysRestartsPowerOffToo() {
        var t = tracker(.always)
        guard case .restart(100, _) = t.decide(.exited(0), now: 0) else { Issue.record("expected a restart"); return }
    }

    @Test func windowForgetsOldRestarts() {
        var t = tracker(.onFailure, limit: 2, window: 10)
        _ = t.decide(.exited(5), now: 0)
        _ = t.decide(.exited(5), now: 5)
        guard case .giveUp = t.decide(.exited(5), now: 9.9) else { Issue.record("expected to give up inside the window"); return }
        // At t = 15 the restart at 0 and at 5 are 15 and 10 s old: both out of the 10 s window.
        guard case .restart(100, _) = t.decide(.exited(5), now: 15) else { Issue.record("expected a restart after the window"); return }
    }

    @Test func manualStartResetsHistory() {
        var t = tracker(.onFailure, limit: 1)
        _ = t.decide(.exited(5), now: 0)
        guard case .giveUp = t.decide(.exited(5), now: 1) else { Issue.record("expected to give up"); return }
        t.reset()
        guard case .restart(100, _) = t.decide(.exited(5), now: 2) else { Issue.record("expected a restart after reset"); return }
    }

    @Test func backoffDoublesAndCaps() {
        let s = RestartSettings(policy: .always, limit: 100, windowSeconds: 60, backoffMs: 300, backoffMaxMs: 2000)
        #expect((0..<6).map { RestartTracker.backoff(attempt: $0, settings: s) } == [300, 600, 1200, 2000, 2000, 2000])
        #expect(RestartTracker.backoff(attempt: 1000, settings: s) == 2000)
        let zero = RestartSettings(policy: .always, backoffMs: 0, backoffMaxMs: 0)
        #expect(RestartTracker.backoff(attempt: 3, settings: zero) == 0)
    }
}

/// Guest reboots: never a failure, never given up on, never a tight spawn loop (issue 16).
@Suite struct RebootThrottleTests {
    static let limits = RebootThrottle.Limits.standard

    /// Reboots `count` times, `every` seconds apart, each run `every` seconds long; the delays.
    func loop(_ t: inout RestartTracker, count: Int, every: Double, from start: Double = 0) -> [Int] {
        var now = start
        var delays: [Int] = []
        for _ in 0..<count {
            t.started(at: now)
            now += every
            guard case let .restart(delay, _) = t.decide(.exited(3), now: now) else { Issue.record("a reboot must always restart"); return delays }
            delays.append(delay)
            now += Double(delay) / 1000
        }
        return delays
    }

    @Test func standardLimits() {
        let l = Self.limits
        #expect(l.burst == 5 && l.windowSeconds == 60 && l.initialDelayMs == 1000 && l.maxDelayMs == 60_000 && l.stableSeconds == 60)
    }

    @Test(arguments: RestartPolicyKind.allCases)
    func resetLoopIsDelayedAfterTheBurstAndNeverGivenUp(_ policy: RestartPolicyKind) {
        var t = RestartTracker(settings: RestartSettings(policy: policy, limit: 1))
        let delays = loop(&t, count: 14, every: 0.01)
        #expect(delays == [0, 0, 0, 0, 0, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000])
        // Not failures: the restart limit (1) was never touched.
        #expect(t.recent.isEmpty)
    }

    @Test func delayedRebootSaysWhy() {
        var t = RestartTracker(settings: RestartSettings(policy: .no))
        _ = loop(&t, count: 5, every: 0.01)
        #expect(t.decide(.exited(3), now: 1) == .restart(delayMs: 1000, reason:
            "guest reboot loop: more than 5 reboots within 60 s and not 60 s up since; delayed reboot 1, delays double up to 60000 ms"))
    }

    @Test func occasionalRebootsStartAtOnce() {
        var t = RestartTracker(settings: RestartSettings(policy: .always))
        // Every 15 s (4 a minute) for an hour, and the burst itself, are never delayed.
        #expect(loop(&t, count: 240, every: 15).allSatisfy { $0 == 0 })
        var burst = RestartTracker(settings: RestartSettings(policy: .no))
        #expect(loop(&burst, count: 5, every: 1) == [0, 0, 0, 0, 0])
    }

    @Test func aLoopStaysDelayedUntilTheGuestStaysUp() {
        var t = RestartTracker(settings: RestartSettings(policy: .onFailure))
        _ = loop(&t, count: 6, every: 0.01)
        // The delays spread the reboots out of the window; the guest still only lasts 30 s.
        #expect(loop(&t, count: 4, every: 30, from: 100) == [2000, 4000, 8000, 16000])
        // Up a minute: the next reboot is at once, and the burst is free again.
        #expect(loop(&t, count: 1, every: 60, from: 1000) == [0])
        #expect(loop(&t, count: 6, every: 0.01, from: 2000) == [0, 0, 0, 0, 0, 1000])
    }

    @Test func aStartByHandForgetsTheLoop() {
        var t = RestartTracker(settings: RestartSettings(policy: .onFailure))
        _ = loop(&t, count: 7, every: 0.01)
        t.reset()
        #expect(t.reboots.delayed == 0 && t.reboots.recent.isEmpty)
        #expect(loop(&t, count: 1, every: 0.01, from: 500) == [0])
    }

    @Test func unknownStartCountsNoUptime() {
        // A VMM whose start the tracker never saw (re-adopted without a start time) resets nothing.
        var limits = Self.limits
        limits.burst = 1
        limits.initialDelayMs = 10
        limits.stableSeconds = 5
        var throttle = RebootThrottle(limits: limits)
        #expect(throttle.decide(now: 0).delayMs == 0)
        #expect(throttle.decide(now: 1).delayMs == 10)
        #expect(throttle.decide(now: 100).delayMs == 20)
        throttle.started(at: 100)
        #expect(throttle.decide(now: 105).delayMs == 0)
    }
}
