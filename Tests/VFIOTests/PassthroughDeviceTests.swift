import CKVM
import PCI
import Testing
@testable import VFIO

/// A NIC-like function: 64-bit BAR0 (16 KiB) with the MSI-X table at 0x2000 and PBA at 0x3000,
/// 32-bit BAR2 (4 KiB), MSI (64-bit, 4 vectors, per-vector mask) and MSI-X (4 vectors), INTA#.
func makeNIC(_ kernel: SimulatedVFIO, group: Int = 7, name: String = "0000:03:00.0", msix: Bool = true,
             sparse: [(offset: UInt64, size: UInt64)]? = nil) -> SimulatedVFIO.Device {
    let d = SimulatedVFIO.Device(vendor: 0x8086, device: 0x10D3)
    d.addBar(0, size: 0x4000, is64: true, sparse: sparse)
    d.addBar(2, size: 0x1000)
    // MSI: control = 64-bit | per-vector mask | MMC 4 vectors (2 << 1).
    d.addCapability(0x05, at: 0x50, [0x84, 0x01] + Array(repeating: 0, count: 20))
    if msix {
        // MSI-X: 4 vectors (table size - 1 = 3), table BAR0 + 0x2000, PBA BAR0 + 0x3000.
        d.addCapability(0x11, at: 0x70, [0x03, 0x00, 0x00, 0x20, 0x00, 0x00, 0x00, 0x30, 0x00, 0x00])
    }
    // A vendor-specific capability the guest may write (passed through).
    d.addCapability(0x09, at: 0xA0, [0x08, 0, 0, 0, 0, 0])
    d.irqCounts = [VFIOPci.intxIRQ: 1, VFIOPci.msiIRQ: 4, VFIOPci.msixIRQ: msix ? 4 : 0]
    kernel.add(d, name: name, group: group)
    return d
}

func open(_ kernel: SimulatedVFIO, group: Int = 7, name: String = "0000:03:00.0", platform: RecordingPlatform) throws -> (VFIOContainer, VfioPciDevice) {
    let container = try VFIOContainer(kernel: kernel)
    let g = try container.attachGroup(group)
    let device = try VFIODevice(kernel: kernel, group: g, address: name)
    let pt = try VfioPciDevice(name: "hostdev0", device: device, platform: platform, intxPin: 20, onError: { Issue.record("device error: \($0)") })
    return (container, pt)
}

@Suite struct ContainerTests {
    @Test func groupsAttachAndTheIOMMUIsSetOnce() throws {
        let k = SimulatedVFIO()
        _ = makeNIC(k, group: 7)
        _ = makeNIC(k, group: 8, name: "0000:04:00.0")
        let c = try VFIOContainer(kernel: k)
        try c.attachGroup(7)
        try c.attachGroup(8)
        try c.attachGroup(7) // again: the same fd, no second SET_CONTAINER
        #expect(k.log.filter { $0.hasPrefix("set container") } == ["set container group 7", "set container group 8"])
        #expect(k.iommuType == VFIOContainer.type1v2IOMMU)
        try c.mapDMA(iova: 0, size: 0x10_0000, hostAddress: 0x7000_0000)
        try c.mapDMA(iova: 0x10_0000_0000, size: 0x20_0000, hostAddress: 0x7100_0000)
        #expect(k.dmaMaps.count == 2)
        c.close()
        #expect(k.dmaMaps.isEmpty, "every DMA mapping is unmapped on close")
        #expect(k.log.filter { $0.hasPrefix("unset container") }.count == 2)
        c.close() // idempotent
    }

    @Test func refusesWrongAPIAndMissingType1() {
        let k = SimulatedVFIO()
        k.apiVersionValue = 1
        #expect(throws: VFIOError("VFIO API version 1, expected 0")) { try VFIOContainer(kernel: k) }
        let k2 = SimulatedVFIO()
        k2.extensions = []
        #expect { try VFIOContainer(kernel: k2) } throws: { "\($0)".contains("no type1 IOMMU") }
    }

    @Test func aGroupThatIsNotViableIsRefusedWithTheOffenders() throws {
        let k = SimulatedVFIO()
        _ = makeNIC(k, group: 9)
        k.viable[9] = false
        let c = try VFIOContainer(kernel: k)
        #expect {
            try c.attachGroup(9, explain: { "0000:03:00.1 (driver snd_hda_intel)" })
        } throws: {
            "\($0)" == "IOMMU group 9 is not viable: every device in it must be bound to vfio-pci (or unbound): 0000:03:00.1 (driver snd_hda_intel)"
        }
        #expect(k.iommuType == nil)
    }
}

