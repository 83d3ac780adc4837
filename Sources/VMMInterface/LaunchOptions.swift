import ArgumentParser

/// How virtio queue notifications reach the device model.
public enum NotifyPath: String, Codable, Sendable, CaseIterable, ExpressibleByArgument {
    /// The notify write exits to the vCPU thread, which runs the device (default; docs/virtio.md).
    case exit
    /// KVM ioeventfd: the write completes in the kernel and a VMM thread runs the device.
    case ioeventfd
}

/// How a restored VM gets its memory from the snapshot's memory file (docs/snapshot.md).
public enum RestoreMemoryMode: String, Codable, Sendable, CaseIterable, ExpressibleByArgument {
    /// Read into fresh anonymous memory: the restored VM owns all of it.
    case copy
    /// The file mapped MAP_PRIVATE: pages are read on first touch and shared (page cache) with
    /// every other VM restored from the same file until written (copy on write). Clones use it.
    case map
}

/// swift-log's level names, without making this module depend on swift-log.
public enum VMMLogLevel: String, Codable, Sendable, CaseIterable, ExpressibleByArgument {
    case trace, debug, info, notice, warning, error, critical
}

/// Everything rtvisor-vmm is started with besides its definition: what rtvisord passes (and a
/// person may pass by hand). `arguments` and `parse(_:)` are the only argv writer and reader, so
/// the daemon and the VMM cannot disagree on a flag.
public struct VMMLaunch: Codable, Equatable, Sendable {
    /// The VM definition (JSON).
    public var definition: String
    /// Validate the definition and exit.
    public var validateOnly = false
    /// Feed stdin to the serial port (foreground use).
    public var consoleInput = true
    /// Append the serial console output to this file instead of stdout.
    public var consoleLog: String?
    public var notify: NotifyPath = .exit
    public var logLevel: VMMLogLevel = .info
    /// Resolve relative paths in the definition against this directory (the definition was copied).
    public var baseDirectory: String?
    /// Serve the serial console on this unix socket.
    public var consoleSocket: String?
    /// Each console output line to journald (stdout gets none).
    public var consoleJournal = false
    /// Logs to journald instead of stderr.
    public var logJournal = false
    /// At exit, the `VMMExitReport` is written here.
    public var statusFile: String?
    /// Join this cgroup (v2 directory) before anything else runs.
    public var cgroup: String?
    /// A real-time VM's `LatencySnapshot`, rewritten once a second.
    public var latencyFile: String?
    /// As root, drop to the jail once the machine is built (docs/sandbox.md); false only to debug.
    public var jail = true
    /// The jail's uid and gid (default: derived from the VM name).
    public var jailUID: UInt32?
    /// Log how long each start-up step took, up to the boot marker.
    public var traceStartup = false
    /// CLOCK_MONOTONIC (ns) when the caller started the process: the trace's first step is then
    /// exec and runtime start-up.
    public var traceOrigin: UInt64?
    /// When the guest resets, leave a real-time VM's partition in place for the next VMM of the
    /// VM, which the caller starts or, if it does not, undoes the partition (rtvisord, for
    /// real-time VMs; docs/realtime.md).
    public var keepRealtimePartitionOnReset = false
    /// Resume the VM saved in this snapshot directory instead of booting it (docs/snapshot.md).
    public var restore: String?
    public var restoreMemory: RestoreMemoryMode = .copy
    /// Serve `VMMControl` (pause, resume, snapshot) on this unix socket.
    public var controlSocket: String?
    /// Take the VM over from a live migration at this address (`unix:PATH`, `tcp:HOST:PORT`,
    /// `fd:N` for an inherited connected socket); the definition comes with it.
    public var incoming: String?
    /// With `incoming`: the stream's hello and configuration were read by the caller (rtvisord),
    /// which saved the configuration (`MigrationConfig`, JSON) here; the definition is `definition`.
    public var incomingConfig: String?
    /// The definition's shared-memory channels: their memory and doorbells (docs/channels.md).
    public var channels: [ChannelAttachment] = []
    /// An inherited SOCK_SEQPACKET socket on which the VMM sends `VMMNotice`s (rtvisord's end
    /// reads them: guest ready, real-time partition applied).
    public var noticeDescriptor: Int32?

