import Foundation
import Testing

/// The VMM's host checks for `passthrough` against this host's real sysfs. This host has no
/// IOMMU, so no device can be passed through here; what must hold is that the VMM refuses with
/// the field and the reason before a guest runs. The positive path runs against a real vfio-pci
/// driver in scripts/test-vfio.sh (QEMU q35 + intel-iommu + edu).
@Suite(.enabled(if: Env.kvmAvailable, Env.noKVMReason))
struct PassthroughRefusalTests {
    /// A host PCI function bound to a driver other than vfio-pci, if the host has one.
    static var boundDevice: (address: String, driver: String)? {
        let dir = "/sys/bus/pci/devices"
        for name in ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).sorted() {
            if let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "\(dir)/\(name)/driver"),
               let driver = target.split(separator: "/").last.map(String.init), driver != "vfio-pci" {
                return (name, driver)
            }
        }
        return nil
    }

    func run(_ passthrough: String) throws -> VMMResult {
        let def = VMM.definition(name: "pt", kernel: try Env.inmate("hello"), extra: "\"passthrough\": \(passthrough)")
        return try VMM.run(config: try VMM.writeDefinition(def), timeout: 30)
    }

    @Test func aMissingDeviceIsRefusedBeforeTheGuestRuns() throws {
        let r = try run(#"[{"pci": "0000:7f:1f.7"}]"#)
        #expect(r.status == 1)
        #expect(r.stderr.contains("$.passthrough[0].pci: no PCI device 0000:7f:1f.7 on this host"), "stderr: \(r.stderr)")
        #expect(!r.console.contains("Hello from inmate"))
    }

    @Test(.enabled(if: boundDevice != nil, "this host has no PCI device bound to a driver"))
    func aDeviceBoundToItsHostDriverIsRefusedWithTheFix() throws {
        let (address, driver) = Self.boundDevice!
        let r = try run("[{\"pci\": \"\(address)\"}]")
        #expect(r.status == 1)
        #expect(r.stderr.contains("$.passthrough[0].pci: \(address)"), "stderr: \(r.stderr)")
        #expect(r.stderr.contains("is bound to \(driver), not vfio-pci; rebind it: echo vfio-pci > /sys/bus/pci/devices/\(address)/driver_override"))
        // Its driver is untouched: the VMM only reads sysfs.
        let now = try FileManager.default.destinationOfSymbolicLink(atPath: "/sys/bus/pci/devices/\(address)/driver")
        #expect(now.hasSuffix("/\(driver)"))
    }
}