@Suite struct ConfigSpaceVirtualisationTests {
    @Test func identityAndUnvirtualisedRegistersComeFromTheDevice() throws {
        let k = SimulatedVFIO(); let d = makeNIC(k); let p = RecordingPlatform()
        let (_, pt) = try open(k, platform: p)
        #expect(pt.readConfig(offset: 0, size: 4) == 0x10D3_8086)
        #expect(pt.readConfig(offset: 0x0B, size: 1) == 0x02)
        // A vendor-specific register: the guest's write reaches the device.
        pt.writeConfig(offset: 0xA4, size: 4, value: 0xCAFE_F00D)
        #expect(d.config[0xA4] == 0x0D && d.config[0xA7] == 0xCA)
        #expect(pt.readConfig(offset: 0xA4, size: 4) == 0xCAFE_F00D)
    }

    @Test func romBarIsHiddenAndInterruptLineIsVirtual() throws {
        let k = SimulatedVFIO(); let d = makeNIC(k); let p = RecordingPlatform()
        d.set32(0xFEB0_0001, 0x30) // the device has a ROM
        let (_, pt) = try open(k, platform: p)
        #expect(pt.readConfig(offset: 0x30, size: 4) == 0)
        pt.writeConfig(offset: 0x30, size: 4, value: 0xFFFF_F801)
        #expect(pt.readConfig(offset: 0x30, size: 4) == 0)
        #expect(d.config[0x30] == 0x01, "the device's ROM register is never written")
        #expect(pt.readConfig(offset: 0x3C, size: 1) == 20 && pt.readConfig(offset: 0x3D, size: 1) == 1)
        pt.writeConfig(offset: 0x3C, size: 1, value: 11)
        #expect(pt.readConfig(offset: 0x3C, size: 1) == 11)
        #expect(!k.log.contains("config write 0x3c size 1"), "the interrupt line stays virtual")
    }

    @Test func barsSizeLikeHardware() throws {
        let k = SimulatedVFIO(); _ = makeNIC(k); let p = RecordingPlatform()
        let (_, pt) = try open(k, platform: p)
        #expect(pt.barState.bars.map(\.index) == [0, 2])
        pt.writeConfig(offset: 0x10, size: 4, value: 0xFFFF_FFFF)
        pt.writeConfig(offset: 0x14, size: 4, value: 0xFFFF_FFFF)
        #expect(pt.readConfig(offset: 0x10, size: 4) == 0xFFFF_C004, "16 KiB, 64-bit")
        #expect(pt.readConfig(offset: 0x14, size: 4) == 0xFFFF_FFFF)
        pt.writeConfig(offset: 0x18, size: 4, value: 0xFFFF_FFFF)
        #expect(pt.readConfig(offset: 0x18, size: 4) == 0xFFFF_F000, "4 KiB, 32-bit")
        #expect(pt.readConfig(offset: 0x1C, size: 4) == 0, "BAR3 does not exist")
        #expect(!k.log.contains { $0.hasPrefix("config write 0x1") }, "BAR writes never reach the device")
    }

    @Test func msiCapabilityIsVirtual() throws {
        let k = SimulatedVFIO(); let d = makeNIC(k); let p = RecordingPlatform()
        let (_, pt) = try open(k, platform: p)
        #expect(pt.readConfig(offset: 0x52, size: 2) == 0x0184, "64-bit, per-vector mask, 4 vectors capable, disabled")
        pt.writeConfig(offset: 0x54, size: 4, value: 0xFEE0_0000)
        #expect(pt.readConfig(offset: 0x54, size: 4) == 0xFEE0_0000)
        #expect(d.config[0x54] == 0 && d.config[0x57] == 0, "the host kernel owns the real MSI registers")
        pt.writeConfig(offset: 0x52, size: 2, value: 0xFFFF)
        #expect(pt.readConfig(offset: 0x52, size: 2) == 0x01F5, "only enable and multiple message enable are writable")
    }
}

