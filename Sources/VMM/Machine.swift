import Arch
import Boot
import Config
import Devices
import KVM
import Logging
import Memory
import CKVM
import PCI
import Posix
import Realtime
import VFIO
import VirtioBlock
import VirtioNet
import Sandbox
import Synchronization
import VMMInterface
#if canImport(Glibc)
import Glibc
#endif

/// Options of one run that are not part of the VM definition.
public struct RunOptions: Sendable {
    /// Feed stdin to the serial port (foreground mode).
    public var consoleInput: Bool
    public var console: ConsoleOutput
    public var notifyPath: NotifyPath
    /// Where a real-time VM's wake-up latency probe publishes its histogram (JSON, once a second).
    public var latencyFile: String?
    /// Start-up steps are marked here (`--trace-startup`); logged at the boot marker.
    public var trace: StartupTrace
    /// When the guest resets, leave a real-time VM's partition in place for the next VMM of the
    /// VM, which the caller starts (`--keep-realtime-partition-on-reset`, docs/realtime.md).
    public var keepRealtimePartitionOnReset: Bool
    /// The shared-memory channels' memory and doorbells, as rtvisord passed them (docs/channels.md).
    public var channels: [ChannelAttachment] = []
    /// rtvisord's notice socket (`--notice-fd`): guest ready, real-time partition applied.
    public var notices: VMMNoticeSender?
    public init(consoleInput: Bool = true, console: ConsoleOutput = ConsoleOutput(), notifyPath: NotifyPath = .exit, latencyFile: String? = nil,
                trace: StartupTrace = StartupTrace(enabled: false), keepRealtimePartitionOnReset: Bool = false, notices: VMMNoticeSender? = nil) {
        self.consoleInput = consoleInput; self.console = console; self.notifyPath = notifyPath; self.latencyFile = latencyFile
        self.trace = trace; self.keepRealtimePartitionOnReset = keepRealtimePartitionOnReset; self.notices = notices
    }
}

/// The interrupt line of the in-kernel PIC/IOAPIC for one IRQ.
struct KVMInterruptLine: InterruptLine {
    let vm: VirtualMachine
    let irq: UInt32
    let logger: Logger
    func setLevel(_ high: Bool) {
        do { try vm.setIRQLine(irq, high: high) } catch { logger.error("IRQ \(irq): \(error)") }
    }
}

/// One VM: its KVM handles, memory, devices and vCPUs. Built by `init`, run once by `run()`.
public final class Machine: @unchecked Sendable {
    public let definition: VMDefinition
    let logger: Logger
    let system: KVMSystem
    let vm: VirtualMachine
    public let memory: GuestMemory
    /// Port I/O and MMIO buses behind the vCPUs' exit dispatch.
    let exits: ExitDispatch
    let vcpus: [VCPU]
    /// Exits by kind, one set per vCPU (by index), for `statistics()`.
    let exitCounters: [ExitCounters]
    let serial: Serial8250
    /// virtio-pci devices (disks, NICs), reset when the VM stops so their I/O threads end.
    let pciDevices: [VirtioPciDevice]
    /// VFIO passthrough devices and their container: reset and released when the VM stops.
    let passthrough: [VfioPciDevice]
    let vfioContainer: VFIOContainer?
    /// Kept for `requestGuestShutdown()` (Ctrl-Alt-Del injection).
    let keyboard: I8042
    let stop = StopController()
    /// Opened once the main thread's seccomp filter is on; vCPU threads wait for it before KVM_RUN.
    let sandboxGate = Atomic<Bool>(false)
    let options: RunOptions
    /// When the VM was created; the boot marker is reported relative to it.
    public let createdAt: UInt64
    public let processStartedAt: UInt64?
    /// The host side of a real-time VM (nil for an ordinary one).
    let realtime: RealtimeSetup?
    // Snapshot and pause (Machine+Snapshot.swift).
    let cmos: CMOSClock
    let pciRoot: PciRoot
    let ioNotifier: IOEventNotifier?
    let pauseGate = VCPUPause()
    /// Restored devices are left paused until `run()` (see there).
    let restored: Bool
    let runControl = Mutex<VMMRunState>(.running)
    let cpuTemplate: CPUTemplate
    let diskBytes: [UInt64]
    /// The open disks: a migration hands their locks over (Machine+Migration.swift).
    let diskImages: [BlockImage]
    /// The NICs' taps, in the definition's order: a same-host upgrade passes them on.
    let taps: [Tap]
    /// What KVM supports on this host (the CPUID tables are derived from it): a snapshot's digest.
    let supportedCPUID: [CPUIDEntry]
    /// Read once at start: inside the jail the VMM cannot look at the host's KVM module any more.
    let hostEmulatesRing0: Bool
    /// For migration streams and their logs.
    let hostName = Machine.currentHostName
    var cpuidDigest: String { SnapshotCodec.cpuidDigest(definition, supportedCPUID: supportedCPUID, hostEmulatesRing0: hostEmulatesRing0) }

