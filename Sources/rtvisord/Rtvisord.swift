import API
import APIModels
import ArgumentParser
import Config
import Daemon
import Dispatch
import Foundation
import Journald
import Logging
import SandboxMode
import SystemdNotify
import VMMInterface
import Glibc

@main
struct Rtvisord: ParsableCommand {
    /// One version for every binary (`RtvisorRelease`).
    static let version = RtvisorRelease.version
    static let configuration = CommandConfiguration(
        commandName: "rtvisord",
        abstract: "The rtvisor daemon: runs the VMs defined in /etc/rtvisor/vms, one rtvisor-vmm process each.",
        discussion: """
        Signals: SIGHUP re-reads the definitions (new VMs added, removed ones stopped, changed ones
        pending until restarted); SIGTERM exits and leaves the guests running (the next rtvisord
        re-adopts them; `rtvisorctl shutdown-guests`, which rtvisor-guests.service runs at host
        shutdown, stops them first); SIGINT (Ctrl-C in the foreground) stops every guest gracefully
        and exits. Control API: HTTP/JSON on --api-socket (docs/api.yaml). See docs/daemon.md.
        """,
        version: version)

    @Option(help: "Directory of VM definitions (*.json).")
    var definitions = APIPaths.defaultDefinitions

    @Option(help: "Runtime state directory (per-VM state files, console sockets).")
    var runDirectory = APIPaths.defaultRunDirectory

    @Option(help: "Persistent state: snapshots (STATE-DIRECTORY/snapshots) and clones' disks (STATE-DIRECTORY/clones).")
    var stateDirectory = APIPaths.defaultStateDirectory

    @Option(help: "Control API socket (default: RUN-DIRECTORY/api.sock).")
    var apiSocket: String?

    @Option(help: "Group given access to the API socket (mode 0660).")
    var apiGroup = "rtvisor"

    @Option(help: "The rtvisor-vmm executable (default: next to rtvisord).")
    var vmm: String?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel = "info"

    @Flag(help: "Validate every definition and the settings file, print the problems and exit (status 1 if any).")
    var check = false

    @Option(help: "rtvisord's own settings (JSON: the metrics TCP listener, the dashboard's actions group; docs/metrics.md). No file: the defaults.")
    var settings = RtvisordSettings.defaultPath

    @Option(help: "Seccomp filter of the API front process: enforce, log (audit only: for finding a missing entry) or off.")
    var apiSeccomp: SeccompMode = .enforce

    /// The API front process (docs/sandbox.md), started by rtvisord itself.
    @Flag(help: .hidden)
    var apiFront = false
    @Option(help: .hidden)
    var apiFrontAccess: String?
    @Option(name: .customLong(String(APIFront.metricsListenersOption.dropFirst(2))), help: .hidden)
    var apiFrontMetricsListeners = 0

    func run() throws {
        if check { Self.checkDefinitions(definitions, settings: settings) }
        if apiFront { runAPIFront() }
        // Before any other thread exists, so every thread inherits the mask: SIGHUP/SIGTERM/SIGINT
        // are only ever taken by the sigwait thread below.
        var set = sigset_t()
        sigemptyset(&set)
        for s in [SIGHUP, SIGTERM, SIGINT] { sigaddset(&set, s) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
        signal(SIGPIPE, SIG_IGN)

        bootstrapLogging()
        let logger = Logger(label: "rtvisord")
        let daemonSettings: RtvisordSettings
        do { daemonSettings = try RtvisordSettings.load(path: settings) } catch {
            logger.critical("\(error)")
            Foundation.exit(1)
        }
        let notifier = SystemdNotifier(environment: ProcessInfo.processInfo.environment)
        let paths = DaemonPaths(definitions: definitions, run: runDirectory, vmm: vmm ?? Self.defaultVMM(),
                                apiSocket: apiSocket ?? runDirectory + "/api.sock", state: stateDirectory)
        let supervisor = Supervisor(paths: paths, logger: logger, version: Self.version, accessGroup: apiGroup) { status in
            notifier.notify(.status(status))
        }
        let daemon = DaemonRun(supervisor: supervisor, notifier: notifier, logger: logger, paths: paths, apiGroup: apiGroup,
                               metrics: daemonSettings.metrics, apiFrontArguments: ["--log-level", logLevel, "--api-seccomp", apiSeccomp.rawValue])
        let done = DispatchSemaphore(value: 0)
        Task {
            await daemon.run(signals: set)
            done.signal()
        }
        done.wait()
        Foundation.exit(0)
    }

    /// journald (native protocol) as identifier rtvisord, for the daemon and its API front.
    /// Without journald (containers, a development machine) the entries also go to
    /// RUN-DIRECTORY/rtvisord.log, and so do the VMMs' (they inherit RTVISOR_LOG_FILE), for
    /// `rtvisorctl logs`.
    func bootstrapLogging() {
        if !apiFront, JournalSocket() == nil, getenv(JournalSink.logFileVariable) == nil {
            mkdir(runDirectory, 0o755)
            setenv(JournalSink.logFileVariable, runDirectory + "/rtvisord.log", 1)
        }
        let sink = JournalSink()
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var h = JournaldLogHandler(label: label, identifier: "rtvisord", sink: sink)
            h.logLevel = level
            return h
        }
    }

