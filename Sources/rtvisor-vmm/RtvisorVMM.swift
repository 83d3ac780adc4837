import ArgumentParser
import Config
import Logging
import VMM
import Posix
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
        See docs/exit-status.md.
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

    func run() throws {
        let started = monotonicNanoseconds()
        guard let notifyPath = NotifyPath(rawValue: notify) else {
            throw ValidationError("--notify must be one of: \(NotifyPath.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        let definition: VMDefinition
        do {
            definition = try VMDefinition.load(path: config)
        } catch {
            fail("\(error)")
        }
        if check {
            print("\(config): OK (\(definition.name): \(definition.vcpus) vCPU, \(definition.memoryMiB) MiB)")
            return
        }
        var logger = Logger(label: "rtvisor.vmm")
        logger[metadataKey: "vm"] = "\(definition.name)"

        // SIGINT/SIGTERM are taken by a dedicated thread (sigwait) so every other thread, the vCPUs
        // above all, never runs a handler for them.
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGTERM)
        pthread_sigmask(SIG_BLOCK, &set, nil)

        var consoleFD = STDOUT_FILENO
        if let consoleLog {
            consoleFD = open(consoleLog, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o640)
            if consoleFD < 0 { fail("--console-log \(consoleLog): \(String(cString: strerror(errno)))") }
        }
        let machine: Machine
        do {
            machine = try Machine(definition: definition,
                                  options: RunOptions(consoleInput: !noConsoleInput, console: ConsoleOutput(fd: consoleFD), notifyPath: notifyPath),
                                  logger: logger, processStartedAt: started)
        } catch {
            fail("\(definition.name): \(error)")
        }
        SignalForwarder.start(set: set, machine: machine)
        let reason = machine.run()
        writeStderr("rtvisor-vmm: \(definition.name): \(reason)\n")
        Glibc.exit(reason.exitStatus)
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
            var sig: Int32 = 0
            while sigwait(&ctx.set, &sig) == 0 {
                ctx.machine.requestStop(.signal(sig))
            }
            return nil
        }, ctx)
        pthread_detach(thread)
    }
}

func writeStderr(_ s: String) {
    var bytes = Array(s.utf8)
    _ = bytes.withUnsafeMutableBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
}
