import ArgumentParser
import Config
import Journald
import Logging
import VMM
import VMMInterface
import Posix
import Sandbox
import SystemPackage
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

@main
struct RtvisorVMM: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rtvisor-vmm",
        abstract: "Run one virtual machine on /dev/kvm, with its serial console on stdio.",
        discussion: """
        Exit status: 0 guest powered off, 1 VMM or definition error, 3 guest reset (reboot),
        4 triple fault, 5 KVM internal error (e.g. emulation failure), 6 guest-reported failure
        (exit port), 7 vCPU entry failure or unexpected exit, 128+N stopped by signal N.
        See docs/exit-status.md. SIGUSR1 asks the guest to shut down (Ctrl-Alt-Del on the i8042);
        SIGINT/SIGTERM stop the VM at once.
        """,
        version: RtvisorRelease.version)

    /// The flags are the daemon↔VMM contract's (`VMMLaunch`): rtvisord writes them with
    /// `VMMLaunch.arguments`, this parses them.
    @OptionGroup var arguments: VMMLaunchArguments

    func run() throws {
        if let janitor = arguments.realtimeJanitor { JailSetup.runJanitor(spec: janitor) }
        let started = monotonicNanoseconds()
        let launch = arguments.launch
        let trace = StartupTrace(enabled: launch.traceStartup, origin: launch.traceOrigin ?? started)
        if launch.traceOrigin != nil { trace.mark("exec + runtime start + arguments", now: started) }
        // First, while this is the only thread: every later thread (vCPUs, console) and every
        // journal entry is then accounted to the VM's own cgroup.
        if let cgroup = launch.cgroup { joinCgroup(cgroup) }
        let level = Logger.Level(rawValue: launch.logLevel.rawValue) ?? .info
        let journal: JournalSink? = (launch.logJournal || launch.consoleJournal) ? JournalSink() : nil
        if launch.logJournal, let journal {
            LoggingSystem.bootstrap { label in
                var h = JournaldLogHandler(label: label, identifier: "rtvisor-vmm", sink: journal)
                h.logLevel = level
                return h
            }
        } else {
            LoggingSystem.bootstrap { label in
                var h = StreamLogHandler.standardError(label: label)
                h.logLevel = level
                return h
            }
        }
        trace.mark("cgroup and logging")
        let definition: VMDefinition
        // A live migration's target reads the definition from the stream (docs/migration.md).
        var incoming: IncomingMigration.Opened? = nil
        do {
            if let address = launch.incoming {
                let opened = try IncomingMigration.open(address, configFile: launch.incomingConfig, logger: Logger(label: "rtvisor.vmm"))
                incoming = opened
                do {
                    // The caller's definition (rtvisord: renamed, disks mapped to this host's
                    // paths) or the one that came with the VM.
                    definition = launch.definition.isEmpty
                        ? try VMDefinition.parse(Data(opened.config.definitionJSON), file: "the definition from \(opened.config.sourceHost)", baseDirectory: "/")
                        : try loadDefinition(launch)
                } catch {
                    try? opened.channel.send(.refused("\(error)"))
                    throw error
                }
            } else {
                definition = try loadDefinition(launch)
            }
        } catch {
            fail("\(error)")
        }
        if launch.validateOnly {
            print("\(launch.definition): OK (\(definition.name): \(definition.vcpus) vCPU, \(definition.memoryMiB) MiB)")
            return
        }
        trace.mark("definition")
        var logger = Logger(label: "rtvisor.vmm")
        logger[metadataKey: "vm"] = "\(definition.name)"
        if launch.logJournal {
            logger[metadataKey: "VM_NAME"] = "\(definition.name)"
            logger[metadataKey: "VM_PID"] = "\(getpid())"
        }

        // Seccomp (docs/sandbox.md): the SIGSYS report and the filters' start hook, while this is
        // the only thread; each thread then installs its own filter before it does its work.
        do { try Sandbox.prepare(mode: definition.sandbox.seccomp, vmName: definition.name, statusFile: launch.statusFile,
                                 passthrough: !definition.passthrough.isEmpty, sharedMemoryBars: !definition.channels.isEmpty) } catch {
            fail("\(definition.name): \(error)")
        }
        trace.mark("seccomp prepare")

        // Memory and task limits (docs/sandbox.md), while root and before guest RAM exists.
        if launch.jail && geteuid() == 0 {
            let limits = ResourceCgroup().apply(vm: definition.name, memoryBytes: VMResourceLimits.memoryBytes(guestMiB: definition.memoryMiB),
                                                tasks: VMResourceLimits.tasks(vcpus: definition.vcpus, nets: definition.nets.count))
            logger.info("resource limits: \(limits.joined(separator: "; "))")
            trace.mark("resource limits")
        }

        // SIGINT/SIGTERM are taken by a dedicated thread (sigwait) so every other thread, the vCPUs
        // above all, never runs a handler for them.
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGTERM)
        sigaddset(&set, SIGUSR1)
        pthread_sigmask(SIG_BLOCK, &set, nil)

        // Under rtvisord the VMM outlives the daemon: a write to a stderr pipe whose reader is
        // gone must fail with EPIPE, not kill the guest.
        if launch.consoleSocket != nil || launch.statusFile != nil { signal(SIGPIPE, SIG_IGN) }

        var consoleFD = STDOUT_FILENO
        if let consoleLog = launch.consoleLog {
            consoleFD = open(consoleLog, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o640)
            if consoleFD < 0 { fail("--console-log \(consoleLog): \(errnoMessage())") }
        }
        // Console input reaches the machine through this box, filled once the machine exists.
        let machineBox = MachineBox()
        var server: ConsoleServer?
        if launch.consoleSocket != nil || launch.consoleJournal {
            do {
                server = try ConsoleServer(socketPath: launch.consoleSocket, vmName: definition.name, journal: launch.consoleJournal ? journal : nil) { bytes in
                    machineBox.machine?.enqueueConsoleInput(bytes)
                }
            } catch {
                fail("\(definition.name): \(error)")
            }
            // In the daemon's mode the console goes to the socket and the journal, not stdout.
            if launch.consoleLog == nil && launch.consoleJournal { consoleFD = -1 }
        }
        var control: ControlServer?
        if let path = launch.controlSocket {
            var backlog: (@Sendable () -> [UInt8])? = nil
            if let server { backlog = { server.currentBacklog() } }
            do { control = try ControlServer(socketPath: path, logger: logger, consoleBacklog: backlog) } catch { fail("\(definition.name): \(error)") }
        }
        trace.mark("signals and console")
        stopForTest(at: "guest-files")
        // Not for the real-time janitor this VMM may start: the socket is rtvisord's and ours.
        let notices = launch.noticeDescriptor.map { fd in _ = fcntl(fd, F_SETFD, FD_CLOEXEC); return VMMNoticeSender(descriptor: fd) }
        let machine: Machine
        do {
            var tap: (@Sendable (UInt8) -> Void)? = nil
            if let server { tap = { byte in server.tap(byte) } }
            var options = RunOptions(consoleInput: launch.consoleInput, console: ConsoleOutput(fd: consoleFD, tap: tap), notifyPath: launch.notify,
                                     latencyFile: launch.latencyFile, trace: trace, keepRealtimePartitionOnReset: launch.keepRealtimePartitionOnReset,
                                     notices: notices)
            options.channels = launch.channels
            machine = try Machine(definition: definition, options: options,
                                  logger: logger, processStartedAt: started,
                                  start: incoming != nil ? .incoming(incoming?.handedOver)
                                      : launch.restore.map { .snapshot(SnapshotSource(directory: absolutePath($0), memory: launch.restoreMemory)) } ?? .boot)
        } catch {
            try? incoming?.channel.send(.refused("\(error)"))
            writeStatus(VMMExitReport(status: .vmmError, reason: "\(error)"), to: launch.statusFile)
            fail("\(definition.name): \(error)")
        }
        if let incoming {
            if let refusal = machine.incomingRefusal(incoming.config.header) {
                try? incoming.channel.send(.refused(refusal))
                writeStatus(VMMExitReport(status: .vmmError, reason: "incoming migration refused: \(refusal)"), to: launch.statusFile)
                fail("\(definition.name): incoming migration refused: \(refusal)")
            }
            do { try incoming.channel.send(.accepted) } catch { fail("\(definition.name): \(error)") }
        }
        machineBox.machine = machine
        stopForTest(at: "jail")
        if launch.jail && geteuid() == 0 {
            do {
                let line = try JailSetup.enter(machine: machine, uid: launch.jailUID ?? JailPlan.uid(forVM: definition.name),
                                               writableFiles: [launch.statusFile, launch.latencyFile].compactMap { $0 },
                                               journal: launch.logJournal || launch.consoleJournal, logger: logger)
                logger.info("\(line)")
                trace.mark("jail")
            } catch {
                writeStatus(VMMExitReport(status: .vmmError, reason: "\(error)"), to: launch.statusFile)
                fail("\(definition.name): \(error)")
            }
        } else if launch.jail {
            logger.info("jail: not entered (not running as root: there is no privilege to drop)")
        }
        if let incoming {
            // The console's and the signals' threads start first: thread creations are part of
            // a migration's downtime when they come after `go`. The control socket is served
            // only once the guest runs here (rtvisord takes that as the sign).
            server?.start()
            SignalForwarder.start(set: set, machine: machine)
            // In the jail already: what comes over the network is parsed without root.
            do {
                if let backlog = try machine.receiveMigration(incoming.channel) { server?.seedBacklog(backlog) }
                trace.mark("migration received")
            } catch {
                writeStatus(VMMExitReport(status: .vmmError, reason: "incoming migration abandoned: \(error)"), to: launch.statusFile)
                fail("\(definition.name): incoming migration abandoned, the VM is discarded here: \(error)")
            }
        } else {
            server?.start()
            SignalForwarder.start(set: set, machine: machine)
        }
        control?.start(machine: machine)
        trace.mark("control server")
        let reason = machine.run()
        server?.finish()
        writeStatus(reason.exitReport, to: launch.statusFile)
        writeStderr("rtvisor-vmm: \(definition.name): \(reason)\n")
        Glibc.exit(reason.exitStatus.code)
    }

    func loadDefinition(_ launch: VMMLaunch) throws -> VMDefinition {
        let config = launch.definition
        guard let baseDirectory = launch.baseDirectory else { return try VMDefinition.load(path: config) }
        let fd = open(config, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return try VMDefinition.load(path: config) }
        defer { close(fd) }
        return try VMDefinition.parse(Data(try readToEnd(fd)), file: config, baseDirectory: baseDirectory)
    }

    func joinCgroup(_ dir: String) {
        let fd = open(dir + "/cgroup.procs", O_WRONLY | O_CLOEXEC)
        do {
            guard fd >= 0 else { throw Errno(rawValue: errno) }
            defer { close(fd) }
            try writeAll(fd, Array("0\n".utf8))  // "0": the writing process itself
        } catch {
            writeStderr("rtvisor-vmm: warning: cannot join cgroup \(dir): \(error)\n")
        }
    }

    /// The exit-status file (the contract's `VMMExitReport`); a failure to write it only loses
    /// what a re-adopting daemon would read.
    func writeStatus(_ report: VMMExitReport, to file: String?) {
        guard let file else { return }
        do { try report.write(to: file) } catch { writeStderr("rtvisor-vmm: --status-file \(file): \(error)\n") }
    }

    /// Test builds only (`RTVISOR_TEST_HOOKS`): with `RTVISOR_TEST_STOP_AT=STEP` the VMM says so
    /// on stderr and stops itself (SIGSTOP) at STEP, so a test can change files at exactly that
    /// point and let it go on with SIGCONT, without guessing when it gets there: `guest-files`
    /// (definition loaded and checked, no guest file opened yet), `jail` (machine built, jail not
    /// entered yet). Release builds do not read the variable.
    func stopForTest(at step: String) {
        #if RTVISOR_TEST_HOOKS
        guard let value = getenv("RTVISOR_TEST_STOP_AT"), String(cString: value) == step else { return }
        writeStderr("rtvisor-vmm: test hook: stopping at \(step)\n")
        raise(SIGSTOP)
        #endif
    }

    func fail(_ message: String) -> Never {
        writeStderr("rtvisor-vmm: \(message)\n")
        Glibc.exit(1)
    }
}