    /// `--api-front`: confined while single-threaded, then serving until rtvisord goes away.
    func runAPIFront() -> Never {
        // The daemon's signal mask is not taken over (posix_spawn cleared it): SIGTERM ends the
        // front; SIGHUP (`systemctl kill -s HUP` reaches every process of the unit) does not.
        APIFront.closeInheritedDescriptors(metricsListeners: apiFrontMetricsListeners)
        signal(SIGPIPE, SIG_IGN)
        signal(SIGHUP, SIG_IGN)
        bootstrapLogging()
        let logger = Logger(label: APIFront.program)
        guard let access = apiFrontAccess.flatMap(APIFront.access(argument:)) else {
            logger.critical("--api-front needs --api-front-access UID:GID")
            Foundation.exit(2)
        }
        do { try APIFront.confine(seccomp: apiSeccomp, metricsListeners: apiFrontMetricsListeners, logger: logger) } catch {
            logger.critical("API front: \(error)")
            Foundation.exit(1)
        }
        Task { await APIFront.serve(access: access, metricsListeners: apiFrontMetricsListeners, logger: logger) }
        // Parked for good (a futex wait: the filter allows it); serve() ends the process.
        DispatchSemaphore(value: 0).wait()
        Foundation.exit(1)
    }

    static func defaultVMM() -> String {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
        let sibling = (exe as NSString).deletingLastPathComponent + "/rtvisor-vmm"
        if FileManager.default.isExecutableFile(atPath: sibling) { return sibling }
        return "/usr/local/bin/rtvisor-vmm"
    }

    static func checkDefinitions(_ dir: String, settings: String) -> Never {
        let scan = DefinitionDirectory.scan(directory: dir)
        for name in scan.definitions.keys.sorted() { print("\(scan.definitions[name]!.file): OK (\(name))") }
        for p in scan.problems { print("\(p)") }
        var settingsValid = true
        do {
            _ = try RtvisordSettings.load(path: settings)
            if FileManager.default.fileExists(atPath: settings) { print("\(settings): OK") }
        } catch {
            print("\(error)")
            settingsValid = false
        }
        Foundation.exit(scan.problems.isEmpty && settingsValid ? 0 : 1)
    }
}

/// The daemon's lifetime: bootstrap, API, readiness, watchdog, signals, shutdown.
struct DaemonRun: Sendable {
    let supervisor: Supervisor
    let notifier: SystemdNotifier
    let logger: Logger
    let paths: DaemonPaths
    let apiGroup: String
    let metrics: MetricsSettings
    let apiFrontArguments: [String]

