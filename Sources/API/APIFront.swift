import Daemon
import Foundation
import Logging
import Posix
import Sandbox
import SandboxMode
import Synchronization
import VMMInterface
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// rtvisord's API front (docs/sandbox.md): a second rtvisord process (`--api-front`) that does
/// everything a client's bytes reach: HTTP parsing, SO_PEERCRED checks, routing, the query string
/// and the JSON bodies. It runs jailed as its own uid, with no capabilities, and every one of its
/// threads under the `api` seccomp filter. It reaches the VMs only through `ControlCall`s to
/// rtvisord over a socketpair; rtvisord restarts it when it dies, and logs a seccomp kill's syscall.
public enum APIFront {
    /// Descriptors rtvisord passes: the bound listening socket, the control socket, the report
    /// pipe, then the read-only metrics listeners from `firstMetricsFD` on (metrics.sock and,
    /// when rtvisord.json enables it, the TCP listener: bound by rtvisord, so the front's filter
    /// needs no `socket`/`bind` for AF_INET).
    public static let listenFD: Int32 = 3, controlFD: Int32 = 4, reportFD: Int32 = 5
    public static let firstMetricsFD: Int32 = 6
    /// The option that tells the front how many metrics listeners it got.
    public static let metricsListenersOption = "--api-front-metrics-listeners"
    /// The front's uid and gid: just below the VMs' range (`JailPlan.uidBase`).
    public static let uid: UInt32 = JailPlan.uidBase - 1
    /// Its jail's mount point; no VM name starts with a dot.
    public static let jailRoot = JailLocation.apiFrontRoot
    public static let program = "rtvisord-api"
    /// The request target that runs the seccomp test hook (test builds only, and only with
    /// RTVISOR_TEST_FORBIDDEN_SYSCALL=api).
    public static let testHookTarget = "/v1/test/forbidden-syscall"

    /// `--api-front-access UID:GID` (GID `-`: no access group on this host).
    public static func access(argument: String) -> PeerAccess? {
        let parts = argument.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, let u = uid_t(parts[0]) else { return nil }
        if parts[1] == "-" { return PeerAccess(daemonUID: u, groupID: nil) }
        guard let g = gid_t(parts[1]) else { return nil }
        return PeerAccess(daemonUID: u, groupID: g)
    }

    public static func accessArgument(_ access: PeerAccess) -> String {
        "\(access.daemonUID):\(access.groupID.map(String.init) ?? "-")"
    }

    /// The descriptors rtvisord passed.
    public static func passedDescriptors(metricsListeners: Int) -> [Int32] {
        [listenFD, controlFD, reportFD] + metricsDescriptors(metricsListeners)
    }

    static func metricsDescriptors(_ count: Int) -> [Int32] { (0..<Int32(count)).map { firstMetricsFD + $0 } }

    /// Closes every descriptor above those rtvisord passed (anything else inherited by
    /// accident). Called first thing in the front, before anything opens its own.
    public static func closeInheritedDescriptors(metricsListeners: Int) {
        let last = passedDescriptors(metricsListeners: metricsListeners).max()!
        for entry in HostFiles.list("/proc/self/fd") {
            if let fd = Int32(entry), fd > last { close(fd) }
        }
    }

    /// In the front process, while it has one thread: the jail (when started as root) and the
    /// seccomp filter every later thread inherits.
    public static func confine(seccomp: SeccompMode, metricsListeners: Int, logger: Logger) throws {
        // The first candidate for the OOM killer (it is restartable; a VMM holds guest RAM).
        try? HostFiles.write("/proc/self/oom_score_adj", "1000")
        for fd in passedDescriptors(metricsListeners: metricsListeners) {
            guard fcntl(fd, F_SETFD, FD_CLOEXEC) == 0 else { throw SandboxError("descriptor \(fd) from rtvisord: \(errnoMessage())") }
        }
        if geteuid() == 0 {
            let plan = JailPlan(root: jailRoot,
                                visible: [JailPlan.Path("/proc"), JailPlan.Path("/run/systemd/journal", writable: true)],
                                owned: [], uid: uid, gid: uid,
                                limits: [(Int32(RLIMIT_NOFILE.rawValue), "RLIMIT_NOFILE", 1024),
                                         // Shared by every front on the host (one uid): event loop, workers, control reader.
                                         (Int32(__RLIMIT_NPROC.rawValue), "RLIMIT_NPROC", 256),
                                         (Int32(RLIMIT_CORE.rawValue), "RLIMIT_CORE", 0)])
            try Jail.enter(plan)
        } else {
            logger.notice("API front runs as uid \(geteuid()) (rtvisord is not root): no jail, seccomp filter only")
        }
        try Sandbox.confineProcess(.api, program: program, subject: "rtvisord's API front", reportFD: reportFD, mode: seccomp)
    }

