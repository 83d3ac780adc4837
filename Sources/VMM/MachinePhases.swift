import Arch
import Boot
import Config
import Devices
import KVM
import Logging
import Memory
import PCI
import Posix
import Realtime
import SystemPackage
import VFIO
import VirtioBlock
import VirtioNet
import VMMInterface
#if canImport(Glibc)
import Glibc
#endif

/// How a `Machine` is built, one phase at a time, each a function from its inputs to its outputs:
/// host checks → guest files → real-time host side → VM and memory → devices → guest loaded → vCPUs.
/// A machine restored from saved state (issue 18) reuses the phases and swaps the ones that
/// differ (no image load, registers from the snapshot) instead of copying the whole setup.
enum MachinePhase {
    /// 1. The KVM capabilities this VMM relies on, and the host's vCPU limit.
    static func checkHost(_ def: VMDefinition) throws -> KVMSystem {
        let system = try KVMSystem()
        for (cap, name) in [(KVMCapability.irqchip, "KVM_CAP_IRQCHIP"), (KVMCapability.userMemory, "KVM_CAP_USER_MEMORY"),
                            (KVMCapability.setTSSAddress, "KVM_CAP_SET_TSS_ADDR"), (KVMCapability.pit2, "KVM_CAP_PIT2"),
                            (KVMCapability.extCPUID, "KVM_CAP_EXT_CPUID"), (KVMCapability.immediateExit, "KVM_CAP_IMMEDIATE_EXIT")] {
            try system.require(cap, name)
        }
        // PCI devices signal MSI-X through irqfds on GSI routes.
        for (cap, name) in [(KVMCapability.irqfd, "KVM_CAP_IRQFD"), (KVMCapability.irqRouting, "KVM_CAP_IRQ_ROUTING")] where !(def.disks.isEmpty && def.nets.isEmpty) {
            try system.require(cap, name)
        }
        let maxVCPUs = Int(system.checkExtension(KVMCapability.maxVCPUs))
        if maxVCPUs > 0 && def.vcpus > maxVCPUs {
            throw VMMError.setup("\(def.vcpus) vCPUs requested, this host's KVM allows \(maxVCPUs)")
        }
        return system
    }

    /// What the guest files phase hands on: the boot images read, the disks opened and locked.
    struct GuestFiles {
        /// nil when restoring a snapshot: the guest is already in memory.
        let boot: BootImages?
        let disks: [BlockImage]
    }

    /// 2. Every file the definition names, opened once and before the VM exists (a missing,
    /// refused or busy file fails fast): found under docs/sandbox.md's rules (`GuestFile`: only
    /// root's symlinks, no FIFOs or devices opened, the kind each field allows), then read or
    /// kept open through that descriptor alone; nothing looks the paths up again, the jail
    /// included. A Linux command line gets the parameters its CPU template needs on this host.
    /// `lockDisks: false` (a migration's target): the disks are locked when the VM moves here.
    static func openGuestFiles(_ def: VMDefinition, hostEmulatesRing0 emulating: Bool, bootImages: Bool = true, lockDisks: Bool = true,
                               logger: Logger) throws -> GuestFiles {
        func locate(_ path: String, _ field: String, _ kinds: Set<GuestFile.Kind>) throws -> GuestFile {
            let file: GuestFile
            do { file = try GuestFile.locate(path, field: field, allowing: kinds) } catch { throw VMMError.setup("\(error)") }
            if let others = file.writableByOthers {
                logger.warning("\(field): \(path) can be changed by users other than root (\(others)): they decide what this VM reads from it")
            }
            return file
        }
        func read(_ path: String, _ field: String) throws -> ImageFile {
            let file = try locate(path, field, [.regularFile])
            let fd: FileDescriptor
            do { fd = try file.open(O_RDONLY) } catch { throw VMMError.setup("\(field): \(path): cannot open: \(error)") }
            defer { try? fd.close() }
            return try ImageFile.read(from: fd, path: path)
        }
        var disks: [BlockImage] = []
        for (i, disk) in def.disks.enumerated() {
            let field = "$.disks[\(i)].path"
            let file = try locate(disk.path, field, [.regularFile, .blockDevice])
            do { disks.append(try BlockImage(file: file, readOnly: disk.readOnly, directIO: disk.directIO, lockNow: lockDisks)) }
            catch let e as BlockImageError { throw VMMError.setup("\(field): \(e)") }
        }
        guard bootImages else { return GuestFiles(boot: nil, disks: disks) }
        let kernel = try read(def.kernel, "$.kernel")
        let initrd = try def.initrd.map { try read($0, "$.initrd") }
        var cmdline = def.cmdline
        if KernelLoader.looksLikeLinux(kernel) {
            let existing = Set(cmdline.split(separator: " ").map(String.init))
            let additions = def.cpu.policy.linuxCommandLineAdditions(hostEmulatesRing0: emulating).filter { !existing.contains($0) }
            if !additions.isEmpty {
                logger.info("CPU template emulating-kvm: this host ignores some CPUID masks, adding kernel parameters: \(additions.joined(separator: " "))")
                cmdline += (cmdline.isEmpty ? "" : " ") + additions.joined(separator: " ")
            }
        }
        return GuestFiles(boot: BootImages(kernel: kernel, initrd: initrd, commandLine: cmdline), disks: disks)
    }