    func run(signals: sigset_t) async {
        await supervisor.bootstrap()
        // The API socket is bound here, before readiness (clients wait in its backlog until the
        // front accepts), and served by the confined front process (docs/sandbox.md).
        var api: Task<Void, Never>?
        var listening: Int32 = -1
        var metricsListeners: [(place: String, fd: Int32)] = []
        do {
            listening = try HTTPServer.bindListeningSocket(paths.apiSocket, groupName: apiGroup, logger: logger)
            metricsListeners = bindMetricsListeners()
            let front = APIFrontSupervisor(listeningSocket: listening, metricsSockets: metricsListeners.map(\.fd), frontEnvironment: dashboardActionsEnvironment(),
                                           access: PeerAccess(groupName: apiGroup), control: supervisor, logger: logger, arguments: apiFrontArguments)
            api = Task { await front.run() }
        } catch {
            logger.critical("control API on \(paths.apiSocket) failed: \(error)")
        }
        let status = await supervisor.statusText
        notifier.notify(.ready, .status(status))
        let metricsPlaces = metricsListeners.isEmpty ? "" : ", metrics and dashboard on " + metricsListeners.map(\.place).joined(separator: " and ")
        await event(.daemonReady, "rtvisord \(Rtvisord.version) ready: \(status); API on \(paths.apiSocket)\(metricsPlaces)")

        let watchdog = Task {
            guard let ns = notifier.watchdogPingIntervalNanoseconds else { return }
            logger.info("watchdog: pinging systemd every \(ns / 1_000_000) ms")
            while !Task.isCancelled {
                // Only a responsive supervisor actor earns a ping.
                if await supervisor.ping() { notifier.notify(.watchdog) }
                try? await Task.sleep(for: .nanoseconds(Int(ns)))
            }
        }

        let stream = SignalStream.start(signals)
        for await sig in stream {
            if sig == SIGHUP {
                notifier.notify(.reloading, .status("reloading definitions"))
                let r = await supervisor.reload()
                let status = await supervisor.statusText
                notifier.notify(.ready, .status(status))
                logger.info("reload done: added [\(r.added.joined(separator: " "))], removed [\(r.removed.joined(separator: " "))], pending [\(r.pending.joined(separator: " "))]")
                continue
            }
            notifier.notify(.stopping)
            // SIGTERM (systemctl stop or restart, the watchdog's restart, kill): the guests keep
            // running, whatever comes next. Telling a stop from a restart is not rtvisord's job:
            // shutting guests down is rtvisor-guests.service's (its ExecStop runs before rtvisord
            // stops at host shutdown, and on `systemctl stop rtvisor-guests`).
            if sig == SIGTERM {
                let n = await supervisor.detachAll()
                notifier.notify(.status("stopping: \(n) guests keep running"))
                await event(.daemonStopping, "rtvisord stopping (SIGTERM): \(n) guest(s) keep running; the next rtvisord re-adopts them (rtvisorctl shutdown-guests stops them)")
            } else {
                // SIGINT: Ctrl-C of a foreground run.
                notifier.notify(.status("stopping all guests"))
                await event(.daemonStopping, "rtvisord stopping (signal \(sig)): shutting down every guest")
                await supervisor.shutdownAll()
                await event(.daemonStopping, "all guests stopped; rtvisord exits")
            }
            break
        }
        watchdog.cancel()
        api?.cancel()
        await api?.value
        unlink(paths.apiSocket)
        unlink(paths.metricsSocket)
        unlink(paths.run + "/" + DashboardActions.tokenFile)
        if listening >= 0 { close(listening) }
        metricsListeners.forEach { close($0.fd) }
    }

    /// metrics.sock, and the TCP listener when rtvisord.json enables it. One that cannot be
    /// bound (a port taken, a file in the socket's place) is logged and left out: the API runs
    /// without it.
    func bindMetricsListeners() -> [(place: String, fd: Int32)] {
        var bound: [(place: String, fd: Int32)] = []
        do { bound.append((paths.metricsSocket, try MetricsListeners.bindSocket(paths.metricsSocket, logger: logger))) } catch {
            logger.critical("metrics.sock: \(error); serving the metrics without it")
        }
        guard metrics.tcp.enabled else { return bound }
        let endpoint = MetricsListeners.endpoint((metrics.tcp.address, metrics.tcp.port))
        do { bound.append(("http://\(endpoint)/", try MetricsListeners.bindTCP(address: metrics.tcp.address, port: metrics.tcp.port))) } catch {
            logger.critical("\(error); serving the metrics without it")
        }
        return bound
    }

    /// The token of the dashboard's actions for the front, when rtvisord.json names a group and
    /// the token file could be written for it (otherwise logged: the dashboard stays read-only).
    func dashboardActionsEnvironment() -> [String: String] {
        unlink(paths.run + "/" + DashboardActions.tokenFile)
        let console = metrics.dashboardConsole ? [DashboardActions.consoleEnvironmentVariable: "1"] : [:]
        guard let group = metrics.dashboardActionsGroup else { return console }
        let token = DashboardActions.newToken()
        do { try DashboardActions.writeToken(token, runDirectory: paths.run, group: group) } catch {
            logger.critical("dashboard actions: \(error); the dashboard stays read-only")
            return console
        }
        logger.notice("dashboard actions (start, stop) for group \(group): the token is in \(paths.run)/\(DashboardActions.tokenFile)")
        return console.merging([DashboardActions.environmentVariable: token]) { $1 }
    }

    func event(_ e: LifecycleEvent, _ message: String) async {
        logger.notice("\(message)", metadata: ["MESSAGE_ID": .string(e.messageID), "RTVISOR_EVENT": .string(e.rawValue)])
    }
}

/// sigwait on a dedicated thread, as an AsyncStream of signal numbers.
enum SignalStream {
    static func start(_ set: sigset_t) -> AsyncStream<Int32> {
        let (stream, continuation) = AsyncStream<Int32>.makeStream()
        let thread = Thread {
            var s = set
            var sig: Int32 = 0
            while sigwait(&s, &sig) == 0 { continuation.yield(sig) }
        }
        thread.name = "signals"
        thread.start()
        return stream
    }
}

extension SeccompMode: ExpressibleByArgument {}