    /// Serves the inherited listening sockets (api.sock; metrics.sock and the metrics TCP
    /// listener read-only) until rtvisord closes the control socket.
    public static func serve(access: PeerAccess, metricsListeners: Int, logger: Logger) async -> Never {
        let control = RemoteVMControl(fd: FileDescriptor(rawValue: controlFD)) { reason in
            logger.debug("API front exits: \(reason)")
            _exit(0)
        }
        let router = APIRouter(control: control)
        let api = HTTPServer(router: router, logger: logger)
        let token = ProcessInfo.processInfo.environment[DashboardActions.environmentVariable]
        unsetenv(DashboardActions.environmentVariable)
        let console = ProcessInfo.processInfo.environment[DashboardActions.consoleEnvironmentVariable] == "1"
        let metrics = HTTPServer(router: MetricsRouter(api: router, actionsToken: token, console: console), logger: logger)
        await withTaskGroup(of: Void.self) { tasks in
            tasks.addTask {
                do {
                    try await api.run(listeningSocket: listenFD, access: access) { request in
                        if request.target == testHookTarget { Sandbox.testHook(.api, label: "api-request") }
                    }
                    logger.error("API front: the listening socket closed")
                } catch {
                    logger.error("API front: serving the API socket failed: \(error)")
                }
            }
            for fd in metricsDescriptors(metricsListeners) {
                tasks.addTask {
                    do { try await metrics.run(listeningSocket: fd, access: access, everyoneAllowed: true) } catch {
                        logger.error("API front: serving the metrics listener (descriptor \(fd)) failed: \(error)")
                    }
                }
            }
            // Any listener gone: the front ends, and rtvisord starts a new one with all of them.
            await tasks.next()
        }
        _exit(1)
    }
}

/// rtvisord's side: starts the front, answers its calls, and starts it again when it dies (a
/// seccomp kill is logged with the syscall). `run` returns when cancelled, the front stopped.
public final class APIFrontSupervisor: Sendable {
    let listeningSocket: Int32
    /// metrics.sock's listening socket and the metrics TCP listener's, those that are bound.
    let metricsSockets: [Int32]
    /// Added to the front's environment: the dashboard actions' token (`DashboardActions`).
    let frontEnvironment: [String: String]
    let access: PeerAccess
    let control: any VMControl
    let logger: Logger
    let arguments: [String]

    /// `arguments`: rtvisord's own options for the front (log level, seccomp mode).
    public init(listeningSocket: Int32, metricsSockets: [Int32], frontEnvironment: [String: String] = [:], access: PeerAccess,
                control: any VMControl, logger: Logger, arguments: [String]) {
        self.listeningSocket = listeningSocket; self.metricsSockets = metricsSockets; self.frontEnvironment = frontEnvironment
        self.access = access; self.control = control; self.logger = logger
        self.arguments = arguments
    }

    struct Running: Sendable { var pid: pid_t?; var stopping = false }
    let running = Mutex(Running())

    /// How one front ended.
    public struct Ending: Sendable, Equatable {
        public var pid: pid_t
        public var outcome: ExitOutcome
        /// The SIGSYS report from the report pipe ("seccomp: thread … made forbidden syscall …").
        public var report: String?
        public var syscall: String? { report.flatMap { VMMExitReport.seccompSyscall(in: $0) } }
    }

    public func run() async {
        var delay = 0.2
        while !Task.isCancelled {
            let started = ContinuousClock.now
            guard let ending = await withTaskCancellationHandler(operation: { await runOnce() }, onCancel: { stop() }) else {
                // Not started: retried, as a crash would be.
                try? await Task.sleep(for: .seconds(delay))
                delay = min(delay * 2, 5)
                continue
            }
            if running.withLock({ $0.stopping }) { return }
            var md: Logger.Metadata = ["RTVISOR_EVENT": "api-front-ended", "API_FRONT_PID": "\(ending.pid)"]
            if let s = ending.syscall {
                md["API_SECCOMP_SYSCALL"] = .string(s)
                logger.critical("API front process \(ending.pid) killed by its seccomp filter (SIGSYS): \(ending.report ?? ""); starting a new one", metadata: md)
            } else {
                logger.error("API front process \(ending.pid) ended (\(ending.outcome)); starting a new one", metadata: md)
            }
            // A front that dies at once is not restarted in a tight loop.
            delay = ContinuousClock.now - started < .seconds(10) ? min(delay * 2, 5) : 0.2
            try? await Task.sleep(for: .seconds(delay))
        }
    }

