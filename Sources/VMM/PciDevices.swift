import Arch
import Config
import Devices
import KVM
import Logging
import Memory
import PCI
import Virtio
import VirtioBlock
import VirtioNet
import VFIO
import VMMInterface

/// Builds the PCI root bus with the definition's disks and NICs as virtio-pci devices.
enum PciDevices {
    struct Built {
        let root: PciRoot
        let transports: [VirtioPciDevice]
        /// The NICs' taps, in the definition's order.
        let taps: [Tap]
        /// Host functions passed through with VFIO, and their container (DMA map of guest RAM).
        let passthrough: [VfioPciDevice]
        let container: VFIOContainer?
        /// slot → IOAPIC pin, for the MP table.
        let interrupts: [(slot: Int, ioapicPin: UInt8)]
    }

    /// `disks` are the definition's disks in order, opened by the guest files phase.
    /// `handedTaps`: taps opened by another VMM of this VM (a same-host upgrade), one per NIC.
    static func build(definition def: VMDefinition, disks: [BlockImage], taps handedTaps: [Tap]?, vm: VirtualMachine, memory: GuestMemory, router: MsiRouter,
                      notifyOffload: (any NotifyOffload)?, channels attachments: [ChannelAttachment] = [], channelBacking: MemoryBacking = MemoryBacking(),
                      logger: Logger) throws -> Built {
        var devices: [any VirtioDevice] = []
        for (i, (disk, image)) in zip(def.disks, disks).enumerated() {
            devices.append(VirtioBlock(name: "blk\(i)", image: image, settings: BlockDeviceSettings(serial: disk.serial)))
            logger.info("blk\(i): \(disk.path), \(image.sectors) sectors\(disk.readOnly ? ", read-only" : "")\(disk.directIO ? ", O_DIRECT" : "")")
        }
        if let handedTaps, handedTaps.count != def.nets.count {
            throw VMMError.setup("\(handedTaps.count) taps were handed over for \(def.nets.count) NICs")
        }
        var taps: [Tap] = []
        for (i, net) in def.nets.enumerated() {
            let tap: Tap
            var setup = ""
            if let handedTaps {
                // Already on its bridge with its MTU: the VMM that opened it set it up.
                tap = handedTaps[i]
                guard net.tap.isEmpty || tap.name == net.tap else { throw VMMError.setup("$.nets[\(i)].tap: \(net.tap), but the tap handed over is \(tap.name)") }
            } else {
                (tap, setup) = try openTap(net, index: i)
            }
            taps.append(tap)
            let log = logger
            devices.append(VirtioNet(name: "net\(i)", tap: tap, mac: net.mac, mtu: net.mtu.map(UInt16.init), onHostError: { log.warning("\($0)") }))
            logger.info("net\(i): tap \(tap.name)\(setup), MAC \(NetSettings.format(net.mac))\(tap.supportsOffloads ? ", offloads" : "")")
        }
        var transports: [VirtioPciDevice] = []
        var interrupts: [(slot: Int, ioapicPin: UInt8)] = []
        for (index, device) in devices.enumerated() {
            let slot = index + 1
            let pin = GuestLayout.firstPCIInterruptPin + UInt32(index % 8)
            let sink = try router.makeSink(vectors: device.queueMaxSizes.count + 1, device: device.name)
            let log = logger
            transports.append(VirtioPciDevice(device: device, memory: memory, msiSink: sink,
                                              intx: KVMInterruptLine(vm: vm, irq: pin, logger: logger),
                                              intxLine: UInt8(pin), notifyOffload: notifyOffload,
                                              onError: { log.error("\($0)") }))
            interrupts.append((slot, UInt8(pin)))
        }
        let (container, passthrough) = try buildPassthrough(definition: def, vm: vm, memory: memory, router: router,
                                                            firstIndex: devices.count, logger: logger)
        for (i, device) in passthrough.enumerated() where device.interruptPin != 0 {
            interrupts.append((devices.count + i + 1, UInt8(GuestLayout.firstPCIInterruptPin + UInt32((devices.count + i) % 8))))
        }
        do {
            let channels = try ChannelDevices.build(def, attachments: attachments, vm: vm, router: router, backing: channelBacking, logger: logger)
            let root = try PciRoot(devices: transports + passthrough + channels, windowBase: GuestLayout.pciWindowBase, windowSize: GuestLayout.pciWindowSize)
            return Built(root: root, transports: transports, taps: taps, passthrough: passthrough, container: container, interrupts: interrupts)
        } catch {
            for d in passthrough { d.stop() }
            container?.close()
            throw error
        }
    }

    /// Host checks, one VFIO container for the VM, every group attached, all guest RAM mapped for
    /// DMA, then each device reset and wired (docs/vfio.md).
    static func buildPassthrough(definition def: VMDefinition, vm: VirtualMachine, memory: GuestMemory, router: MsiRouter,
                                 firstIndex: Int, logger: Logger) throws -> (VFIOContainer?, [VfioPciDevice]) {
        guard !def.passthrough.isEmpty else { return (nil, []) }
        let host = HostPCI()
        let plan: PassthroughPlan
        do { plan = try PassthroughPlan.resolve(def.passthrough.map(\.pci), host: host) }
        catch { throw VMMError.setup("\(error)") }
        let container: VFIOContainer
        do { container = try VFIOContainer(kernel: LinuxVFIO()) } catch { throw VMMError.setup("passthrough: \(error)") }
        var devices: [VfioPciDevice] = []
        do {
            for region in memory.regions {
                try container.mapDMA(iova: region.start.raw, size: region.size, hostAddress: region.hostAddress)
            }
            let platform = KVMPassthroughPlatform(vm: vm, router: router, logger: logger)
            var index = firstIndex
            for (group, addresses) in plan.groups {
                let fd = try container.attachGroup(group, explain: {
                    host.groupMembers(group).compactMap { m in host.driver(of: m).map { "\(m) (driver \($0))" } }.joined(separator: ", ")
                })
                for address in addresses {
                    let name = "hostdev\(devices.count)"
                    let pin = UInt8(GuestLayout.firstPCIInterruptPin + UInt32(index % 8))
                    let vfio = try VFIODevice(kernel: container.kernel, group: fd, address: "\(address)")
                    let log = logger
                    let device = try VfioPciDevice(name: name, device: vfio, platform: platform, intxPin: pin, onError: { log.error("\($0)") })
                    devices.append(device)
                    try device.start()
                    index += 1
                    logger.info("\(name): \(address) [\(host.identity(of: address) ?? "?")] passed through (IOMMU group \(group), BARs \(device.barState.bars.map { "\($0.index):\($0.size >> 10) KiB" }.joined(separator: " ")), MSI-X \(device.msixTable?.vectorCount ?? 0) vectors, INTx \(device.interruptPin != 0 ? "pin \(pin)" : "none"))")
                }
            }
        } catch {
            for d in devices { d.stop() }
            container.close()
            throw VMMError.setup("passthrough: \(error)")
        }
        return (container, devices)
    }
}