    /// Builds the VM from its definition (`MachineStart`): booting it, resuming a snapshot of it
    /// (docs/snapshot.md), or empty for a live migration to fill (docs/migration.md). The same
    /// phases each time; a resumed machine gets its memory, registers and device state from the
    /// snapshot or the stream instead of a kernel being loaded.
    public init(definition def: VMDefinition, options: RunOptions = RunOptions(), logger: Logger,
                processStartedAt: UInt64? = nil, start: MachineStart = .boot) throws {
        let source: SnapshotSource? = if case let .snapshot(s) = start { s } else { nil }
        self.definition = def
        self.options = options
        self.logger = logger
        self.processStartedAt = processStartedAt
        let emulating = KVMSystem.hostEmulatesRing0
        self.hostEmulatesRing0 = emulating

        let trace = options.trace
        let system = try MachinePhase.checkHost(def)
        trace.mark("host checks")
        let incoming: Bool = if case .incoming = start { true } else { false }
        let handedOver: HandedOver? = if case let .incoming(h) = start { h } else { nil }
        let files = try MachinePhase.openGuestFiles(def, hostEmulatesRing0: emulating, bootImages: start.boots, lockDisks: !incoming, logger: logger)
        trace.mark("guest files")
        let supported = try system.supportedCPUID()
        self.supportedCPUID = supported
        let template = def.cpu.policy.effectiveTemplate(hostEmulatesRing0: emulating)
        self.cpuTemplate = template
        self.diskBytes = files.disks.map(\.size)
        self.diskImages = files.disks
        let loaded = try source.map {
            let l = try SnapshotReader.load($0, definition: def, cpuTemplate: template.rawValue,
                                           cpuidDigest: SnapshotCodec.cpuidDigest(def, supportedCPUID: supported, hostEmulatesRing0: emulating))
            try SnapshotReader.checkDisks(l.header, sizes: files.disks.map(\.size), directory: $0.directory)
            return l
        }
        defer { try? loaded?.memoryFile.close() }
        if loaded != nil { trace.mark("snapshot read") }
        let realtime = try MachinePhase.realtimeHostSide(def, latencyFile: options.latencyFile, logger: logger)
        trace.mark("real-time host side")
        self.realtime = realtime
        if let rt = def.realtime {
            options.notices?.send(.realtimeApplied(cpus: rt.cpus, priority: rt.priority,
                                                   summary: realtime?.partition?.summary ?? "vCPUs pinned, no cpuset partition"))
        }
        var initialized = false
        defer { if !initialized { realtime?.release() } }
        self.system = system
        let backing = realtime?.memoryBacking ?? MemoryBacking()
        let restoredMemory = try loaded.map { try SnapshotReader.memory($0, mode: source!.memory, backing: backing, directory: source!.directory) }
            ?? handedOver?.memory.map { try GuestMemory.adopting($0, bytes: UInt64(def.memoryMiB) << 20, backing: backing) }
        if loaded != nil { trace.mark("snapshot memory (\(source!.memory.rawValue))") }
        let (vm, memory, slots) = try MachinePhase.createVM(system, def, memory: restoredMemory, backing: backing)
        self.vm = vm
        self.memory = memory
        let createdAt = monotonicNanoseconds()
        self.createdAt = createdAt
        trace.mark("VM and memory (slots started)")

        let stop = self.stop
        let name = def.name
        let notices = options.notices
        let devices = try MachinePhase.buildDevices(
            def, disks: files.disks, taps: handedOver?.taps, vm: vm, memory: memory, notifyPath: options.notifyPath, console: options.console,
            channels: options.channels, channelBacking: backing,
            onRequest: { req in
                switch req {
                case .powerOff: stop.request(.powerOff)
                case .reset: stop.request(.reset)
                case let .failure(code): stop.request(.guestFailure(code: code))
                }
            },
            onMarker: {
                let now = monotonicNanoseconds()
                var line = "boot marker: guest \(name) signalled ready \(Self.ms(now - createdAt)) ms after VM creation"
                if let processStartedAt { line += ", \(Self.ms(now - processStartedAt)) ms after process start" }
                logger.notice("\(line)")
                notices?.send(.guestReady(millisecondsAfterVMCreation: Double(now - createdAt) / 1e6))
                if let steps = trace.finish() { logger.notice("\(steps)") }
            },
            logger: logger)
        let pci = devices.pci
        var pciReleased = false
        defer {
            if !pciReleased {
                for d in pci.passthrough { d.stop() }
                pci.container?.close()
            }
        }
        pciDevices = pci.transports
        passthrough = pci.passthrough
        vfioContainer = pci.container
        serial = devices.serial
        keyboard = devices.keyboard
        cmos = devices.cmos
        pciRoot = pci.root
        ioNotifier = devices.ioNotifier
        taps = pci.taps
        exits = ExitDispatch(pio: devices.pio, mmio: devices.mmio, memory: memory)
        trace.mark("devices")

        let vcpuStart: MachinePhase.VCPUStart
        if start.boots {
            vcpuStart = .boot(try MachinePhase.loadGuest(files.boot!, into: memory, vcpus: def.vcpus, pci: pci))
            trace.mark("guest loaded")
        } else {
            vcpuStart = .restoreLater
        }
        // Exits are disabled per VM, before its vCPUs exist.
        try realtime?.disableExits(system: system, vm: vm)
        exitCounters = (0..<def.vcpus).map { _ in ExitCounters() }
        vcpus = try MachinePhase.createVCPUs(system, vm: vm, def, start: vcpuStart, supported: supported, hostEmulatesRing0: emulating, logger: logger)
        trace.mark("vCPUs")
        try slots.wait()
        trace.mark("memory slots (overlapped)")
        restored = !start.boots
        for vcpu in vcpus { stop.register(vcpu) }
        if let loaded {
            try applyState(loaded.state, from: "snapshot \(source!.directory)")
            trace.mark("state restored")
        }
        switch (vcpuStart, start) {
        case let (.boot(entry), _): logger.info("VM \(def.name): \(def.vcpus) vCPU(s), \(def.memoryMiB) MiB, \(entry)")
        case let (_, .snapshot(s)): logger.info("VM \(def.name): \(def.vcpus) vCPU(s), \(def.memoryMiB) MiB, restored from \(s.directory) (memory: \(s.memory.rawValue))")
        default: logger.info("VM \(def.name): \(def.vcpus) vCPU(s), \(def.memoryMiB) MiB, waiting for its memory and state (incoming migration)")
        }
        initialized = true
        pciReleased = true
    }