    public init(definition: String) { self.definition = definition }

    /// The flag names, written once for the writer below and the parser (`VMMLaunchArguments`).
    public enum Flag: String, CaseIterable, Sendable {
        case config, check, noConsoleInput = "no-console-input", consoleLog = "console-log", notify, logLevel = "log-level"
        case baseDirectory = "base-directory", consoleSocket = "console-socket", consoleJournal = "console-journal"
        case logJournal = "log-journal", statusFile = "status-file", cgroup, latencyFile = "latency-file"
        case noJail = "no-jail", jailUID = "jail-uid", realtimeJanitor = "realtime-janitor"
        case traceStartup = "trace-startup", traceOrigin = "trace-origin-ns"
        case keepRealtimePartitionOnReset = "keep-realtime-partition-on-reset"
        case restore, restoreMemory = "restore-memory", controlSocket = "control-socket", incoming
        case incomingConfig = "incoming-config", noticeFD = "notice-fd", channel
        public var long: String { "--" + rawValue }
    }

    /// argv after the program name; defaults are left out.
    public var arguments: [String] {
        var a = [Flag.config.long, definition]
        func option(_ f: Flag, _ v: String?) { if let v { a += [f.long, v] } }
        func flag(_ f: Flag, _ on: Bool) { if on { a.append(f.long) } }
        flag(.check, validateOnly)
        flag(.noConsoleInput, !consoleInput)
        option(.consoleLog, consoleLog)
        if notify != .exit { option(.notify, notify.rawValue) }
        if logLevel != .info { option(.logLevel, logLevel.rawValue) }
        option(.baseDirectory, baseDirectory)
        option(.consoleSocket, consoleSocket)
        flag(.consoleJournal, consoleJournal)
        flag(.logJournal, logJournal)
        option(.statusFile, statusFile)
        option(.cgroup, cgroup)
        option(.latencyFile, latencyFile)
        flag(.noJail, !jail)
        option(.jailUID, jailUID.map(String.init))
        flag(.traceStartup, traceStartup)
        option(.traceOrigin, traceOrigin.map(String.init))
        flag(.keepRealtimePartitionOnReset, keepRealtimePartitionOnReset)
        option(.restore, restore)
        if restoreMemory != .copy { option(.restoreMemory, restoreMemory.rawValue) }
        option(.controlSocket, controlSocket)
        option(.incoming, incoming)
        option(.incomingConfig, incomingConfig)
        for c in channels { option(.channel, c.encoded) }
        option(.noticeFD, noticeDescriptor.map(String.init))
        return a
    }

    /// Parses argv after the program name, as rtvisor-vmm does.
    public static func parse(_ arguments: [String]) throws -> VMMLaunch {
        let parsed = try VMMLaunchArguments.parse(arguments)
        guard parsed.realtimeJanitor == nil else { throw ValidationError("--\(Flag.realtimeJanitor.rawValue) is not a VM launch") }
        return parsed.launch
    }
}

/// rtvisor-vmm's command line (embedded in its command with `@OptionGroup`). One property wrapper
/// per flag, alike but for name, type and help: ArgumentParser finds options only as properties.
public struct VMMLaunchArguments: ParsableArguments {
    public init() {}

    @Option(name: .customLong(VMMLaunch.Flag.config.rawValue), help: "The VM definition (JSON); with --restore, the snapshot's definition.json by default.")
    public var config: String?

    @Flag(name: .customLong(VMMLaunch.Flag.check.rawValue), help: "Validate the definition and exit.")
    public var check = false

    @Flag(name: .customLong(VMMLaunch.Flag.noConsoleInput.rawValue), help: "Do not read console input from stdin.")
    public var noConsoleInput = false

    @Option(name: .customLong(VMMLaunch.Flag.consoleLog.rawValue), help: "Append the serial console output to this file instead of stdout.")
    public var consoleLog: String?

    @Option(name: .customLong(VMMLaunch.Flag.notify.rawValue), help: "How virtio queue notifications reach the devices: exit (the vCPU thread runs the device, default) or ioeventfd (a VMM thread does; for comparison).")
    public var notify: NotifyPath = .exit

