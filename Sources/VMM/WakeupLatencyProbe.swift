import VMMInterface
import Histogram
import Logging
import Posix
import Realtime
import Synchronization
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// The host side of a real-time VM's timing: a thread at the vCPUs' priority + 1 on the VM's
/// first real-time CPU sleeps until absolute deadlines one period apart and records how late it
/// woke (timer expiry to running) in an HDR histogram. That is the wake-up latency a halted vCPU
/// thread sees when its guest's timer fires, measured without tracing. One priority above the
/// vCPU so a busy vCPU does not hide it; it costs the guest a few µs per period.
///
/// A second thread on the housekeeping CPUs publishes the histogram to a JSON file once a second
/// (rtvisord serves it as `GET /v1/vms/{name}/latency`); the probe only ever try-locks the slot
/// they share, so it never waits for the publisher.
final class WakeupLatencyProbe: @unchecked Sendable {
    let vm: String
    let cpu: Int
    let priority: Int
    let periodNanoseconds: UInt64
    let file: String?
    let logger: Logger
    private let stopping = Atomic<Bool>(false)
    private let slot = Mutex<Histogram<UInt64>?>(nil)
    private var threads: [PosixThread] = []

    init(vm: String, cpu: Int, vcpuPriority: Int, periodMicroseconds: Int, file: String?, logger: Logger) {
        self.vm = vm; self.cpu = cpu; self.priority = min(99, vcpuPriority + 1)
        self.periodNanoseconds = UInt64(periodMicroseconds) * 1000
        self.file = file; self.logger = logger
    }

    static func newHistogram() -> Histogram<UInt64> {
        Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
    }

    func start() {
        do {
            threads.append(try PosixThread(name: "rt-probe") { [self] in probeLoop() })
            threads.append(try PosixThread(name: "rt-probe-pub") { [self] in publishLoop() })
        } catch {
            logger.error("wake-up latency probe of \(vm) not started: \(error)")
        }
    }

    func stop() {
        stopping.store(true, ordering: .relaxed)
        for t in threads { t.join() }
        threads = []
    }

    /// Places a thread (cpuset, CPU, SCHED_FIFO); set by RealtimeSetup, which may go through the
    /// janitor once the VMM has dropped root.
    nonisolated(unsafe) var placer: (@Sendable (_ tid: Int32, _ cpu: Int, _ priority: Int) throws -> Void)?

    private func probeLoop() {
        do {
            guard let placer else { throw VMMError.setup("no thread placement was set up") }
            try placer(ThreadScheduling.currentTID, cpu, priority)
        } catch {
            logger.error("wake-up latency probe of \(vm) on CPU \(cpu): \(error)")
            return
        }
        var histogram = Self.newHistogram()
        var next = Self.now()
        var lastHandOver = next
        while !stopping.load(ordering: .relaxed) {
            next += periodNanoseconds
            var ts = timespec(tv_sec: Int(next / 1_000_000_000), tv_nsec: Int(next % 1_000_000_000))
            while clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nil) == EINTR {}
            let woke = Self.now()
            let late = woke > next ? woke - next : 0
            _ = histogram.record(late)
            // Missed whole periods (the thread was held off): restart the schedule from now
            // instead of firing a burst of catch-up wake-ups.
            if late > periodNanoseconds { next = woke }
            if woke - lastHandOver >= 1_000_000_000 {
                let copy = histogram
                if slot.withLockIfAvailable({ $0 = copy }) != nil { lastHandOver = woke }
            }
        }
        let final = histogram
        slot.withLock { $0 = final }
    }

    private func publishLoop() {
        var published: UInt64 = 0
        while !stopping.load(ordering: .relaxed) {
            usleep(200_000)
            let h = slot.withLock { $0 }
            if let h, h.totalCount != published { publish(h); published = h.totalCount }
        }
    }

    /// After `stop()`: the final numbers, written and logged.
    func finish() {
        guard let h = slot.withLock({ $0 }) else { return }
        let s = publish(h)
        logger.notice("wake-up latency on CPU \(cpu) (FIFO \(priority), every \(periodNanoseconds / 1000) µs): \(s.samples) samples, min \(s.minNanoseconds) ns, mean \(Int(s.meanNanoseconds)) ns, p99 \(s.p99Nanoseconds) ns, p99.99 \(s.p9999Nanoseconds) ns, max \(s.maxNanoseconds) ns")
    }

    @discardableResult
    private func publish(_ h: Histogram<UInt64>) -> LatencySnapshot {
        var buckets: [[UInt64]] = []
        for v in h.recordedValues() { buckets.append([v.value, UInt64(v.count)]) }
        let s = LatencySnapshot(name: vm, cpu: cpu, priority: priority, periodMicroseconds: Int(periodNanoseconds / 1000), samples: h.totalCount,
                                minNanoseconds: h.totalCount == 0 ? 0 : h.min, meanNanoseconds: h.mean,
                                p50Nanoseconds: h.valueAtPercentile(50), p99Nanoseconds: h.valueAtPercentile(99),
                                p9999Nanoseconds: h.valueAtPercentile(99.99), maxNanoseconds: h.max, buckets: buckets,
                                updatedAt: Date().timeIntervalSince1970)
        if let file { HostFiles.replace(file, with: s.encoded) }
        return s
    }

    static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}