    /// 3. A real-time VM's host side, before any thread exists (devices start I/O threads next):
    /// they inherit the housekeeping affinity, and locked memory covers everything from here on.
    static func realtimeHostSide(_ def: VMDefinition, latencyFile: String?, logger: Logger) throws -> RealtimeSetup? {
        try def.realtime.map { try RealtimeSetup(definition: def, settings: $0, latencyFile: latencyFile, logger: logger) }
    }

    /// 4. The VM with its in-kernel irqchip and PIT, and guest RAM, whose memory slots are
    /// registered on a thread of their own while the next phases run (`PendingMemoryRegions`:
    /// the kernel's grace period for the first slot is the longest step of a start). The caller
    /// waits for them before any vCPU runs.
    /// `memory`: guest RAM already there (a restored snapshot's).
    static func createVM(_ system: KVMSystem, _ def: VMDefinition, memory restored: GuestMemory? = nil, backing: MemoryBacking) throws
        -> (vm: VirtualMachine, memory: GuestMemory, slots: PendingMemoryRegions) {
        let vm = try system.createVM()
        try vm.setTSSAddress(GuestLayout.kvmTSS)
        try vm.setIdentityMapAddress(GuestLayout.kvmIdentityMap)
        try vm.createIRQChip()
        try vm.createPIT()
        let memory = try restored ?? GuestMemory.standard(bytes: UInt64(def.memoryMiB) << 20, backing: backing)
        let slots = try vm.setUserMemoryRegionsInBackground(memory.regions.enumerated().map { slot, region in
            MemoryRegionSpec(slot: UInt32(slot), guestAddress: region.start.raw, size: region.size, hostAddress: region.hostAddress)
        })
        return (vm, memory, slots)
    }

    /// The platform devices and the two buses the vCPUs dispatch exits to.
    struct Devices {
        let pci: PciDevices.Built
        let serial: Serial8250
        let keyboard: I8042
        let cmos: CMOSClock
        /// The ioeventfd doorbell thread (`--notify ioeventfd`), paused with the vCPUs.
        let ioNotifier: IOEventNotifier?
        let pio: Bus
        let mmio: Bus
    }

