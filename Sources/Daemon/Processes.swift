import CDaemonSupport
import Foundation
import SystemPackage
import Posix
import VMMInterface

/// Process operations the supervisor needs, by pid. Spawning never goes through a shell: argv
/// is passed as an array to posix_spawn.
public enum Processes {
    public struct SpawnError: Error, CustomStringConvertible {
        public let errno: Errno
        public let path: String
        public var description: String { "cannot start \(path): \(errno)" }
    }

    /// Starts `argv[0]` with `argv` and `environment`, in a new session, stdin on /dev/null,
    /// stdout/stderr inherited (the daemon's journal stream).
    public static func spawn(_ argv: [String], environment: [String]) throws(SpawnError) -> pid_t {
        var pid: pid_t = 0
        let cArgv = argv.map { strdup($0) } + [nil]
        let cEnv = environment.map { strdup($0) } + [nil]
        defer { cArgv.forEach { free($0) }; cEnv.forEach { free($0) } }
        let r = cArgv.withUnsafeBufferPointer { a in
            cEnv.withUnsafeBufferPointer { e in
                cdaemon_spawn(&pid, argv[0], a.baseAddress, e.baseAddress, -1, -1)
            }
        }
        if r != 0 { throw SpawnError(errno: Errno(rawValue: r), path: argv[0]) }
        return pid
    }

    /// `spawn` with `passing[i]` as descriptor 3 + i in the child (rtvisord's API front: its
    /// listening socket, control socket and report pipe); stdout/stderr inherited.
    public static func spawn(_ argv: [String], environment: [String], passing fds: [Int32]) throws(SpawnError) -> pid_t {
        var pid: pid_t = 0
        let cArgv = argv.map { strdup($0) } + [nil]
        let cEnv = environment.map { strdup($0) } + [nil]
        defer { cArgv.forEach { free($0) }; cEnv.forEach { free($0) } }
        // Above every target (3 + i), so that no dup2 has itself as source.
        let high = fds.map { fcntl($0, F_DUPFD_CLOEXEC, 3 + Int32(fds.count)) }
        defer { high.forEach { if $0 >= 0 { close($0) } } }
        if let bad = high.firstIndex(where: { $0 < 0 }) { throw SpawnError(errno: Errno(rawValue: errno), path: "\(argv[0]) (descriptor \(fds[bad]))") }
        let r = cArgv.withUnsafeBufferPointer { a in
            cEnv.withUnsafeBufferPointer { e in
                high.withUnsafeBufferPointer { f in cdaemon_spawn_with_fds(&pid, argv[0], a.baseAddress, e.baseAddress, -1, -1, f.baseAddress, Int32(f.count)) }
            }
        }
        if r != 0 { throw SpawnError(errno: Errno(rawValue: r), path: argv[0]) }
        return pid
    }

    /// Blocking work (waitpid, a child's pipe) on its own thread, not a cooperative one.
    public static func offThePool<T: Sendable>(_ work: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { c in
            Thread { c.resume(returning: work()) }.start()
        }
    }

    /// Field 22 of /proc/PID/stat (start time in clock ticks since boot): with the pid it
    /// identifies a process across pid reuse.
    public static func startTime(of pid: pid_t) -> UInt64? {
        guard let s = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = s.lastIndex(of: ")") else { return nil }
        // After "pid (comm) ": state is field 3; start time is field 22.
        let fields = s[s.index(after: close)...].split(separator: " ")
        guard fields.count > 19 else { return nil }
        return UInt64(fields[19])
    }

    /// The process state letter (R, S, D, T = stopped, Z = zombie, …).
    public static func stateLetter(of pid: pid_t) -> Character? {
        guard let s = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = s.lastIndex(of: ")") else { return nil }
        return s[s.index(after: close)...].split(separator: " ").first?.first
    }

    /// rtvisor-vmm processes started with `definition` as their `--config` (their command line is
    /// the contract's `VMMLaunch`), found by reading /proc: a VMM is adopted even when the daemon
    /// that spawned it died before writing its state file.
    public static func vmms(running definition: String, procRoot: String = "/proc") -> [(pid: pid_t, launch: VMMLaunch)] {
        vmms(procRoot: procRoot).filter { $0.launch.definition == definition }
    }