    func stop() {
        let pid: pid_t? = running.withLock { $0.stopping = true; return $0.pid }
        // It keeps no state worth a goodbye.
        if let pid { kill(pid, SIGKILL) }
    }

    /// One front's life; nil if it could not be started (logged).
    func runOnce() async -> Ending? {
        var pair: [Int32] = [-1, -1]
        var report: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            logger.error("API front: socketpair: \(errnoMessage())")
            return nil
        }
        // The report "pipe": a socketpair, created close-on-exec in one step (a VMM spawned
        // meanwhile must not inherit its write end, or the read below would never see the end).
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &report) == 0 else {
            logger.error("API front: socketpair: \(errnoMessage())")
            close(pair[0]); close(pair[1])
            return nil
        }
        // A stuck front must not block the daemon's replies for long.
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(pair[0], SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let argv = ["/proc/self/exe", "--api-front", "--api-front-access", APIFront.accessArgument(access)]
            + [APIFront.metricsListenersOption, String(metricsSockets.count)] + arguments
        var env = ProcessInfo.processInfo.environment.filter { !["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID"].contains($0.key) }
        // A Swift trap would spawn swift-backtrace (a clone the filter forbids) and be reported
        // as a seccomp kill; the trap's own message is the better report.
        env["SWIFT_BACKTRACE"] = "enable=no"
        env.merge(frontEnvironment) { $1 }
        let environment = env.map { "\($0.key)=\($0.value)" }
        let spawned: Result<pid_t, Processes.SpawnError>? = running.withLock { r in
            guard !r.stopping else { return nil }
            let result = Result { () throws(Processes.SpawnError) -> pid_t in
                try Processes.spawn(argv, environment: environment, passing: [listeningSocket, pair[1], report[1]] + metricsSockets)
            }
            if case let .success(pid) = result { r.pid = pid }
            return result
        }
        guard case let .success(pid) = spawned else {
            if case let .failure(error) = spawned { logger.error("API front: \(error)") }
            for fd in pair + report { close(fd) }
            return nil
        }
        close(pair[1]); close(report[1])
        logger.debug("API front process \(pid) started")
        let channel = FileDescriptor(rawValue: pair[0])
        let served = Task { [self] in
            let reason = await ControlServer.serve(channel, control: control)
            // A front whose channel ended (a malformed frame, a stalled reader) is replaced.
            running.withLock { if $0.pid == pid { kill(pid, SIGKILL) } }
            logger.debug("API front process \(pid): \(reason)")
        }
        let outcome = await Processes.offThePool { [self] () -> ExitOutcome in
            // Ended but not yet reaped (WNOWAIT): the pid is forgotten before it can be reused.
            var info = siginfo_t()
            _ = try? retryInterrupted { waitid(P_PID, id_t(pid), &info, WEXITED | WNOWAIT) }
            running.withLock { $0.pid = nil }
            return Processes.waitForExit(pid: pid, isChild: true)
        }
        // Its end of the socket is closed now; the reader sees the end (or is told to stop).
        _ = shutdown(pair[0], Int32(SHUT_RDWR))
        await served.value
        close(pair[0])
        let text = Self.readReport(report[0])
        close(report[0])
        // The report file format: "159 seccomp: …" (128 + SIGSYS, then the reason).
        let reason = text.split(separator: "\n").first.map { line -> String in
            let s = String(line)
            guard let space = s.firstIndex(of: " ") else { return s }
            return String(s[s.index(after: space)...])
        }
        return Ending(pid: pid, outcome: outcome, report: reason)
    }

    /// The report, up to 4 KiB (it is one line; a subverted front gets no more of the log).
    /// Non-blocking: the front is dead, so what its SIGSYS handler wrote is queued already; a
    /// copy of the write end it passed on (SCM_RIGHTS) must not make the daemon wait.
    static func readReport(_ fd: Int32) -> String {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 1024)
        while out.count < 4096,
              let n = try? retryInterrupted({ buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) } }),
              n > 0 {
            out += buf[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }
}
