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
        let r = retryingTextFileBusy { withCStrings(argv, environment) { a, e in cdaemon_spawn(&pid, argv[0], a, e, -1, -1) } }
        if r != 0 { throw SpawnError(errno: Errno(rawValue: r), path: argv[0]) }
        return pid
    }

    /// `argv` and `environment` as the NULL-terminated C string arrays exec takes, for `body`.
    static func withCStrings<R>(_ argv: [String], _ environment: [String],
                                _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>?, UnsafePointer<UnsafeMutablePointer<CChar>?>?) -> R) -> R {
        let cArgv = argv.map { strdup($0) } + [nil]
        let cEnv = environment.map { strdup($0) } + [nil]
        defer { cArgv.forEach { free($0) }; cEnv.forEach { free($0) } }
        return cArgv.withUnsafeBufferPointer { a in cEnv.withUnsafeBufferPointer { e in body(a.baseAddress, e.baseAddress) } }
    }

    /// `spawn` with `passing[i]` as descriptor 3 + i in the child (rtvisord's API front: its
    /// listening socket, control socket and report pipe); stdout/stderr inherited.
    public static func spawn(_ argv: [String], environment: [String], passing fds: [Int32]) throws(SpawnError) -> pid_t {
        var pid: pid_t = 0
        // Above every target (3 + i), so that no dup2 has itself as source.
        let high = fds.map { fcntl($0, F_DUPFD_CLOEXEC, 3 + Int32(fds.count)) }
        defer { high.forEach { if $0 >= 0 { close($0) } } }
        if let bad = high.firstIndex(where: { $0 < 0 }) { throw SpawnError(errno: Errno(rawValue: errno), path: "\(argv[0]) (descriptor \(fds[bad]))") }
        let r = retryingTextFileBusy {
            withCStrings(argv, environment) { a, e in
                high.withUnsafeBufferPointer { f in cdaemon_spawn_with_fds(&pid, argv[0], a, e, -1, -1, f.baseAddress, Int32(f.count)) }
            }
        }
        if r != 0 { throw SpawnError(errno: Errno(rawValue: r), path: argv[0]) }
        return pid
    }

    /// Runs a spawn (0 or an errno) again while the executable is still open for writing
    /// somewhere (ETXTBSY): a binary being replaced (an install), or a file written by this
    /// process a moment ago whose descriptor a concurrent fork still holds. Up to about 1 s.
    static func retryingTextFileBusy(_ spawn: () -> Int32) -> Int32 {
        var r = spawn()
        var tries = 0
        while r == ETXTBSY && tries < 50 {
            var pause = timespec(tv_sec: 0, tv_nsec: 20_000_000)
            nanosleep(&pause, nil)
            r = spawn()
            tries += 1
        }
        return r
    }

    /// Starts a VMM in its VM cgroup (v2) from the start, with `CLONE_INTO_CGROUP`: joining it
    /// afterwards waits for an RCU grace period under the kernel's global cgroup lock (10–30 ms
    /// on a nested host). Where the kernel cannot (no clone3, not a v2 directory), it starts the
    /// VMM normally and `arguments(true)` asks it to join the cgroup itself (`--cgroup`).
    /// `passing[i]` becomes descriptor 3 + i in the VMM (an incoming migration's stream).
    public static func spawnVMM(executable: String, environment: [String], cgroup: String?, passing fds: [Int32] = [],
                                arguments: (_ joinItself: Bool) -> [String]) throws(SpawnError) -> pid_t {
        // Above every target (3 + i), so that no dup2 in the child has itself as source.
        let high = fds.map { fcntl($0, F_DUPFD_CLOEXEC, 3 + Int32(fds.count)) }
        defer { high.forEach { if $0 >= 0 { close($0) } } }
        if let bad = high.firstIndex(where: { $0 < 0 }) { throw SpawnError(errno: Errno(rawValue: errno), path: "\(executable) (descriptor \(fds[bad]))") }
        if let cgroup {
            let dirFD = open(cgroup, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            if dirFD >= 0 {
                defer { close(dirFD) }
                var pid: pid_t = 0
                let r = retryingTextFileBusy {
                    withCStrings([executable] + arguments(false), environment) { a, e in
                        high.withUnsafeBufferPointer { f in
                            cdaemon_spawn_into_cgroup_with_fds(&pid, executable, a, e, dirFD, f.baseAddress, Int32(f.count))
                        }
                    }
                }
                if r == 0 { return pid }
                // > 0: the exec failed (the same error a normal spawn would give); < 0: clone3 did.
                if r > 0 { throw SpawnError(errno: Errno(rawValue: r), path: executable) }
            }
        }
        if !high.isEmpty { return try spawn([executable] + arguments(cgroup != nil), environment: environment, passing: high) }
        return try spawn([executable] + arguments(cgroup != nil), environment: environment)
    }

    /// Blocking work (waitpid, a child's pipe) on its own thread, not a cooperative one.
    public static func offThePool<T: Sendable>(_ work: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { c in
            Thread { c.resume(returning: work()) }.start()
        }
    }

    /// Field 22 of /proc/PID/stat (start time in clock ticks since boot): with the pid it
    /// identifies a process across pid reuse.
    public static func startTime(of pid: pid_t) -> UInt64? { ProcessIdentity.of(pid)?.startTime }

    /// The process state letter (R, S, D, T = stopped, Z = zombie, …).
    public static func stateLetter(of pid: pid_t) -> Character? { ProcessIdentity.stateLetter(of: pid) }

    /// rtvisor-vmm processes started with `definition` as their `--config` (their command line is
    /// the contract's `VMMLaunch`), found by reading /proc: a VMM is adopted even when the daemon
    /// that spawned it died before writing its state file.
    public static func vmms(running definition: String, procRoot: String = "/proc") -> [(pid: pid_t, launch: VMMLaunch)] {
        vmms(procRoot: procRoot).filter { $0.launch.definition == definition }
    }

    /// Every rtvisor-vmm process with a VM launch on its command line, by pid: one pass over /proc.
    public static func vmms(procRoot: String = "/proc") -> [(pid: pid_t, launch: VMMLaunch)] {
        HostFiles.list(procRoot).compactMap { entry -> (pid: pid_t, launch: VMMLaunch)? in
            guard let pid = pid_t(entry), let launch = launch(of: pid, procRoot: procRoot) else { return nil }
            return (pid, launch)
        }.sorted { $0.pid < $1.pid }
    }

    /// How rtvisor-vmm `pid` was started (its command line), or nil for another program.
    public static func launch(of pid: pid_t, procRoot: String = "/proc") -> VMMLaunch? {
        guard let raw = HostFiles.read("\(procRoot)/\(pid)/cmdline") else { return nil }
        let argv = raw.split(separator: "\0", omittingEmptySubsequences: false).map(String.init).dropLast(raw.hasSuffix("\0") ? 1 : 0)
        guard let program = argv.first, program.hasSuffix("/rtvisor-vmm") || program == "rtvisor-vmm" else { return nil }
        return try? VMMLaunch.parse(Array(argv.dropFirst()))
    }

    public static func isAlive(_ pid: pid_t, startTime: UInt64) -> Bool {
        guard let t = Self.startTime(of: pid), t == startTime, let st = stateLetter(of: pid) else { return false }
        return st != "Z" && st != "X"
    }

    @discardableResult
    public static func signal(_ pid: pid_t, _ sig: Int32) -> Bool { kill(pid, sig) == 0 }

    /// Blocks until `pid` ends. Children are reaped and their status returned; for other
    /// processes (re-adopted after a daemon restart) the status is not available here.
    /// `notices`: the VMM's notice socket (closed here), each message handed to `onNotice` while
    /// the process runs.
    public static func waitForExit(pid: pid_t, isChild: Bool, notices: Int32? = nil,
                                   onNotice: (VMMNotice) -> Void = { _ in }) -> ExitOutcome {
        let fd = cdaemon_pidfd_open(pid)
        var noticeFD = notices ?? -1
        defer { if noticeFD >= 0 { close(noticeFD) } }
        if fd >= 0 {
            // A VMM that closed its end (or a message that cannot be read) leaves the pidfd alone.
            while true {
                var p = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: noticeFD, events: Int16(POLLIN), revents: 0)]
                _ = try? retryInterrupted { poll(&p, noticeFD >= 0 ? 2 : 1, -1) }
                if p[0].revents != 0 {
                    // What it said last (a partition released as it stopped) comes before its end.
                    while noticeFD >= 0, let message = receiveNotice(noticeFD), !message.isEmpty {
                        if let notice = VMMNotice(decoding: message) { onNotice(notice) }
                    }
                    break
                }
                guard noticeFD >= 0, p[1].revents != 0 else { continue }
                if let message = receiveNotice(noticeFD) {
                    if let notice = VMMNotice(decoding: message) { onNotice(notice) }
                } else {
                    close(noticeFD)
                    noticeFD = -1
                }
            }
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

    /// One message of a notice socket (empty: none after all); nil when the VMM closed its end or the read failed.
    static func receiveNotice(_ fd: Int32) -> [UInt8]? {
        var buffer = [UInt8](repeating: 0, count: VMMNotice.maximumSize)
        do {
            let n = try retryInterrupted { buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) } }
            return n > 0 ? Array(buffer[0..<n]) : nil
        } catch {
            // Woken without a message after all: nothing to read yet, the socket stays.
            return error == .resourceTemporarilyUnavailable ? [] : nil
        }
    }
}