@Suite struct BarMappingTests {
    @Test func barsBecomeSlotsWhereTheGuestPutsThem() throws {
        let k = SimulatedVFIO(); _ = makeNIC(k); let p = RecordingPlatform()
        let (_, pt) = try open(k, platform: p)
        // The MSI-X table (0x2000) and PBA (0x3000) pages of BAR0 are not mapped.
        #expect(pt.mappedAreas.map { [$0.bar, Int($0.offset), Int($0.size)] } == [[0, 0, 0x2000], [2, 0, 0x1000]])
        pt.assignBar(index: 0, address: 0xC000_0000)
        pt.assignBar(index: 2, address: 0xC000_8000)
        #expect(p.mapped.isEmpty, "no slot while memory decoding is off")
        pt.writeConfig(offset: 0x04, size: 2, value: UInt32(PciRegister.commandMemory))
        #expect(p.mapped.map(\.address) == [0xC000_0000, 0xC000_8000])
        // The guest moves BAR2, then BAR0 above 4 GiB (64-bit BAR).
        pt.writeConfig(offset: 0x18, size: 4, value: 0xD000_0000)
        #expect(p.mapped.map(\.address) == [0xC000_0000, 0xD000_0000])
        pt.writeConfig(offset: 0x14, size: 4, value: 0x1)
        #expect(p.mapped.map(\.address) == [0xD000_0000, 0x1_C000_0000])
        pt.writeConfig(offset: 0x04, size: 2, value: 0)
        #expect(p.mapped.isEmpty)
        pt.stop()
        #expect(k.log.filter { $0.hasPrefix("munmap") }.count == 2)
    }

    @Test func sparseMmapIsHonoured() throws {
        let k = SimulatedVFIO(); _ = makeNIC(k, msix: false, sparse: [(0x1000, 0x1000), (0x3000, 0x1000)]); let p = RecordingPlatform()
        let (_, pt) = try open(k, platform: p)
        #expect(pt.mappedAreas.filter { $0.bar == 0 }.map { [Int($0.offset), Int($0.size)] } == [[0x1000, 0x1000], [0x3000, 0x1000]])
    }

    @Test func unmappedPartsTrapToTheRegion() throws {
        let k = SimulatedVFIO(); let d = makeNIC(k, msix: false, sparse: [(0x1000, 0x1000)]); let p = RecordingPlatform()
        let (_, pt) = try open(k, platform: p)
        d.regions[0]!.storage.storeBytes(of: UInt32(0x1234_5678), toByteOffset: 0x10, as: UInt32.self)
        #expect(pt.readBar(0, offset: 0x10, size: 4) == 0x1234_5678)
        pt.writeBar(0, offset: 0x20, size: 8, value: 0x1122_3344_5566_7788)
        #expect(d.regions[0]!.storage.load(fromByteOffset: 0x20, as: UInt64.self) == 0x1122_3344_5566_7788)
        #expect(pt.readBar(0, offset: 0x3FFE, size: 4) == 0xFFFF_FFFF, "an access crossing the BAR end reads all-ones")
    }
}

