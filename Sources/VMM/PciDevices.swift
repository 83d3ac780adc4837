import Config
import Devices
import KVM
import Logging
import Memory
import PCI
import Virtio
import VirtioBlock
import VirtioNet

/// Builds the PCI root bus with the definition's disks and NICs as virtio-pci devices.
enum PciDevices {
    /// Guest-physical window for BARs: the start of the MMIO hole, below the boot marker.
    static let windowBase: UInt64 = 0xC000_0000
    static let windowSize: UInt64 = 0x1000_0000
    /// BARs the guest moves are decoded up to here (the IOAPIC at 0xFEC00000 and above are KVM's).
    static let holeDecodeEnd: UInt64 = 0xFEC0_0000
    /// IOAPIC pins for PCI INTA# (ISA IRQs keep 0–15).
    static let firstINTxPin: UInt32 = 16

    struct Built {
        let root: PciRoot
        let transports: [VirtioPciDevice]
        /// slot → IOAPIC pin, for the MP table.
        let interrupts: [(slot: Int, ioapicPin: UInt8)]
    }

    static func build(definition def: VMDefinition, vm: VirtualMachine, memory: GuestMemory, router: MsiRouter,
                      notifyOffload: (any NotifyOffload)?, logger: Logger) throws -> Built {
        var devices: [any VirtioDevice] = []
        for (i, disk) in def.disks.enumerated() {
            let image: BlockImage
            do { image = try BlockImage(path: disk.path, readOnly: disk.readOnly, directIO: disk.directIO) }
            catch let e as BlockImageError { throw VMMError.setup("$.disks[\(i)].path: \(e)") }
            devices.append(VirtioBlock(name: "blk\(i)", image: image, settings: BlockDeviceSettings(serial: disk.serial)))
            logger.info("blk\(i): \(disk.path), \(image.sectors) sectors\(disk.readOnly ? ", read-only" : "")\(disk.directIO ? ", O_DIRECT" : "")")
        }
        for (i, net) in def.nets.enumerated() {
            let tap: Tap
            do { tap = try Tap(name: net.tap) } catch let e as TapError { throw VMMError.setup("$.nets[\(i)].tap: \(e)") }
            devices.append(VirtioNet(name: "net\(i)", tap: tap, mac: net.mac))
            logger.info("net\(i): tap \(tap.name), MAC \(NetSettings.format(net.mac))\(tap.supportsOffloads ? ", offloads" : "")")
        }
        var transports: [VirtioPciDevice] = []
        var interrupts: [(slot: Int, ioapicPin: UInt8)] = []
        for (index, device) in devices.enumerated() {
            let slot = index + 1
            let pin = firstINTxPin + UInt32(index % 8)
            let sink = try router.makeSink(vectors: device.queueMaxSizes.count + 1, device: device.name)
            let log = logger
            transports.append(VirtioPciDevice(device: device, memory: memory, msiSink: sink,
                                              intx: KVMInterruptLine(vm: vm, irq: pin, logger: logger),
                                              intxLine: UInt8(pin), notifyOffload: notifyOffload,
                                              onError: { log.error("\($0)") }))
            interrupts.append((slot, UInt8(pin)))
        }
        let root = try PciRoot(devices: transports, windowBase: windowBase, windowSize: windowSize)
        return Built(root: root, transports: transports, interrupts: interrupts)
    }
}
