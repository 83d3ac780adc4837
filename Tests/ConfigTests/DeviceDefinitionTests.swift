import Foundation
import Testing
@testable import Config

/// `disks` and `nets` in definitions.
@Suite("VMDefinition devices")
struct DeviceDefinitionTests {
    func base(_ extra: String) -> String {
        "{\"name\": \"vm-a\", \"memory_mib\": 64, \"kernel\": \"../images/vmlinux\", \(extra)}"
    }

    func makeDisk(_ w: Workspace, _ name: String = "disk.img", bytes: Int = 4096) throws -> String {
        let path = w.directory + "/images/" + name
        try Data(count: bytes).write(to: URL(fileURLWithPath: path))
        return path
    }

    @Test func disksAndNetsLoadWithDefaults() throws {
        let w = try Workspace()
        let disk = try makeDisk(w)
        let d = try w.load(base("""
            "disks": [{"path": "../images/disk.img"}, {"path": "\(disk)", "read_only": true, "serial": "SER-2", "direct_io": true}],
            "nets": [{"tap": "tap-vm-a"}, {"tap": "tap-vm-a2", "mac": "52:54:00:AB:cd:01"}]
            """))
        #expect(d.disks == [DiskSettings(path: w.directory + "/vms/../images/disk.img"),
                            DiskSettings(path: disk, readOnly: true, serial: "SER-2", directIO: true)])
        #expect(d.nets.map(\.tap) == ["tap-vm-a", "tap-vm-a2"])
        #expect(d.nets[1].mac == [0x52, 0x54, 0x00, 0xAB, 0xCD, 0x01])
        // Generated MAC: locally administered unicast, stable for the VM name and index.
        #expect(d.nets[0].mac == NetSettings.stableMAC(vmName: "vm-a", index: 0))
        #expect(d.nets[0].mac[0] == 0x02)
        #expect(NetSettings.stableMAC(vmName: "vm-a", index: 0) != NetSettings.stableMAC(vmName: "vm-b", index: 0))
        #expect(NetSettings.stableMAC(vmName: "vm-a", index: 0) != NetSettings.stableMAC(vmName: "vm-a", index: 1))
    }

    @Test func missingImageNamesFileFieldAndReason() throws {
        let w = try Workspace()
        let i = try w.issue(base("\"disks\": [{\"path\": \"../images/missing.img\"}]"))
        #expect(i.path == "$.disks[0].path")
        #expect(i.reason.contains("missing.img: No such file or directory"))
    }

    @Test func diskProblems() throws {
        let w = try Workspace()
        _ = try makeDisk(w)
        _ = try makeDisk(w, "tiny.img", bytes: 100)
        let cases: [(String, String, String)] = [
            ("[{\"path\": \"../images/tiny.img\"}]", "$.disks[0].path", "smaller than one 512-byte sector"),
            ("[{\"path\": \"../images\"}]", "$.disks[0].path", "not a regular file or block device"),
            ("[{}]", "$.disks[0].path", "is required"),
            ("[{\"path\": \"../images/disk.img\", \"readonly\": true}]", "$.disks[0].readonly", "did you mean \"read_only\""),
            ("[{\"path\": \"../images/disk.img\", \"read_only\": \"yes\"}]", "$.disks[0].read_only", "must be true or false"),
            ("[{\"path\": \"../images/disk.img\", \"serial\": \"123456789012345678901\"}]", "$.disks[0].serial", "at most 20"),
            ("[{\"path\": \"../images/disk.img\"}, {\"path\": \"../images/disk.img\"}]", "$.disks[1].path", "already used by $.disks[0]"),
            ("{\"path\": \"x\"}", "$.disks", "must be an array"),
            ("[\"../images/disk.img\"]", "$.disks[0]", "must be an object"),
        ]
        for (disks, path, reason) in cases {
            let i = try w.issue(base("\"disks\": \(disks)"))
            #expect(i.path == path, "\(disks)")
            #expect(i.reason.contains(reason), "\(disks): \(i.reason)")
        }
    }

    @Test func readOnlyImageNeedsReadOnlyFlag() throws {
        let w = try Workspace()
        let disk = try makeDisk(w)
        chmod(disk, 0o444)
        guard getuid() != 0 else { return } // root can write anyway
        let i = try w.issue(base("\"disks\": [{\"path\": \"\(disk)\"}]"))
        #expect(i.reason.contains("read_only"))
    }

    @Test func netProblems() throws {
        let w = try Workspace()
        let cases: [(String, String, String)] = [
            ("[{}]", "$.nets[0].tap", "is required"),
            ("[{\"tap\": \"a-very-long-tap-name\"}]", "$.nets[0].tap", "1–15"),
            ("[{\"tap\": \"bad/name\"}]", "$.nets[0].tap", "without '/'"),
            ("[{\"tap\": \"t0\", \"mac\": \"01:00:5e:00:00:01\"}]", "$.nets[0].mac", "multicast"),
            ("[{\"tap\": \"t0\", \"mac\": \"00:00:00:00:00:00\"}]", "$.nets[0].mac", "must not be"),
            ("[{\"tap\": \"t0\", \"mac\": \"52:54:00:12:34\"}]", "$.nets[0].mac", "six hex octets"),
            ("[{\"tap\": \"t0\", \"mac\": \"52:54:00:12:34:zz\"}]", "$.nets[0].mac", "six hex octets"),
            ("[{\"tap\": \"t0\"}, {\"tap\": \"t0\"}]", "$.nets[1].tap", "already used by $.nets[0]"),
            ("[{\"tap\": \"t0\", \"mac\": \"02:00:00:00:00:01\"}, {\"tap\": \"t1\", \"mac\": \"02:00:00:00:00:01\"}]", "$.nets[1].mac", "already used"),
            ("[{\"tap\": \"t0\", \"macaddr\": \"02:00:00:00:00:01\"}]", "$.nets[0].macaddr", "unknown key"),
            ("[{\"bridge\": \"br-with-a-long-name\"}]", "$.nets[0].bridge", "1–15"),
            ("[{\"bridge\": 7}]", "$.nets[0].bridge", "interface name"),
            ("[{\"tap\": \"br0\", \"bridge\": \"br0\"}]", "$.nets[0].bridge", "is the tap itself"),
            ("[{\"bridge\": \"br0\", \"mtu\": 67}]", "$.nets[0].mtu", "from 68 to 65535"),
            ("[{\"tap\": \"t0\", \"mtu\": 65536}]", "$.nets[0].mtu", "from 68 to 65535"),
            ("[{\"tap\": \"t0\", \"mtu\": \"9000\"}]", "$.nets[0].mtu", "must be an integer"),
            ("[{\"bridge\": \"br0\", \"tap\": \"rtv-vm-a-1\"}, {\"bridge\": \"br0\"}]", "$.nets[1].tap", "already used by $.nets[0]"),
        ]
        for (nets, path, reason) in cases {
            let all = w.issues(base("\"nets\": \(nets)"))
            #expect(all.contains { $0.path == path && $0.reason.contains(reason) }, "\(nets): \(all)")
        }
    }

    @Test func aBridgeWithoutATapGetsATapNamedAfterTheVM() throws {
        let w = try Workspace()
        let d = try w.load(base("""
            "nets": [{"bridge": "br-plant"}, {"bridge": "br-plant", "tap": "mytap", "mtu": 9000}, {"tap": "solo", "mtu": 1400}]
            """))
        #expect(d.nets.map(\.tap) == ["rtv-vm-a-0", "mytap", "solo"])
        #expect(d.nets.map(\.bridge) == ["br-plant", "br-plant", nil])
        #expect(d.nets.map(\.mtu) == [nil, 9000, 1400])
    }

    @Test func bridgeTapNamesFitIFNAMSIZAndDifferPerVM() {
        #expect(NetSettings.bridgeTapName(vmName: "plc", index: 2) == "rtv-plc-2")
        let long = NetSettings.bridgeTapName(vmName: "a-rather-long-vm-name", index: 12)
        #expect(long.utf8.count <= 15 && long.hasPrefix("rtv") && long.hasSuffix("-12"), "\(long)")
        #expect(long != NetSettings.bridgeTapName(vmName: "a-rather-long-vm-nam3", index: 12))
        #expect(NetSettings.isInterfaceName(long))
    }

    @Test func macFormatting() {
        #expect(NetSettings.format([0x02, 0, 0xAB, 0x1, 0xFF, 0x10]) == "02:00:ab:01:ff:10")
        #expect(NetSettings.parseMAC("02:00:AB:01:ff:10") == [0x02, 0, 0xAB, 0x1, 0xFF, 0x10])
        #expect(NetSettings.parseMAC("2:0:ab:1:ff:10") == nil)
    }
}