    @Option(name: .customLong(VMMLaunch.Flag.logLevel.rawValue), help: "Log level: trace, debug, info, notice, warning, error, critical.")
    public var logLevel: VMMLogLevel = .info

    // Options rtvisord uses (docs/daemon.md); each also works by hand.
    @Option(name: .customLong(VMMLaunch.Flag.baseDirectory.rawValue), help: "Resolve relative paths in the definition against this directory (the definition was copied).")
    public var baseDirectory: String?

    @Option(name: .customLong(VMMLaunch.Flag.consoleSocket.rawValue), help: "Serve the serial console on this unix socket (backlog + live output; input accepted).")
    public var consoleSocket: String?

    @Flag(name: .customLong(VMMLaunch.Flag.consoleJournal.rawValue), help: "Send each console output line to journald with VM_NAME (stdout gets no console output).")
    public var consoleJournal = false

    @Flag(name: .customLong(VMMLaunch.Flag.logJournal.rawValue), help: "Log to journald (native protocol, VM_NAME/VM_PID fields) instead of stderr.")
    public var logJournal = false

    @Option(name: .customLong(VMMLaunch.Flag.statusFile.rawValue), help: "At exit, write 'STATUS REASON' to this file (read by rtvisord after a restart).")
    public var statusFile: String?

    @Option(name: .customLong(VMMLaunch.Flag.cgroup.rawValue), help: "Move this process into this cgroup (v2 directory) before anything else runs.")
    public var cgroup: String?

    @Option(name: .customLong(VMMLaunch.Flag.latencyFile.rawValue), help: "A real-time VM's wake-up latency histogram (realtime.latency_probe_us) is written here as JSON once a second.")
    public var latencyFile: String?

    // The jail (docs/sandbox.md): as root, the VMM drops to its own uid in its own mount namespace
    // once the machine is built.
    @Flag(name: .customLong(VMMLaunch.Flag.noJail.rawValue), help: "Keep root and the host's file system (debugging only; the default as root is the jail).")
    public var noJail = false

    @Option(name: .customLong(VMMLaunch.Flag.jailUID.rawValue), help: "The jail's uid and gid (default: derived from the VM name).")
    public var jailUid: UInt32?

    @Flag(name: .customLong(VMMLaunch.Flag.traceStartup.rawValue), help: "Log how long each start-up step took (up to the guest's boot marker).")
    public var traceStartup = false

    @Option(name: .customLong(VMMLaunch.Flag.traceOrigin.rawValue), help: "With --trace-startup: CLOCK_MONOTONIC in ns when the caller started this process (the first step is then exec).")
    public var traceOriginNs: UInt64?

    @Flag(name: .customLong(VMMLaunch.Flag.keepRealtimePartitionOnReset.rawValue), help: "When the guest resets, leave the real-time partition in place for the next VMM of this VM (the caller starts it, or undoes the partition).")
    public var keepRealtimePartitionOnReset = false

    @Option(name: .customLong(VMMLaunch.Flag.restore.rawValue), help: "Resume the VM saved in this snapshot directory (docs/snapshot.md) instead of booting it.")
    public var restore: String?

    @Option(name: .customLong(VMMLaunch.Flag.restoreMemory.rawValue), help: "With --restore: copy (read guest memory into fresh memory, default) or map (map the memory file copy-on-write, shared with other VMs restored from it).")
    public var restoreMemory: RestoreMemoryMode = .copy

    @Option(name: .customLong(VMMLaunch.Flag.controlSocket.rawValue), help: "Serve the VMM control protocol (pause, resume, snapshot) on this unix socket (root only).")
    public var controlSocket: String?

    @Option(name: .customLong(VMMLaunch.Flag.incoming.rawValue), help: "Take the VM over from a live migration (docs/migration.md): unix:PATH or tcp:HOST:PORT to listen on, fd:N for a connected socket; the definition comes with it.")
    public var incoming: String?

    @Option(name: .customLong(VMMLaunch.Flag.incomingConfig.rawValue), help: "With --incoming and --config: the stream's hello and configuration were read by the caller, which saved the configuration (JSON) in this file.")
    public var incomingConfig: String?