    /// Every rtvisor-vmm process with a VM launch on its command line, by pid: one pass over /proc.
    public static func vmms(procRoot: String = "/proc") -> [(pid: pid_t, launch: VMMLaunch)] {
        HostFiles.list(procRoot).compactMap { entry -> (pid: pid_t, launch: VMMLaunch)? in
            guard let pid = pid_t(entry), let raw = HostFiles.read(procRoot + "/" + entry + "/cmdline") else { return nil }
            let argv = raw.split(separator: "\0", omittingEmptySubsequences: false).map(String.init).dropLast(raw.hasSuffix("\0") ? 1 : 0)
            guard let program = argv.first, program.hasSuffix("/rtvisor-vmm") || program == "rtvisor-vmm",
                  let launch = try? VMMLaunch.parse(Array(argv.dropFirst())) else { return nil }
            return (pid, launch)
        }.sorted { $0.pid < $1.pid }
    }

    public static func isAlive(_ pid: pid_t, startTime: UInt64) -> Bool {
        guard let t = Self.startTime(of: pid), t == startTime, let st = stateLetter(of: pid) else { return false }
        return st != "Z" && st != "X"
    }

    @discardableResult
    public static func signal(_ pid: pid_t, _ sig: Int32) -> Bool { kill(pid, sig) == 0 }

    /// Blocks until `pid` ends. Children are reaped and their status returned; for other
    /// processes (re-adopted after a daemon restart) the status is not available here.
    public static func waitForExit(pid: pid_t, isChild: Bool) -> ExitOutcome {
        let fd = cdaemon_pidfd_open(pid)
        if fd >= 0 {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            _ = try? retryInterrupted { poll(&p, 1, -1) }
            close(fd)
        } else if !isChild {
            // No pidfd (kernel < 5.3): poll for the pid.
            while kill(pid, 0) == 0 || errno == EPERM { usleep(200_000) }
        }
        guard isChild else { return .unknown }
        var status: Int32 = 0
        guard (try? retryInterrupted { waitpid(pid, &status, 0) }) != nil else { return .unknown }
        if status & 0x7f == 0 { return .exited((status >> 8) & 0xff) }
        return .signaled(status & 0x7f)
    }
}

/// The daemon's own cgroup (v2) and one child cgroup per VM under it, which `Delegate=yes`
/// allows. Best effort: without a writable cgroup the VMM stays in the daemon's cgroup.
public struct CgroupPlacement: Sendable {
    public let base: String?

    public init(procSelfCgroup: String? = try? String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8),
                mountPoint: String = "/sys/fs/cgroup") {
        guard let text = procSelfCgroup,
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("0::") }) else { base = nil; return }
        let path = String(line.dropFirst(3))
        let dir = mountPoint + (path == "/" ? "" : path)
        base = access(dir + "/cgroup.procs", W_OK) == 0 ? dir : nil
    }

    /// The systemd unit this process runs in (the last `*.service` component of its cgroup).
    public static func unitName(procSelfCgroup: String? = try? String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8)) -> String? {
        guard let text = procSelfCgroup,
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("0::") }) ?? text.split(separator: "\n").first(where: { $0.contains("name=systemd:") })
        else { return nil }
        return line.split(separator: "/").last(where: { $0.hasSuffix(".service") }).map(String.init)
    }

    /// Creates `<base>/vm-NAME` for a VMM to join (`rtvisor-vmm --cgroup`, before it starts
    /// any thread); nil when there is no writable cgroup.
    public func prepare(vm name: String) -> String? {
        guard let base else { return nil }
        let dir = base + "/vm-" + name
        if mkdir(dir, 0o755) != 0 && errno != EEXIST { return nil }
        return dir
    }

    /// Moves `pid` into `<base>/vm-NAME`; returns the cgroup directory, or nil.
    public func place(pid: pid_t, vm name: String) -> String? {
        guard let dir = prepare(vm: name) else { return nil }
        do {
            try "\(pid)\n".write(toFile: dir + "/cgroup.procs", atomically: false, encoding: .utf8)
            return dir
        } catch {
            return nil
        }
    }

    /// Removes an empty VM cgroup (fails harmlessly while processes remain).
    public func remove(vm name: String) {
        guard let base else { return }
        rmdir(base + "/vm-" + name)
    }
}
