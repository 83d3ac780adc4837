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
