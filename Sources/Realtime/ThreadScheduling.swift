import CLinux
import Posix
#if canImport(Glibc)
import Glibc
#endif

/// A scheduling call that failed: what was asked, and errno.
public struct SchedulingError: Error, Equatable, CustomStringConvertible {
    public let operation: String
    public let errno: Int32
    public var description: String {
        var s = "\(operation): \(errnoMessage(errno))"
        if errno == EPERM { s += " (needs root or CAP_SYS_NICE / CAP_IPC_LOCK)" }
        return s
    }
}

/// Affinity, policy and memory locking of threads (tid 0 = the calling thread).
public enum ThreadScheduling {
    public static var currentTID: Int32 { clinux_gettid() }

    public static func setAffinity(_ cpus: [Int], tid: Int32 = 0) throws(SchedulingError) {
        let ints = cpus.map { Int32($0) }
        guard clinux_set_affinity(tid, ints, Int32(ints.count)) == 0 else {
            throw SchedulingError(operation: "sched_setaffinity(\(tid == 0 ? "self" : String(tid)), CPUs \(CPUList.format(cpus)))", errno: errno)
        }
    }

    public static func affinity(tid: Int32 = 0) -> [Int]? {
        var buf = [Int32](repeating: 0, count: 1024)
        let n = clinux_get_affinity(tid, &buf, Int32(buf.count))
        return n < 0 ? nil : buf[0..<Int(n)].map { Int($0) }
    }

    public static func setFIFO(priority: Int, tid: Int32 = 0) throws(SchedulingError) {
        guard clinux_set_fifo(tid, Int32(priority)) == 0 else {
            throw SchedulingError(operation: "sched_setscheduler(SCHED_FIFO, priority \(priority))", errno: errno)
        }
    }

    /// (policy, priority): SCHED_OTHER is 0, SCHED_FIFO 1.
    public static func scheduler(tid: Int32 = 0) -> (policy: Int32, priority: Int32)? {
        var policy: Int32 = 0, prio: Int32 = 0
        return clinux_get_scheduler(tid, &policy, &prio) == 0 ? (policy, prio) : nil
    }

    /// Locks every current and future page of the process (stacks, heap, libraries).
    public static func lockAllMemory() throws(SchedulingError) {
        guard clinux_lock_all_memory() == 0 else { throw SchedulingError(operation: "mlockall(MCL_CURRENT|MCL_FUTURE)", errno: errno) }
    }

    /// The thread IDs of process `pid` (/proc/PID/task).
    public static func threads(of pid: Int32, proc: String = "/proc") -> [Int32] {
        HostFiles.list("\(proc)/\(pid)/task").compactMap { Int32($0) }
    }
}
