import Config
import Daemon
import Foundation
import Testing

/// The device nodes a VM needs, and the refusal when rtvisord's device policy denies one
/// (scripts/test-systemd-e2e.sh checks the real DevicePolicy=closed with a loop device).
@Suite struct DeviceAccessTests {
    /// /dev/loop3 is block 7:3, /dev/vfio/vfio char 10:196, /dev/vfio/12 char 242:0; the image is a regular file.
    static func deviceFile(_ path: String) -> DeviceAccess.DeviceFile? {
        switch path {
        case "/dev/loop3": DeviceAccess.DeviceFile(isBlock: true, major: 7, minor: 3)
        case "/dev/vfio/vfio": DeviceAccess.DeviceFile(isBlock: false, major: 10, minor: 196)
        case "/dev/vfio/12": DeviceAccess.DeviceFile(isBlock: false, major: 242, minor: 0)
        default: nil
        }
    }

    static func definition(disks: [DiskSettings] = [], passthrough: [String] = []) -> VMDefinition {
        var d = VMDefinition(name: "web", kernel: "/boot/vmlinux")
        d.disks = disks
        d.passthrough = passthrough.map { PassthroughSettings(pci: $0) }
        return d
    }

    @Test func onlyBlockDeviceDisksAndVFIONodesAreChecked() {
        let d = Self.definition(disks: [DiskSettings(path: "/var/lib/rtvisor/a.img"), DiskSettings(path: "/dev/loop3", readOnly: true)],
                                passthrough: ["0000:03:00.0"])
        let nodes = DeviceAccess.nodes(of: d, deviceFile: Self.deviceFile, iommuGroup: { $0 == "0000:03:00.0" ? 12 : nil })
        #expect(nodes.map(\.device.path) == ["/dev/loop3", "/dev/vfio/vfio", "/dev/vfio/12"])
        #expect(nodes.map(\.jsonPath) == ["$.disks[1].path", "$.passthrough[0].pci (0000:03:00.0)", "$.passthrough[0].pci (0000:03:00.0)"])
        #expect(nodes.map(\.device.write) == [false, true, true])
        #expect(nodes.map(\.device.dropIn) == ["block-devices.conf", "vfio.conf", "vfio.conf"])
    }

    @Test func aDeniedBlockDeviceIsRefusedWithTheDropInThatAllowsIt() throws {
        let d = Self.definition(disks: [DiskSettings(path: "/dev/loop3")])
        var asked: [(String, Int32)] = []
        let refusal = try #require(DeviceAccess.refusal(for: d, deviceFile: Self.deviceFile, iommuGroup: { _ in nil },
                                                        access: { asked.append(($0, $1)); return EPERM }))
        #expect(asked.map(\.0) == ["/dev/loop3"] && asked.map(\.1) == [R_OK | W_OK])
        #expect(refusal.hasPrefix("$.disks[0].path: /dev/loop3 is a block device (7:3) that the device cgroup denies (read-write access"))
        for part in ["DevicePolicy=closed", "block-devices.conf", "scripts/install.sh --drop-in block-devices",
                     "/etc/systemd/system/rtvisord.service.d/", "systemctl daemon-reload && systemctl restart rtvisord"] {
            #expect(refusal.contains(part), "\(part) missing from: \(refusal)")
        }
    }

    @Test func aDeniedVFIOGroupNamesTheVFIODropIn() throws {
        let d = Self.definition(passthrough: ["0000:03:00.0"])
        let refusal = try #require(DeviceAccess.refusal(for: d, deviceFile: Self.deviceFile, iommuGroup: { _ in 12 },
                                                        access: { path, _ in path == "/dev/vfio/12" ? EPERM : 0 }))
        #expect(refusal.hasPrefix("$.passthrough[0].pci (0000:03:00.0): /dev/vfio/12 is a character device (242:0)"))
        #expect(refusal.contains("vfio.conf") && refusal.contains("--drop-in vfio"))
    }

    /// Only the device cgroup's EPERM is the policy's; a missing node or a permission problem is
    /// the VMM's to report, with its own message.
    @Test func allowedOrOtherwiseFailingNodesAreNotRefused() {
        let d = Self.definition(disks: [DiskSettings(path: "/dev/loop3")])
        for e in [0, ENOENT, EACCES, EROFS] {
            #expect(DeviceAccess.refusal(for: d, deviceFile: Self.deviceFile, iommuGroup: { _ in nil }, access: { _, _ in e }) == nil, "errno \(e)")
        }
    }

    /// Device numbers as glibc's makedev encodes them, split back (large majors and minors too).
    @Test func deviceNumbersSplitLikeGlibc() {
        #expect(DeniedDevice.split(0x0703) == (7, 3))
        // makedev(259, 0x12345): minor bits 8–31 go to 20–43.
        #expect(DeniedDevice.split(0x1231_0345) == (259, 0x12345))
        // makedev(0x1000, 1): major bits 12–31 go to 44–63.
        #expect(DeniedDevice.split(0x1000_0000_0001) == (0x1000, 1))
    }

    /// The real stat(2): /dev/null is char 1:3 on every Linux; a regular file is no device.
    @Test func hostDeviceFileReadsTheDeviceNumber() throws {
        #expect(DeviceAccess.hostDeviceFile("/dev/null") == DeviceAccess.DeviceFile(isBlock: false, major: 1, minor: 3))
        #expect(DeviceAccess.hostDeviceFile("/proc/self/status") == nil)
        #expect(DeviceAccess.hostDeviceFile("/nonexistent") == nil)
    }
}