@Suite struct InterruptTests {
    @Test func intxIsArmedAtStartWithItsResampleFD() throws {
        let k = SimulatedVFIO(); let d = makeNIC(k); let p = RecordingPlatform()
        let (_, pt) = try open(k, platform: p)
        try pt.start()
        #expect(d.resets == 1, "reset before the guest runs")
        #expect(p.intx?.pin == 20)
        #expect(k.irqSets == [.init(index: 0, action: .trigger, start: 0, count: 1, fds: [900]),
                              .init(index: 0, action: .unmask, start: 0, count: 1, fds: [901])])
        pt.stop()
        #expect(d.resets == 2, "reset on stop")
        #expect(k.irqSets.last == .init(index: 0, action: .trigger, start: 0, count: 0, fds: nil))
    }

    @Test func msixTableIsEmulatedAndVectorsFollowIt() throws {
        let k = SimulatedVFIO(); let d = makeNIC(k); let p = RecordingPlatform()
        let (_, pt) = try open(k, platform: p)
        try pt.start()
        #expect(p.vectors.count == 8, "4 MSI-X + 4 MSI vectors")
        // Program entry 1 while MSI-X is off: nothing is routed yet.
        pt.writeBar(0, offset: 0x2010, size: 4, value: 0xFEE0_1000)
        pt.writeBar(0, offset: 0x2014, size: 4, value: 0)
        pt.writeBar(0, offset: 0x2018, size: 4, value: 0x4055)
        pt.writeBar(0, offset: 0x201C, size: 4, value: 0) // unmask
        #expect(pt.readBar(0, offset: 0x2018, size: 4) == 0x4055)
        #expect(d.regions[0]!.storage.load(fromByteOffset: 0x2018, as: UInt32.self) == 0, "the real table is never written")
        // Enable MSI-X: INTx goes off first, then all four eventfds go to VFIO.
        pt.writeConfig(offset: 0x72, size: 2, value: UInt32(MsixTable.controlEnable))
        let msixFDs = p.vectors.prefix(4).map(\.eventfd)
        #expect(Array(k.irqSets.suffix(2)) == [.init(index: 0, action: .trigger, start: 0, count: 0, fds: nil),
                                               .init(index: 2, action: .trigger, start: 0, count: 4, fds: msixFDs)])
        #expect(pt.interruptMode == "msix")
        let v1 = p.vectors[1]
        #expect(v1.current == MsiMessage(address: 0xFEE0_1000, data: 0x4055), "vector 1 routed to its table entry")
        #expect(p.vectors[0].current == nil, "masked vectors stay detached")
        // Masking vector 1 detaches its irqfd; the function mask detaches all.
        pt.writeBar(0, offset: 0x201C, size: 4, value: 1)
        #expect(v1.current == nil)
        pt.writeBar(0, offset: 0x201C, size: 4, value: 0)
        #expect(v1.current != nil)
        pt.writeConfig(offset: 0x72, size: 2, value: UInt32(MsixTable.controlEnable | MsixTable.controlFunctionMask))
        #expect(v1.current == nil)
        #expect(pt.readConfig(offset: 0x72, size: 2) == 0xC003)
        // Disable: back to INTx.
        pt.writeConfig(offset: 0x72, size: 2, value: 0)
        #expect(Array(k.irqSets.suffix(3)) == [.init(index: 2, action: .trigger, start: 0, count: 0, fds: nil),
                                               .init(index: 0, action: .trigger, start: 0, count: 1, fds: [900]),
                                               .init(index: 0, action: .unmask, start: 0, count: 1, fds: [901])])
    }

    @Test func multiMessageMsi() throws {
        let k = SimulatedVFIO(); _ = makeNIC(k, msix: false); let p = RecordingPlatform()
        let (_, pt) = try open(k, platform: p)
        try pt.start()
        pt.writeConfig(offset: 0x54, size: 4, value: 0xFEE0_0000)
        pt.writeConfig(offset: 0x5C, size: 2, value: 0x4060)
        pt.writeConfig(offset: 0x52, size: 2, value: 0x0011) // enable, 2 vectors (MME = 1)
        #expect(pt.interruptMode == "msi")
        #expect(k.irqSets.last == .init(index: 1, action: .trigger, start: 0, count: 2, fds: [p.vectors[0].eventfd, p.vectors[1].eventfd]))
        #expect(p.vectors[0].current == MsiMessage(address: 0xFEE0_0000, data: 0x4060))
        #expect(p.vectors[1].current == MsiMessage(address: 0xFEE0_0000, data: 0x4061))
        #expect(p.vectors[2].current == nil)
        // Per-vector mask of vector 1.
        pt.writeConfig(offset: 0x60, size: 4, value: 0x2)
        #expect(p.vectors[1].current == nil && p.vectors[0].current != nil)
        // The guest retargets the message while enabled: the routes follow.
        pt.writeConfig(offset: 0x5C, size: 2, value: 0x4070)
        #expect(p.vectors[0].current?.data == 0x4070)
        pt.writeConfig(offset: 0x52, size: 2, value: 0)
        #expect(pt.interruptMode == "intx")
        #expect(p.vectors[0].current == nil)
    }
}

@Suite struct UAPIValueTests {
    /// The seam's enums carry the kernel's numbers; a wrong one is ENOTTY at run time only.
    @Test func irqActionsMatchTheHeader() {
        #expect(VFIOIRQAction.mask.rawValue == UInt32(VFIO_IRQ_SET_ACTION_MASK))
        #expect(VFIOIRQAction.unmask.rawValue == UInt32(VFIO_IRQ_SET_ACTION_UNMASK))
        #expect(VFIOIRQAction.trigger.rawValue == UInt32(VFIO_IRQ_SET_ACTION_TRIGGER))
        #expect(VFIOPci.configRegion == Int(VFIO_PCI_CONFIG_REGION_INDEX))
        #expect(VFIOPci.msixIRQ == Int(VFIO_PCI_MSIX_IRQ_INDEX))
        #expect(VFIOPci.intxIRQ == Int(VFIO_PCI_INTX_IRQ_INDEX))
        #expect(VFIOContainer.type1v2IOMMU == Int(VFIO_TYPE1v2_IOMMU))
        #expect(VFIORegionInfo.flagMmap == UInt32(VFIO_REGION_INFO_FLAG_MMAP))
    }
}