    static func ms(_ ns: UInt64) -> String {
        let tenths = ns / 100_000
        return "\(tenths / 10).\(tenths % 10)"
    }

    /// Runs the guest until it stops; returns why.
    public func run() -> StopReason {
        ckvm_install_kick_handler(VCPU.kickSignal)
        let terminal = TerminalMode(rawInput: options.consoleInput)
        defer { terminal.restore() }
        // Restored devices start their I/O (virtio-net's receive thread) only now: after the
        // jail, which is entered single-threaded, and with the interrupt controllers and vCPUs
        // restored, so nothing they raise is lost.
        if restored { for d in pciDevices { d.resume() } }
        options.trace.mark("devices resumed")
        var threads: [PosixThread] = []
        for vcpu in vcpus {
            do {
                threads.append(try PosixThread(name: "vcpu\(vcpu.id)") { [self] in self.vcpuLoop(vcpu) })
            } catch {
                stop.request(.vmmError("\(error)"))
            }
        }
        // The main thread's seccomp filter (docs/sandbox.md), once the vCPU threads exist (they
        // must not inherit it) and before any of them enters the guest (they wait for the gate).
        // Threads started from here on (console input, latency probe) inherit it.
        options.trace.mark("vCPU threads")
        do { try Sandbox.enterThread(.vmm, label: "main") } catch { stop.request(.vmmError("seccomp filter of the main thread: \(error)")) }
        options.trace.mark("main thread's filter")
        sandboxGate.store(true, ordering: .releasing)
        if options.consoleInput { startConsoleInput() }
        realtime?.probe?.start()
        for t in threads { t.join() }
        for d in pciDevices { d.reset() }
        // Passthrough devices: interrupts off, slots removed, device reset, DMA unmapped.
        for d in passthrough { d.stop() }
        vfioContainer?.close()
        realtime?.probe?.stop()
        realtime?.probe?.finish()
        let reason = stop.stopReason ?? .vmmError("all vCPU threads ended without a reason")
        if reason == .reset && options.keepRealtimePartitionOnReset { realtime?.handOver() } else if let how = realtime?.release() {
            options.notices?.send(.realtimeReleased(how: how))
        }
        if let steps = options.trace.finish() { logger.notice("\(steps) (no boot marker)") }
        let unhandled = exits.pio.unhandled.total + exits.mmio.unhandled.total
        if unhandled > 0 {
            let ports = exits.pio.unhandled.snapshot.keys.sorted().prefix(12).map { "0x" + String($0, radix: 16) }
            let overflow = exits.pio.unhandled.overflow + exits.mmio.unhandled.overflow
            logger.info("unhandled guest accesses: \(unhandled) (ports \(ports.joined(separator: " ")); mmio \(exits.mmio.unhandled.total)\(overflow > 0 ? "; \(overflow) at addresses beyond the first \(UnhandledAccesses.maxAddresses), not counted one by one" : ""))")
        }
        return reason
    }