enum SignalForwarder {
    static func start(set: sigset_t, machine: Machine) {
        final class Context: @unchecked Sendable { var set: sigset_t; let machine: Machine; init(_ s: sigset_t, _ m: Machine) { set = s; machine = m } }
        let ctx = Unmanaged.passRetained(Context(set, machine)).toOpaque()
        var thread = pthread_t()
        pthread_create(&thread, nil, { raw in
            let ctx = Unmanaged<Context>.fromOpaque(raw!).takeRetainedValue()
            Sandbox.enterThreadOrExit(.vmm, label: "signals")
            var sig: Int32 = 0
            while sigwait(&ctx.set, &sig) == 0 {
                if sig == SIGUSR1 { ctx.machine.requestGuestShutdown() } else { ctx.machine.requestStop(.signal(sig)) }
            }
            return nil
        }, ctx)
        pthread_detach(thread)
    }
}

final class MachineBox: @unchecked Sendable {
    // Written once before the console thread starts, read by that thread afterwards.
    var machine: Machine?
}

/// `path` from the working directory (snapshot files are looked up by absolute paths only).
func absolutePath(_ path: String) -> String {
    guard !path.hasPrefix("/") else { return path }
    var buf = [CChar](repeating: 0, count: Int(PATH_MAX))
    guard getcwd(&buf, buf.count) != nil else { return path }
    return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) + "/" + path
}

func writeStderr(_ s: String) {
    var bytes = Array(s.utf8)
    _ = bytes.withUnsafeMutableBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
}