    @Option(name: .customLong(VMMLaunch.Flag.channel.rawValue), help: "A shared-memory channel of the definition (docs/channels.md): NAME,file=PATH (default /dev/shm/rtvisor-channel-NAME, no doorbells), or NAME,fd=N[,doorbells=M] with inherited descriptors (rtvisord).")
    public var channel: [String] = []
    @Option(name: .customLong(VMMLaunch.Flag.noticeFD.rawValue), help: "An inherited socket (SOCK_SEQPACKET) to send notices on: guest ready, real-time partition applied (rtvisord's).")
    public var noticeFd: Int32?

    public mutating func validate() throws {
        if let bad = channel.first(where: { ChannelAttachment(encoded: $0) == nil }) {
            throw ValidationError("--channel \(bad): expected NAME,file=/ABSOLUTE/PATH or NAME,fd=N[,doorbells=M]")
        }
        if incomingConfig != nil && (incoming == nil || config == nil) { throw ValidationError("--incoming-config needs --incoming and --config") }
        if config == nil && restore == nil && incoming == nil && realtimeJanitor == nil {
            throw ValidationError("--config is required (or --restore DIR, or --incoming ADDRESS)")
        }
    }

    /// The VMM's real-time janitor mode (`RealtimeJanitorSpec`); started by the VMM itself.
    @Option(name: .customLong(VMMLaunch.Flag.realtimeJanitor.rawValue), help: .hidden)
    public var realtimeJanitor: String?

    public var launch: VMMLaunch {
        var l = VMMLaunch(definition: config ?? restore.map { SnapshotLayout.definition(in: $0) } ?? "")
        l.incoming = incoming
        l.incomingConfig = incomingConfig
        l.validateOnly = check
        l.consoleInput = !noConsoleInput
        l.consoleLog = consoleLog
        l.notify = notify
        l.logLevel = logLevel
        l.baseDirectory = baseDirectory
        l.consoleSocket = consoleSocket
        l.consoleJournal = consoleJournal
        l.logJournal = logJournal
        l.statusFile = statusFile
        l.cgroup = cgroup
        l.latencyFile = latencyFile
        l.jail = !noJail
        l.jailUID = jailUid
        l.traceStartup = traceStartup
        l.traceOrigin = traceOriginNs
        l.keepRealtimePartitionOnReset = keepRealtimePartitionOnReset
        l.restore = restore
        l.restoreMemory = restoreMemory
        l.controlSocket = controlSocket
        l.channels = channel.compactMap(ChannelAttachment.init(encoded:))
        l.noticeDescriptor = noticeFd
        return l
    }
}

/// What a real-time VMM's root janitor process is started with (docs/sandbox.md): the VM, the
/// VMM's pid, the CPUs and the highest priority it may grant, and the file that records the
/// partition. One argument: `NAME|PID|CPUS|MAXPRIO|ATTACHFILE`.
public struct RealtimeJanitorSpec: Equatable, Sendable {
    public var vm: String
    public var vmmPID: Int32
    public var cpus: [Int]
    public var maxPriority: Int
    public var attachFile: String?

    public init(vm: String, vmmPID: Int32, cpus: [Int], maxPriority: Int, attachFile: String?) {
        self.vm = vm; self.vmmPID = vmmPID; self.cpus = cpus; self.maxPriority = maxPriority; self.attachFile = attachFile
    }

    public var encoded: String {
        [vm, String(vmmPID), cpus.map(String.init).joined(separator: ","), String(maxPriority), attachFile ?? ""].joined(separator: "|")
    }

    /// The janitor's argv after the program name.
    public var arguments: [String] { [VMMLaunch.Flag.config.long, "/dev/null", VMMLaunch.Flag.realtimeJanitor.long, encoded] }

    public init?(encoded spec: String) {
        let f = spec.split(separator: "|", omittingEmptySubsequences: false).map(String.init)
        guard f.count == 5, let pid = Int32(f[1]), let prio = Int(f[3]) else { return nil }
        let cpus = f[2].split(separator: ",").map { Int($0) }
        guard !cpus.contains(nil) else { return nil }
        self.init(vm: f[0], vmmPID: pid, cpus: cpus.compactMap { $0 }, maxPriority: prio, attachFile: f[4].isEmpty ? nil : f[4])
    }
}