    /// Requests a stop from outside (a signal handler thread, the daemon).
    public func requestStop(_ reason: StopReason) { stop.request(reason) }

    /// Asks the guest to shut down (Ctrl-Alt-Del on the i8042); the VM keeps running until the
    /// guest acts on it.
    public func requestGuestShutdown() { keyboard.injectScancodes(I8042.ctrlAltDel) }

    /// Feeds bytes to the serial port's receiver (console clients other than stdin).
    @discardableResult
    public func enqueueConsoleInput(_ bytes: ArraySlice<UInt8>) -> Int { serial.enqueueInput(bytes) }

    private func startConsoleInput() {
        let serial = self.serial
        let thread = try? PosixThread(name: "console-in") {
            var buf = [UInt8](repeating: 0, count: 256)
            while true {
                let n = (try? buf.withUnsafeMutableBytes { raw in try retryInterrupted { Glibc.read(STDIN_FILENO, raw.baseAddress, raw.count) } }) ?? 0
                if n <= 0 { return }
                serial.enqueueInput(buf[0..<n])
            }
        }
        thread?.detach()
    }

    // MARK: the vCPU loop

    func vcpuLoop(_ vcpu: VCPU) {
        // The kick signal must be deliverable here whatever mask the VMM was started with
        // (a parent that blocks SIGUSR2 would otherwise leave halted vCPUs unstoppable).
        ckvm_block_signal(VCPU.kickSignal, 0)
        if let realtime {
            do { try realtime.enterVCPUThread(index: Int(vcpu.id)) } catch {
                stop.request(.vmmError("\(error)"))
                return
            }
            // How fast a real-time guest gets going (scripts/bench-rt-start.sh reads this).
            if vcpu.id == 0, let started = processStartedAt {
                logger.notice("vCPU 0 enters the guest \(Self.ms(monotonicNanoseconds() - started)) ms after process start")
            }
        }
        do { try Sandbox.enterThread(.vcpu, label: "vcpu\(vcpu.id)") } catch {
            stop.request(.vmmError("vCPU \(vcpu.id): seccomp filter: \(error)"))
            return
        }
        while !sandboxGate.load(ordering: .acquiring) { sched_yield() }
        vcpu.bindToCurrentThread()
        if vcpu.id == 0 {
            options.trace.mark("vCPU 0's filter and first KVM_RUN")
            options.notices?.send(.guestStarted)
            // When a moved guest really runs again: with the source's "paused at" (same host, the
            // same monotonic clock) it gives the pause the guest saw (scripts/bench-migration.sh).
            if restored {
                let now = monotonicNanoseconds()  // before the log line's own cost
                logger.notice("vCPU 0 enters the guest at monotonic \(now) ns")
            }
        }
        // Exit counts by kind and address, logged at debug level when the vCPU ends: where a
        // guest's exits go is the first question of any performance investigation.
        var exitCounts: [String: Int] = [:]
        let countExits = logger.logLevel <= .debug
        #if !RTVISOR_NO_EXIT_COUNTERS
        let counters = exitCounters[vcpu.id]
        #endif
        defer {
            if countExits {
                let top = exitCounts.sorted { $0.value > $1.value }.prefix(8).map { "\($0.key) \($0.value)" }
                logger.debug("vCPU \(vcpu.id) exits: \(top.joined(separator: ", "))")
            }
            vcpu.unbindThread()
            // Where each vCPU was when stopped from outside: the first clue for a hung guest.
            if case .signal = stop.stopReason, let regs = try? vcpu.registers() {
                logger.info("vCPU \(vcpu.id) stopped at RIP 0x\(String(regs.rip, radix: 16)), RSP 0x\(String(regs.rsp, radix: 16))")
            }
        }
        while !stop.isStopping {
            let exit: VCPUExit
            do { exit = try vcpu.run() } catch {
                stop.request(.vmmError("vCPU \(vcpu.id): \(error)"))
                return
            }
            #if !RTVISOR_NO_EXIT_COUNTERS
            counters.count(exit)
            #endif
            if countExits { exitCounts[ExitDispatch.label(exit), default: 0] += 1 }
            switch exits.handle(exit, on: vcpu) {
            case .resume: continue
            case .resumeAfterKick:
                pauseGate.parkIfRequested(stopping: { stop.isStopping })
                vcpu.clearImmediateExit()
            case let .stop(reason): stop.request(reason)
            }
        }
    }
}
