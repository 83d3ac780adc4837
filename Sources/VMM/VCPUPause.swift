import KVM
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Stops every vCPU outside KVM_RUN and holds it there (snapshot, `VMMControl.pause`).
///
/// A vCPU parks only after a KVM_RUN that returned because of the kick (`immediate_exit`): KVM
/// completes an exit's pending I/O (a port read's value, an MMIO read) on the next KVM_RUN, so
/// only then is the state KVM reports the guest's whole state (KVM API, "immediate_exit").
/// Parked threads and the waiter poll: a pause is rare and short, and this needs no condition
/// variable that a stop would also have to reach.
final class VCPUPause: Sendable {
    private struct State {
        var requested = false
        var parked = 0
    }
    private let state = Mutex(State())

    var isRequested: Bool { state.withLock { $0.requested } }

    /// Requests the pause and returns once all `vcpus` are parked or `abandon()` says to give up
    /// (the VM is stopping: its vCPU threads are gone or going). Kicks again every 100 µs:
    /// a kick that lands between two KVM_RUNs is otherwise lost on a halted vCPU.
    /// Polls every 20 µs: the pause is part of a migration's downtime, and a kicked vCPU parks
    /// within tens of microseconds.
    func pause(_ vcpus: [VCPU], abandon: () -> Bool) -> Bool {
        state.withLock { $0.requested = true }
        var polls = 0
        while state.withLock({ $0.parked }) < vcpus.count {
            if abandon() { return false }
            if polls % 5 == 0 { for v in vcpus { v.kick() } }
            polls += 1
            var pause = timespec(tv_sec: 0, tv_nsec: 20_000)
            nanosleep(&pause, nil)
        }
        return true
    }

    func resume() { state.withLock { $0.requested = false } }

    /// Called by a vCPU thread after a kicked KVM_RUN: holds it while a pause is requested, unless
    /// `stopping` becomes true.
    func parkIfRequested(stopping: () -> Bool) {
        guard isRequested else { return }
        state.withLock { $0.parked += 1 }
        defer { state.withLock { $0.parked -= 1 } }
        var pause = timespec(tv_sec: 0, tv_nsec: 200_000)
        while isRequested && !stopping() { nanosleep(&pause, nil) }
    }
}
