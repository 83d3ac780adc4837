import Posix
import Testing

@Suite struct StartupTraceTests {
    @Test func stepsAreTimedFromThePreviousMarkAndTheOrigin() {
        let trace = StartupTrace(enabled: true, origin: 1_000)
        trace.mark("definition", now: 3_001_000)
        trace.mark("VM and memory", now: 10_001_000)
        #expect(trace.steps == [
            .init(name: "definition", nanoseconds: 3_000_000, sinceOrigin: 3_000_000),
            .init(name: "VM and memory", nanoseconds: 7_000_000, sinceOrigin: 10_000_000),
        ])
        #expect(trace.finish() == "startup trace (ms): definition 3.00, VM and memory 7.00; total 10.00")
    }

    @Test func afterFinishNothingIsRecordedOrReportedTwice() {
        let trace = StartupTrace(enabled: true, origin: 0)
        trace.mark("a", now: 50_000)
        #expect(trace.finish() == "startup trace (ms): a 0.05; total 0.05")
        trace.mark("late", now: 90_000)
        #expect(trace.steps.count == 1)
        #expect(trace.finish() == nil)
    }

    @Test func disabledRecordsNothing() {
        let trace = StartupTrace(enabled: false)
        trace.mark("a")
        #expect(trace.steps.isEmpty && trace.finish() == nil)
    }
}
