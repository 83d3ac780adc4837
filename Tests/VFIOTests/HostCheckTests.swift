import Testing
@testable import VFIO
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// A fake /sys with PCI functions, their drivers and IOMMU groups (symlinks, as in sysfs).
struct FakeSysfs {
    let root: String
    init() {
        root = try! makeTemporaryDirectory("rtvisor-sysfs")
    }
    func device(_ address: String, driver: String?, group: Int?, vendor: String = "0x8086", device: String = "0x10d3") {
        let dir = "\(root)/bus/pci/devices/\(address)"
        writeFile("\(dir)/vendor", vendor + "\n")
        writeFile("\(dir)/device", device + "\n")
        if let driver {
            makeDirectories("\(root)/bus/pci/drivers/\(driver)")
            symlink("../../../bus/pci/drivers/\(driver)", "\(dir)/driver")
        }
        if let group {
            makeDirectories("\(root)/kernel/iommu_groups/\(group)/devices")
            symlink("../../../../kernel/iommu_groups/\(group)", "\(dir)/iommu_group")
            symlink("../../../../bus/pci/devices/\(address)", "\(root)/kernel/iommu_groups/\(group)/devices/\(address)")
        }
    }
    var host: HostPCI { HostPCI(root: root) }
}

@Suite struct PassthroughPlanTests {
    @Test func addressesParseStrictly() {
        #expect(PciAddress("0000:03:00.0")?.description == "0000:03:00.0")
        #expect(PciAddress("0000:AF:1F.7")?.description == "0000:af:1f.7")
        for bad in ["03:00.0", "0000:03:00", "0000:03:20.0", "0000:03:00.8", "000g:03:00.0", "0000:003:00.0", ""] {
            #expect(PciAddress(bad) == nil, "\(bad)")
        }
    }

    @Test func aBoundViableDeviceResolvesToItsGroup() throws {
        let fs = FakeSysfs()
        fs.device("0000:03:00.0", driver: "vfio-pci", group: 12)
        fs.device("0000:05:00.0", driver: "vfio-pci", group: 14)
        fs.device("0000:05:00.1", driver: "vfio-pci", group: 14)
        let plan = try PassthroughPlan.resolve(["0000:03:00.0", "0000:05:00.0", "0000:05:00.1"], host: fs.host)
        #expect(plan.groups.map(\.group) == [12, 14])
        #expect(plan.groups[1].devices.map(\.description) == ["0000:05:00.0", "0000:05:00.1"])
    }

    @Test func eachProblemIsNamedWithItsFieldAndFix() {
        let fs = FakeSysfs()
        fs.device("0000:03:00.0", driver: "e1000e", group: 12)
        fs.device("0000:04:00.0", driver: nil, group: nil)
        #expect {
            try PassthroughPlan.resolve(["3:00.0", "0000:03:00.0", "0000:09:00.0", "0000:04:00.0"], host: fs.host)
        } throws: { error in
            let lines = "\(error)".split(separator: "\n").map(String.init)
            return lines.count == 5
                && lines[0] == "$.passthrough[0].pci: \"3:00.0\" is not a PCI address (DDDD:BB:DD.F, e.g. 0000:03:00.0)"
                && lines[1].hasPrefix("$.passthrough[1].pci: 0000:03:00.0 [8086:10d3] is bound to e1000e, not vfio-pci; rebind it: echo vfio-pci > ")
                && lines[2].hasPrefix("$.passthrough[2].pci: no PCI device 0000:09:00.0 on this host")
                && lines[3].hasPrefix("$.passthrough[3].pci: 0000:04:00.0 [8086:10d3] is not bound to vfio-pci (no driver)")
                && lines[4].hasPrefix("$.passthrough[3].pci: 0000:04:00.0 has no IOMMU group")
        }
    }

    @Test func aGroupWithAnotherDriverIsNotViable() {
        let fs = FakeSysfs()
        fs.device("0000:03:00.0", driver: "vfio-pci", group: 12)
        fs.device("0000:02:00.0", driver: "pcieport", group: 12)   // harmless: a bridge's port driver
        fs.device("0000:03:01.0", driver: "snd_hda_intel", group: 12)
        #expect {
            try PassthroughPlan.resolve(["0000:03:00.0"], host: fs.host)
        } throws: {
            "\($0)" == "$.passthrough: IOMMU group 12 of 0000:03:00.0 is not viable: 0000:03:01.0 (driver snd_hda_intel) must be bound to vfio-pci or unbound first (the group is assigned as a whole)"
        }
    }

    @Test func functionsOfOneDeviceInOneGroupGoTogether() {
        let fs = FakeSysfs()
        fs.device("0000:03:00.0", driver: "vfio-pci", group: 12)
        fs.device("0000:03:00.1", driver: "vfio-pci", group: 12)
        #expect {
            try PassthroughPlan.resolve(["0000:03:00.0"], host: fs.host)
        } throws: {
            "\($0)" == "$.passthrough: 0000:03:00.1 shares IOMMU group 12 with 0000:03:00.0 (another function of the same physical device): pass both to this VM or neither"
        }
        #expect(throws: Never.self) { try PassthroughPlan.resolve(["0000:03:00.1", "0000:03:00.0"], host: fs.host) }
    }
}
