import APIModels
import Foundation
import Journald
import VMMInterface

/// A VMM's notices (`VMMNotice`, on the socket pair `spawnVMM` made): lifecycle events the
/// daemon cannot see from outside the VMM, the moment they happen.
extension Supervisor {
    func vmmNoticed(_ notice: VMMNotice, name: String, pid: pid_t) {
        // A notice that arrives after its VMM was replaced speaks of a process that is gone.
        guard records[name]?.pid == pid else { return }
        switch notice {
        case .guestStarted:
            guestStartedAt[pid] = Date().timeIntervalSince1970
        case let .guestReady(ms):
            guestReadyAt[pid] = Date().timeIntervalSince1970
            event(.vmGuestReady, .notice, "VM \(name): the guest is up (boot marker \(String(format: "%.1f", ms)) ms after VM creation)",
                  vm: name, pid: pid, state: records[name]?.state, extra: ["VM_GUEST_READY_MS": String(format: "%.3f", ms)])
        case let .realtimeApplied(cpus, priority, summary):
            event(.vmRealtimeApplied, .notice, "VM \(name): real-time partition applied: CPUs \(cpus.map(String.init).joined(separator: ",")), SCHED_FIFO \(priority); \(summary)",
                  vm: name, pid: pid, state: records[name]?.state,
                  extra: ["VM_REALTIME_CPUS": cpus.map(String.init).joined(separator: ","), "VM_REALTIME_PRIORITY": String(priority)])
        case let .realtimeReleased(how):
            event(.vmRealtimeReleased, .notice, "VM \(name): real-time partition released \(how)", vm: name, pid: pid, state: records[name]?.state)
        }
    }
}

/// The socket pair of one VMM's notices: SOCK_SEQPACKET (a message per notice), close-on-exec
/// on both ends (the spawn dups the VMM's end to its place).
struct NoticeSocketPair {
    let daemonEnd: Int32
    let vmmEnd: Int32

    /// nil when no socket pair can be made (out of descriptors): the VM runs without notices.
    init?() {
        var fds: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else { return nil }
        daemonEnd = fds[0]; vmmEnd = fds[1]
    }

    func closeBoth() { close(daemonEnd); close(vmmEnd) }

    /// After the spawn: the VMM has its copy; ours of its end goes.
    func keepDaemonEnd() -> Int32 { close(vmmEnd); return daemonEnd }
}
