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
import Sandbox
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Fixed guest-physical addresses of the platform (see docs/architecture.md).
public enum PlatformLayout {
    /// KVM needs three pages for the VMX real-mode TSS and one for the identity map, inside the MMIO hole.
    static let tssAddress: UInt64 = 0xFFFB_D000
    static let identityMapAddress: UInt64 = 0xFFFB_C000
    public static let bootMarker: UInt64 = 0xD000_0000
    public static let exitPort: UInt64 = 0xF4
    public static let com1: UInt64 = 0x3F8
    public static let com1IRQ: UInt32 = 4
    public static let i8042: UInt64 = 0x60
    public static let i8042IRQ: UInt32 = 1
    public static let cmos: UInt64 = 0x70
}

/// How virtio queue notifications reach the device model.
public enum NotifyPath: String, Sendable, CaseIterable {
    /// The notify write exits to the vCPU thread, which runs the device (default; docs/virtio.md).
    case exit
    /// KVM ioeventfd: the write completes in the kernel and a VMM thread runs the device.
    case ioeventfd
}

/// Options of one run that are not part of the VM definition.
public struct RunOptions: Sendable {
    /// Feed stdin to the serial port (foreground mode).
    public var consoleInput: Bool
    public var console: ConsoleOutput
    public var notifyPath: NotifyPath
    /// Where a real-time VM's wake-up latency probe publishes its histogram (JSON, once a second).
    public var latencyFile: String?
    public init(consoleInput: Bool = true, console: ConsoleOutput = ConsoleOutput(), notifyPath: NotifyPath = .exit, latencyFile: String? = nil) {
        self.consoleInput = consoleInput; self.console = console; self.notifyPath = notifyPath; self.latencyFile = latencyFile
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
    let pio: Bus
    let mmio: Bus
    let vcpus: [VCPU]
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

    public init(definition def: VMDefinition, options: RunOptions = RunOptions(), logger: Logger,
                processStartedAt: UInt64? = nil) throws {
        self.definition = def
        self.options = options
        self.logger = logger
        self.processStartedAt = processStartedAt

        let system = try KVMSystem()
        for (cap, name) in [(KVMCapability.irqchip, "KVM_CAP_IRQCHIP"), (KVMCapability.userMemory, "KVM_CAP_USER_MEMORY"),
                            (KVMCapability.setTSSAddress, "KVM_CAP_SET_TSS_ADDR"), (KVMCapability.pit2, "KVM_CAP_PIT2"),
                            (KVMCapability.extCPUID, "KVM_CAP_EXT_CPUID"), (KVMCapability.immediateExit, "KVM_CAP_IMMEDIATE_EXIT")] {
            try system.require(cap, name)
        }
        let maxVCPUs = Int(system.checkExtension(KVMCapability.maxVCPUs))
        if maxVCPUs > 0 && def.vcpus > maxVCPUs {
            throw VMMError.setup("\(def.vcpus) vCPUs requested, this host's KVM allows \(maxVCPUs)")
        }
        // Read the images before creating the VM: a missing or broken kernel fails fast.
        let kernel = try ImageFile.read(path: def.kernel)
        let emulating = KVMSystem.hostEmulatesRing0
        let policy = def.cpu.policy
        var cmdline = def.cmdline
        if KernelLoader.looksLikeLinux(kernel) {
            let existing = Set(cmdline.split(separator: " ").map(String.init))
            let additions = policy.linuxCommandLineAdditions(hostEmulatesRing0: emulating).filter { !existing.contains($0) }
            if !additions.isEmpty {
                logger.info("CPU template emulating-kvm: this host ignores some CPUID masks, adding kernel parameters: \(additions.joined(separator: " "))")
                cmdline += (cmdline.isEmpty ? "" : " ") + additions.joined(separator: " ")
            }
        }
        let images = BootImages(kernel: kernel, initrd: try def.initrd.map { try ImageFile.read(path: $0) },
                                commandLine: cmdline)
        // Before any thread exists (devices start I/O threads below): they inherit the
        // housekeeping affinity, and locked memory covers everything allocated from here on.
        let realtime = try def.realtime.map { try RealtimeSetup(definition: def, settings: $0, latencyFile: options.latencyFile, logger: logger) }
        self.realtime = realtime
        var initialized = false
        defer { if !initialized { realtime?.release() } }
        self.system = system
        let vm = try system.createVM()
        self.vm = vm
        self.createdAt = monotonicNanoseconds()
        try vm.setTSSAddress(PlatformLayout.tssAddress)
        try vm.setIdentityMapAddress(PlatformLayout.identityMapAddress)
        try vm.createIRQChip()
        try vm.createPIT()

        let memory = try GuestMemory.standard(bytes: UInt64(def.memoryMiB) << 20, backing: realtime?.memoryBacking ?? MemoryBacking())
        self.memory = memory
        for (slot, region) in memory.regions.enumerated() {
            try vm.setUserMemoryRegion(slot: UInt32(slot), guestAddress: region.start.raw, size: region.size, hostAddress: region.hostAddress)
        }
        // PCI devices before the boot tables: the MP table lists their interrupt routing.
        for (cap, name) in [(KVMCapability.irqfd, "KVM_CAP_IRQFD"), (KVMCapability.irqRouting, "KVM_CAP_IRQ_ROUTING")] where !(def.disks.isEmpty && def.nets.isEmpty) {
            try system.require(cap, name)
        }
        let offload: IOEventNotifier? = options.notifyPath == .ioeventfd ? try IOEventNotifier(vm: vm, logger: logger) : nil
        let pci = try PciDevices.build(definition: def, vm: vm, memory: memory, router: MsiRouter(vm: vm, logger: logger),
                                       notifyOffload: offload, logger: logger)
        pciDevices = pci.transports
        passthrough = pci.passthrough
        vfioContainer = pci.container
        var pciReleased = false
        defer {
            if !pciReleased {
                for d in pci.passthrough { d.stop() }
                pci.container?.close()
            }
        }
        let entry = try KernelLoader.load(images, into: memory, vcpus: def.vcpus, pciInterrupts: pci.interrupts)

        // Devices. They report guest requests to the stop controller, never to KVM.
        let stop = self.stop
        let onRequest: @Sendable (GuestRequest) -> Void = { req in
            switch req {
            case .powerOff: stop.request(.powerOff)
            case .reset: stop.request(.reset)
            case let .failure(code): stop.request(.guestFailure(code: code))
            }
        }
        let console = options.console
        serial = Serial8250(interrupt: KVMInterruptLine(vm: vm, irq: PlatformLayout.com1IRQ, logger: logger),
                            output: { console.write($0) })
        let created = createdAt
        let started = processStartedAt
        let name = def.name
        let markerLogger = logger
        let marker = BootMarker {
            let now = monotonicNanoseconds()
            var line = "boot marker: guest \(name) signalled ready \(Self.ms(now - created)) ms after VM creation"
            if let started { line += ", \(Self.ms(now - started)) ms after process start" }
            markerLogger.notice("\(line)")
        }
        keyboard = I8042(irq: KVMInterruptLine(vm: vm, irq: PlatformLayout.i8042IRQ, logger: logger), onRequest: onRequest)
        pio = try Bus(name: "pio", ranges: [
            .init(base: PlatformLayout.i8042, length: 5, name: "i8042", device: keyboard),
            .init(base: PlatformLayout.cmos, length: 2, name: "cmos", device: CMOSClock()),
            .init(base: PlatformLayout.exitPort, length: 1, name: "exit-port", device: ExitPort(onRequest: onRequest)),
            .init(base: PlatformLayout.com1, length: 8, name: "com1", device: serial),
            .init(base: PciRoot.configAddressPort, length: PciRoot.configPortsLength, name: "pci-config", device: pci.root.configAccess),
        ])
        mmio = try Bus(name: "mmio", ranges: [
            .init(base: PlatformLayout.bootMarker, length: 0x1000, name: "boot-marker", device: marker),
            .init(base: pci.root.windowBase, length: pci.root.windowSize, name: "pci-bars", device: pci.root.mmioWindow),
            // Guests may move BARs anywhere in the hole (an OS reassigning resources): decode the
            // rest of it up to the IOAPIC too, around the boot marker.
            .init(base: PlatformLayout.bootMarker + 0x1000, length: PciDevices.holeDecodeEnd - PlatformLayout.bootMarker - 0x1000,
                  name: "pci-bars-high", device: pci.root.barDecoder(base: PlatformLayout.bootMarker + 0x1000)),
        ])

        // vCPUs: CPUID from the policy, boot MSRs, FPU, LAPIC LINT pins; registers on the BSP only,
        // APs wait for INIT/SIPI in the in-kernel LAPIC.
        let supported = try system.supportedCPUID()
        let hidden = policy.hiddenFeatures(hostEmulatesRing0: emulating).map(\.name)
        logger.info("CPU template \(policy.effectiveTemplate(hostEmulatesRing0: emulating).rawValue), hidden features: \(hidden.isEmpty ? "none" : hidden.joined(separator: ","))")
        try realtime?.disableExits(system: system, vm: vm)
        var vcpus: [VCPU] = []
        for id in 0..<def.vcpus {
            let vcpu = try vm.createVCPU(id: id)
            try vcpu.setCPUID(policy.apply(to: supported, vcpuID: id, vcpuCount: def.vcpus, hostEmulatesRing0: emulating))
            try vcpu.setMSRs(MSR.bootValues)
            try vcpu.initFPU()
            try vcpu.setupLocalInterrupts()
            if id == 0 {
                let (regs, sregs) = KernelLoader.registers(for: entry)
                try vcpu.setSpecialRegisters(sregs)
                try vcpu.setRegisters(regs)
            }
            vcpus.append(vcpu)
            stop.register(vcpu)
        }
        self.vcpus = vcpus
        logger.info("VM \(def.name): \(def.vcpus) vCPU(s), \(def.memoryMiB) MiB, \(entry)")
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
        do { try Sandbox.enterThread(.vmm, label: "main") } catch { stop.request(.vmmError("seccomp filter of the main thread: \(error)")) }
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
        realtime?.release()
        let reason = stop.stopReason ?? .vmmError("all vCPU threads ended without a reason")
        let unhandled = pio.unhandled.total + mmio.unhandled.total
        if unhandled > 0 {
            let ports = pio.unhandled.snapshot.keys.sorted().prefix(12).map { "0x" + String($0, radix: 16) }
            logger.info("unhandled guest accesses: \(unhandled) (ports \(ports.joined(separator: " ")); mmio \(mmio.unhandled.total))")
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
                let n = buf.withUnsafeMutableBytes { Glibc.read(STDIN_FILENO, $0.baseAddress, $0.count) }
                if n < 0 && errno == EINTR { continue }
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
        // Exit counts by kind and address, logged at debug level when the vCPU ends: where a
        // guest's exits go is the first question of any performance investigation.
        var exits: [String: Int] = [:]
        let countExits = logger.logLevel <= .debug
        defer {
            if countExits {
                let top = exits.sorted { $0.value > $1.value }.prefix(8).map { "\($0.key) \($0.value)" }
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
            switch exit {
            case let .portIO(io):
                let port = UInt64(io.port)
                if countExits { exits["pio 0x" + String(port, radix: 16), default: 0] += 1 }
                for i in 0..<io.count {
                    if io.isWrite { pio.write(port, size: io.size, value: UInt64(io.value(at: i))) }
                    else { io.setValue(UInt32(truncatingIfNeeded: pio.read(port, size: io.size)), at: i) }
                }
            case let .mmio(m):
                if countExits { exits["mmio\(m.isWrite ? "w" : "r") 0x" + String(m.address, radix: 16), default: 0] += 1 }
                if m.isWrite { mmio.write(m.address, size: m.size, value: m.value) }
                else { m.setValue(mmio.read(m.address, size: m.size)) }
            case .interrupted:
                if countExits { exits["interrupted", default: 0] += 1 }
                vcpu.clearImmediateExit()
            case .halt:
                // Only without an in-kernel irqchip, which this VMM always creates.
                stop.request(.unexpectedExit(vcpu: vcpu.id, reason: UInt32(KVM_EXIT_HLT)))
            case .shutdown:
                stop.request(.tripleFault(vcpu: vcpu.id, rip: try? vcpu.registers().rip))
            case let .systemEvent(type):
                switch type {
                case SystemEventType.reset: stop.request(.reset)
                case SystemEventType.shutdown: stop.request(.powerOff)
                default: stop.request(.unexpectedExit(vcpu: vcpu.id, reason: UInt32(KVM_EXIT_SYSTEM_EVENT)))
                }
            case let .internalError(sub, data):
                stop.request(internalError(vcpu, suberror: sub, data: data))
            case let .failEntry(reason):
                stop.request(.entryFailure(vcpu: vcpu.id, reason: reason))
            case let .other(reason):
                stop.request(.unexpectedExit(vcpu: vcpu.id, reason: reason))
            }
        }
    }

    /// Collects RIP and the failing instruction's bytes for an internal error.
    func internalError(_ vcpu: VCPU, suberror: UInt32, data: [UInt64]) -> StopReason {
        let rip = try? vcpu.registers().rip
        var bytes: [UInt8] = []
        // With KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES, data[0] is the flags word and
        // data[1...] holds insn_size followed by up to 15 bytes.
        if suberror == InternalErrorSuberror.emulation, data.count >= 3, data[0] & 1 != 0 {
            var raw: [UInt8] = []
            for w in data[1...] { for i in 0..<8 { raw.append(UInt8(truncatingIfNeeded: w >> (8 * i))) } }
            let size = Int(raw[0])
            if size > 0 && size <= 15 && raw.count > size { bytes = Array(raw[1...size]) }
        }
        if bytes.isEmpty, let rip, let phys = try? vcpu.translate(rip) {
            // An instruction is at most 15 bytes; stop at the page end rather than fail.
            let n = Int(min(15, 0x1000 - (phys & 0xFFF)))
            bytes = (try? memory.read(n, at: GuestAddress(phys))) ?? []
        }
        let hint = suberror == InternalErrorSuberror.emulation ? EmulationFailureHint.diagnose(bytes) : nil
        return .internalError(vcpu: vcpu.id, suberror: suberror, rip: rip, instruction: bytes, hint: hint)
    }
}
