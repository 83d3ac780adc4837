import ArgumentParser
import Config
import Journald
import Logging
import VMM
import Posix
import Sandbox
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
        """)

    @Option(name: .long, help: "The VM definition (JSON).")
    var config: String

    @Flag(name: .long, help: "Validate the definition and exit.")
    var check = false

    @Flag(name: .long, help: "Do not read console input from stdin.")
    var noConsoleInput = false

    @Option(name: .long, help: "Append the serial console output to this file instead of stdout.")
    var consoleLog: String?

    @Option(name: .long, help: "How virtio queue notifications reach the devices: exit (the vCPU thread runs the device, default) or ioeventfd (a VMM thread does; for comparison).")
    var notify: String = "exit"

    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    // Options rtvisord uses (docs/daemon.md); each also works by hand.
    @Option(name: .long, help: "Resolve relative paths in the definition against this directory (the definition was copied).")
    var baseDirectory: String?

    @Option(name: .long, help: "Serve the serial console on this unix socket (backlog + live output; input accepted).")
    var consoleSocket: String?

    @Flag(name: .long, help: "Send each console output line to journald with VM_NAME (stdout gets no console output).")
    var consoleJournal = false

    @Flag(name: .long, help: "Log to journald (native protocol, VM_NAME/VM_PID fields) instead of stderr.")
    var logJournal = false

    @Option(name: .long, help: "At exit, write 'STATUS REASON' to this file (read by rtvisord after a restart).")
    var statusFile: String?

    @Option(name: .long, help: "Move this process into this cgroup (v2 directory) before anything else runs.")
    var cgroup: String?

    @Option(name: .long, help: "A real-time VM's wake-up latency histogram (realtime.latency_probe_us) is written here as JSON once a second.")
    var latencyFile: String?

    // The jail (docs/sandbox.md): as root, the VMM drops to its own uid in its own mount namespace
    // once the machine is built.
    @Flag(name: .long, help: "Keep root and the host's file system (debugging only; the default as root is the jail).")
    var noJail = false

    @Option(name: .long, help: "The jail's uid and gid (default: derived from the VM name, \(JailPlan.uidBase)–\(JailPlan.uidBase + JailPlan.uidRange - 1)).")
    var jailUid: UInt32?

    @Option(name: .long, help: .hidden)
    var realtimeJanitor: String?

    func run() throws {
        if let realtimeJanitor { JailSetup.runJanitor(spec: realtimeJanitor) }
        let started = monotonicNanoseconds()
        // First, while this is the only thread: every later thread (vCPUs, console) and every
        // journal entry is then accounted to the VM's own cgroup.
        if let cgroup { joinCgroup(cgroup) }
        guard let notifyPath = NotifyPath(rawValue: notify) else {
            throw ValidationError("--notify must be one of: \(NotifyPath.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        let level = Logger.Level(rawValue: logLevel) ?? .info
        let journal: JournalSink? = (logJournal || consoleJournal) ? JournalSink() : nil
        if logJournal, let journal {
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
        let definition: VMDefinition
        do {
            definition = try loadDefinition()
        } catch {
            fail("\(error)")
        }
        if check {
            print("\(config): OK (\(definition.name): \(definition.vcpus) vCPU, \(definition.memoryMiB) MiB)")
            return
        }
        var logger = Logger(label: "rtvisor.vmm")
        logger[metadataKey: "vm"] = "\(definition.name)"
        if logJournal {
            logger[metadataKey: "VM_NAME"] = "\(definition.name)"
            logger[metadataKey: "VM_PID"] = "\(getpid())"
        }

        // Seccomp (docs/sandbox.md): the SIGSYS report and the filters' start hook, while this is
        // the only thread; each thread then installs its own filter before it does its work.
        do { try Sandbox.prepare(mode: definition.sandbox.seccomp, vmName: definition.name, statusFile: statusFile,
                                 passthrough: !definition.passthrough.isEmpty) } catch {
            fail("\(definition.name): \(error)")
        }

        // Memory and task limits (docs/sandbox.md), while root and before guest RAM exists.
        if !noJail && geteuid() == 0 {
            let limits = ResourceCgroup().apply(vm: definition.name, memoryBytes: ResourceCgroup.memoryLimit(guestMiB: definition.memoryMiB),
                                                tasks: ResourceCgroup.taskLimit(vcpus: definition.vcpus, nets: definition.nets.count))
            logger.info("resource limits: \(limits.joined(separator: "; "))")
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
        if consoleSocket != nil || statusFile != nil { signal(SIGPIPE, SIG_IGN) }

        var consoleFD = STDOUT_FILENO
        if let consoleLog {
            consoleFD = open(consoleLog, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o640)
            if consoleFD < 0 { fail("--console-log \(consoleLog): \(String(cString: strerror(errno)))") }
        }
        // Console input reaches the machine through this box, filled once the machine exists.
        let machineBox = MachineBox()
        var server: ConsoleServer?
        if consoleSocket != nil || consoleJournal {
            do {
                server = try ConsoleServer(socketPath: consoleSocket, vmName: definition.name, journal: consoleJournal ? journal : nil) { bytes in
                    machineBox.machine?.enqueueConsoleInput(bytes)
                }
            } catch {
                fail("\(definition.name): \(error)")
            }
            // In the daemon's mode the console goes to the socket and the journal, not stdout.
            if consoleLog == nil && consoleJournal { consoleFD = -1 }
        }
        let machine: Machine
        do {
            var tap: (@Sendable (UInt8) -> Void)? = nil
            if let server { tap = { byte in server.tap(byte) } }
            machine = try Machine(definition: definition,
                                  options: RunOptions(consoleInput: !noConsoleInput, console: ConsoleOutput(fd: consoleFD, tap: tap), notifyPath: notifyPath, latencyFile: latencyFile),
                                  logger: logger, processStartedAt: started)
        } catch {
            writeStatus(1, "\(error)")
            fail("\(definition.name): \(error)")
        }
        machineBox.machine = machine
        if !noJail && geteuid() == 0 {
            do {
                let line = try JailSetup.enter(machine: machine, uid: jailUid ?? JailPlan.uid(forVM: definition.name),
                                               writableFiles: [statusFile, latencyFile].compactMap { $0 },
                                               journal: logJournal || consoleJournal, logger: logger)
                logger.info("\(line)")
            } catch {
                writeStatus(1, "\(error)")
                fail("\(definition.name): \(error)")
            }
        } else if !noJail {
            logger.info("jail: not entered (not running as root: there is no privilege to drop)")
        }
        server?.start()
        SignalForwarder.start(set: set, machine: machine)
        let reason = machine.run()
        server?.finish()
        writeStatus(reason.exitStatus, "\(reason)")
        writeStderr("rtvisor-vmm: \(definition.name): \(reason)\n")
        Glibc.exit(reason.exitStatus)
    }

    func loadDefinition() throws -> VMDefinition {
        guard let baseDirectory else { return try VMDefinition.load(path: config) }
        let fd = open(config, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return try VMDefinition.load(path: config) }
        defer { close(fd) }
        var data: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            data.append(contentsOf: buf[0..<n])
        }
        return try VMDefinition.parse(Data(data), file: config, baseDirectory: baseDirectory)
    }

    func joinCgroup(_ dir: String) {
        let fd = open(dir + "/cgroup.procs", O_WRONLY | O_CLOEXEC)
        var ok = false
        if fd >= 0 {
            var zero = Array("0\n".utf8)  // "0": the writing process itself
            ok = zero.withUnsafeMutableBytes { write(fd, $0.baseAddress, $0.count) } == 2
            close(fd)
        }
        if !ok { writeStderr("rtvisor-vmm: warning: cannot join cgroup \(dir): \(String(cString: strerror(errno)))\n") }
    }

    /// Atomically (temporary file + rename), so a reader never sees half a status.
    func writeStatus(_ status: Int32, _ reason: String) {
        guard let statusFile else { return }
        let tmp = statusFile + ".tmp"
        var bytes = Array("\(status) \(reason)\n".utf8)
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o640)
        guard fd >= 0 else {
            // Jailed without write access to the directory: the file itself is ours.
            let inPlace = open(statusFile, O_WRONLY | O_TRUNC | O_CLOEXEC)
            if inPlace >= 0 { _ = bytes.withUnsafeMutableBytes { write(inPlace, $0.baseAddress, $0.count) }; close(inPlace) }
            return
        }
        _ = bytes.withUnsafeMutableBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        rename(tmp, statusFile)
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

func writeStderr(_ s: String) {
    var bytes = Array(s.utf8)
    _ = bytes.withUnsafeMutableBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
}