    /// 5. PCI (disks, NICs, passthrough) and the platform devices. They report guest requests to
    /// `onRequest` and the boot marker to `onMarker`, never to KVM.
    /// `taps`: open taps to use instead of opening the definition's (a same-host upgrade's).
    static func buildDevices(_ def: VMDefinition, disks: [BlockImage], taps: [Tap]?, vm: VirtualMachine, memory: GuestMemory, notifyPath: NotifyPath,
                             console: ConsoleOutput, channels: [ChannelAttachment] = [], channelBacking: MemoryBacking = MemoryBacking(), onRequest: @escaping @Sendable (GuestRequest) -> Void,
                             onMarker: @escaping @Sendable () -> Void, logger: Logger) throws -> Devices {
        let offload: IOEventNotifier? = notifyPath == .ioeventfd ? try IOEventNotifier(vm: vm, logger: logger) : nil
        let pci = try PciDevices.build(definition: def, disks: disks, taps: taps, vm: vm, memory: memory, router: MsiRouter(vm: vm, logger: logger),
                                       notifyOffload: offload, channels: channels, channelBacking: channelBacking, logger: logger)
        let serial = Serial8250(interrupt: KVMInterruptLine(vm: vm, irq: GuestLayout.com1IRQ, logger: logger), output: { console.write($0) })
        let keyboard = I8042(irq: KVMInterruptLine(vm: vm, irq: GuestLayout.i8042IRQ, logger: logger), onRequest: onRequest)
        let cmos = CMOSClock()
        let pio = try Bus(name: "pio", ranges: [
            .init(base: GuestLayout.i8042Port, length: GuestLayout.i8042PortCount, name: "i8042", device: keyboard),
            .init(base: GuestLayout.cmosPort, length: GuestLayout.cmosPortCount, name: "cmos", device: cmos),
            .init(base: GuestLayout.exitPort, length: 1, name: "exit-port", device: ExitPort(onRequest: onRequest)),
            .init(base: GuestLayout.com1Port, length: GuestLayout.com1PortCount, name: "com1", device: serial),
            .init(base: GuestLayout.pciConfigPort, length: GuestLayout.pciConfigPortCount, name: "pci-config", device: pci.root.configAccess),
        ])
        let aboveMarker = GuestLayout.bootMarker + GuestLayout.bootMarkerSize
        let mmio = try Bus(name: "mmio", ranges: [
            .init(base: GuestLayout.bootMarker, length: GuestLayout.bootMarkerSize, name: "boot-marker", device: BootMarker(onMarker: onMarker)),
            .init(base: pci.root.windowBase, length: pci.root.windowSize, name: "pci-bars", device: pci.root.mmioWindow),
            // Guests may move BARs anywhere in the hole (an OS reassigning resources): decode the
            // rest of it up to the IOAPIC too, around the boot marker.
            .init(base: aboveMarker, length: GuestLayout.pciDecodeEnd - aboveMarker, name: "pci-bars-high", device: pci.root.barDecoder(base: aboveMarker)),
        ])
        return Devices(pci: pci, serial: serial, keyboard: keyboard, cmos: cmos, ioNotifier: offload, pio: pio, mmio: mmio)
    }

    /// 6. The guest laid into memory (after PCI: the MP table lists its interrupt routing).
    static func loadGuest(_ images: BootImages, into memory: GuestMemory, vcpus: Int, pci: PciDevices.Built) throws -> EntryState {
        try KernelLoader.load(images, into: memory, vcpus: vcpus, pciInterrupts: pci.interrupts)
    }

    /// How the vCPUs start: at the loaded guest's entry point, or where a snapshot left them.
    enum VCPUStart {
        case boot(EntryState)
        /// Created bare: `Machine.applyState` loads them (a snapshot's or a migration's state).
        case restoreLater
    }



    /// 7. vCPUs: CPUID from the policy, boot MSRs, FPU, LAPIC LINT pins; registers on the BSP only,
    /// APs wait for INIT/SIPI in the in-kernel LAPIC. Restored vCPUs get all of it from the snapshot.
    static func createVCPUs(_ system: KVMSystem, vm: VirtualMachine, _ def: VMDefinition, start: VCPUStart, supported: [CPUIDEntry],
                            hostEmulatesRing0 emulating: Bool, logger: Logger) throws -> [VCPU] {
        let policy = def.cpu.policy
        let hidden = policy.hiddenFeatures(hostEmulatesRing0: emulating).map(\.name)
        logger.info("CPU template \(policy.effectiveTemplate(hostEmulatesRing0: emulating).rawValue), hidden features: \(hidden.isEmpty ? "none" : hidden.joined(separator: ","))")
        var vcpus: [VCPU] = []
        for id in 0..<def.vcpus {
            let vcpu = try vm.createVCPU(id: id)
            switch start {
            case .restoreLater:
                break
            case let .boot(entry):
                try vcpu.setCPUID(policy.apply(to: supported, vcpuID: id, vcpuCount: def.vcpus, hostEmulatesRing0: emulating))
                try vcpu.setMSRs(MSR.bootValues)
                try vcpu.initFPU()
                try vcpu.setupLocalInterrupts()
                if id == 0 {
                    let (regs, sregs) = KernelLoader.registers(for: entry)
                    try vcpu.setSpecialRegisters(sregs)
                    try vcpu.setRegisters(regs)
                }
            }
            vcpus.append(vcpu)
        }
        return vcpus
    }
}
