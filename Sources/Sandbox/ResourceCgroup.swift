import Posix
#if canImport(Glibc)
import Glibc
#endif

/// A VM's memory and task limits in the kernel's cgroups (docs/sandbox.md), applied by the VMM to
/// itself while still root and single-threaded, before guest RAM is touched, so every page the
/// VM uses is charged to it.
/// - cgroup v1: `<memory>/rtvisor/NAME` (memory.limit_in_bytes) and `<pids>/rtvisor/NAME` (pids.max).
/// - cgroup v2: the VMM's own cgroup (rtvisord's `vm-NAME`), where memory.max and pids.max exist
///   only if the parent delegates those controllers.
public struct ResourceCgroup: Sendable {
    public var root: String
    public var procSelfCgroup: String?
    /// How many threads this process has (`/proc/self/task`); injectable for tests.
    public var threadCount: @Sendable () -> Int
    public init(root: String = "/sys/fs/cgroup", procSelfCgroup: String? = ResourceCgroup.read("/proc/self/cgroup"),
                threadCount: @escaping @Sendable () -> Int = { HostFiles.list("/proc/self/task").count }) {
        self.root = root; self.procSelfCgroup = procSelfCgroup; self.threadCount = threadCount
    }

    /// Applies the limits to `pid`; returns what was done or why not, for the log.
    public func apply(vm: String, memoryBytes: UInt64, tasks: Int, pid: Int32 = getpid()) -> [String] {
        var done: [String] = []
        let isV1 = access(root + "/memory/memory.limit_in_bytes", F_OK) == 0 || access(root + "/pids/cgroup.procs", F_OK) == 0
        if isV1 {
            let join = Self.v1Join(pid: pid, threads: pid == getpid() ? threadCount() : 0)
            for (controller, file, value) in [("memory", "memory.limit_in_bytes", "\(memoryBytes)"), ("pids", "pids.max", "\(tasks)")] {
                let base = "\(root)/\(controller)"
                guard access(base + "/cgroup.procs", F_OK) == 0 else { done.append("\(controller): controller not mounted"); continue }
                let dir = "\(base)/rtvisor/\(vm)"
                mkdir("\(base)/rtvisor", 0o755)
                mkdir(dir, 0o755)
                if let e = Self.write("\(dir)/\(file)", value) { done.append("\(controller): \(dir)/\(file): \(e)"); continue }
                if let e = Self.write("\(dir)/\(join.file)", join.value) { done.append("\(controller): joining \(dir): \(e)"); continue }
                done.append("\(dir) \(file)=\(value)")
            }
            return done
        }
        guard let line = (procSelfCgroup ?? "").split(separator: "\n").first(where: { $0.hasPrefix("0::") }) else {
            return ["no cgroup hierarchy found: no memory or task limit"]
        }
        let path = String(line.dropFirst(3))
        let dir = root + (path == "/" ? "" : path)
        let controllers = (Self.read(dir + "/cgroup.controllers") ?? "").split(whereSeparator: { $0 == " " || $0 == "\n" })
        for (controller, file, value) in [("memory", "memory.max", "\(memoryBytes)"), ("pids", "pids.max", "\(tasks)")] {
            guard controllers.contains(Substring(controller)) else {
                done.append("\(controller): not delegated to \(dir) (cgroup v2 needs the parent to enable it; under systemd ≥ 254 DelegateSubgroup= does)")
                continue
            }
            if let e = Self.write("\(dir)/\(file)", value) { done.append("\(controller): \(dir)/\(file): \(e)") } else { done.append("\(dir) \(file)=\(value)") }
        }
        return done
    }

    /// How a process joins a v1 cgroup. Writing a pid to `cgroup.procs` moves the whole thread
    /// group under the kernel's global `cgroup_threadgroup_rwsem`, whose write side waits for an
    /// RCU grace period: 10–30 ms per hierarchy on a nested host, most of a VMM's start-up. A
    /// single-threaded process moving itself writes "0" (itself) to `tasks` instead, which the
    /// kernel migrates without that lock (measured on this 6.18 host: 0.07 ms instead of 15–30); with one thread it is the same move, and the
    /// threads it starts later inherit the cgroup.
    static func v1Join(pid: pid_t, threads: Int) -> (file: String, value: String) {
        threads == 1 ? ("tasks", "0") : ("cgroup.procs", "\(pid)")
    }

    static func write(_ path: String, _ value: String) -> String? {
        do { try HostFiles.write(path, value); return nil } catch { return errnoMessage(error.errno) }
    }

    public static func read(_ path: String) -> String? { HostFiles.read(path) }
}
