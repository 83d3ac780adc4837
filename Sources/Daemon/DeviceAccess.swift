import Config
import Posix
#if canImport(Glibc)
import Glibc
#endif

/// The device nodes a VM's VMM will open besides /dev/kvm and /dev/net/tun (block devices as
/// disks; VFIO's container and group nodes for passthrough), checked against rtvisord's own
/// device policy before the VMM is started.
///
/// Under systemd, rtvisord.service has `DevicePolicy=closed` with only /dev/kvm and /dev/net/tun
/// allowed; the VMMs live in cgroups below the unit's, under the same device program. A denied
/// device would end the VMM with a bare "Operation not permitted", so the daemon refuses the
/// start itself and names the drop-in that allows it (docs/daemon.md, "Block devices and VFIO").
/// access(2) asks the same device cgroup program that open(2) does (the kernel's
/// inode_permission), without opening the device.
public enum DeviceAccess {
    /// One device node a VM needs.
    public struct Node: Equatable, Sendable {
        /// Where the definition names it ("$.disks[0].path", "$.passthrough[0].pci").
        public var jsonPath: String
        public var path: String
        public var isBlock: Bool
        public var major: UInt32
        public var minor: UInt32
        /// Opened for writing too (a disk that is not read-only; VFIO nodes always).
        public var write: Bool
        /// The drop-in of systemd/rtvisord.service.d that allows it.
        public var dropIn: String

        public init(jsonPath: String, path: String, isBlock: Bool, major: UInt32, minor: UInt32, write: Bool, dropIn: String) {
            self.jsonPath = jsonPath; self.path = path; self.isBlock = isBlock; self.major = major; self.minor = minor
            self.write = write; self.dropIn = dropIn
        }
    }

    /// A device file's kind and number, from stat(2); nil for anything else (a regular file, a
    /// missing path: the VMM reports those itself).
    public struct DeviceFile: Equatable, Sendable {
        public var isBlock: Bool
        public var major: UInt32
        public var minor: UInt32
        public init(isBlock: Bool, major: UInt32, minor: UInt32) { self.isBlock = isBlock; self.major = major; self.minor = minor }
    }

    public static let blockDropIn = "block-devices.conf"
    public static let vfioDropIn = "vfio.conf"

    /// The device nodes `definition` needs: its disks that are block devices, and for
    /// passthrough /dev/vfio/vfio and each device's IOMMU group node.
    public static func nodes(of definition: VMDefinition, deviceFile: (String) -> DeviceFile? = hostDeviceFile,
                             iommuGroup: (String) -> Int? = { PassthroughClaims.sysfsGroup($0) }) -> [Node] {
        var nodes: [Node] = []
        for (i, disk) in definition.disks.enumerated() {
            guard let f = deviceFile(disk.path), f.isBlock else { continue }
            nodes.append(Node(jsonPath: "$.disks[\(i)].path", path: disk.path, isBlock: true, major: f.major, minor: f.minor,
                              write: !disk.readOnly, dropIn: blockDropIn))
        }
        var vfioPaths: [(String, String)] = []
        if let first = definition.passthrough.first { vfioPaths.append(("$.passthrough[0].pci (\(first.pci))", "/dev/vfio/vfio")) }
        for (i, device) in definition.passthrough.enumerated() {
            if let group = iommuGroup(device.pci) { vfioPaths.append(("$.passthrough[\(i)].pci (\(device.pci))", "/dev/vfio/\(group)")) }
        }
        for (jsonPath, path) in vfioPaths where !nodes.contains(where: { $0.path == path }) {
            guard let f = deviceFile(path), !f.isBlock else { continue }
            nodes.append(Node(jsonPath: jsonPath, path: path, isBlock: false, major: f.major, minor: f.minor, write: true, dropIn: vfioDropIn))
        }
        return nodes
    }

    /// Why the VM may not start, for the first node the device policy denies (access(2) fails
    /// with EPERM); nil when every node is allowed. Other errors are left to the VMM, which
    /// reports them with the path.
    public static func refusal(for definition: VMDefinition, deviceFile: (String) -> DeviceFile? = hostDeviceFile,
                               iommuGroup: (String) -> Int? = { PassthroughClaims.sysfsGroup($0) },
                               access check: (String, Int32) -> Int32 = hostAccess) -> String? {
        for node in nodes(of: definition, deviceFile: deviceFile, iommuGroup: iommuGroup) {
            let e = check(node.path, node.write ? R_OK | W_OK : R_OK)
            if e == EPERM { return deniedMessage(node) }
        }
        return nil
    }

    static func deniedMessage(_ n: Node) -> String {
        let kind = n.isBlock ? "block device" : "character device"
        let dropIn = n.dropIn.hasSuffix(".conf") ? String(n.dropIn.dropLast(5)) : n.dropIn
        return "\(n.jsonPath): \(n.path) is a \(kind) (\(n.major):\(n.minor)) that rtvisord's device policy denies "
            + "(\(n.write ? "read-write" : "read") access: \(errnoMessage(EPERM))). rtvisord.service has DevicePolicy=closed "
            + "(only /dev/kvm and /dev/net/tun); the drop-in \(n.dropIn) allows \(n.isBlock ? "block devices" : "VFIO"): "
            + "scripts/install.sh --drop-in \(dropIn), or copy share/rtvisor/systemd/rtvisord.service.d/\(n.dropIn) of the install "
            + "prefix to /etc/systemd/system/rtvisord.service.d/, then systemctl daemon-reload && systemctl restart rtvisord "
            + "(guests keep running; docs/daemon.md, \"Block devices and VFIO\")"
    }

    /// stat(2) of a device file.
    public static func hostDeviceFile(_ path: String) -> DeviceFile? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        let type = st.st_mode & S_IFMT
        guard type == S_IFBLK || type == S_IFCHR else { return nil }
        // glibc's gnu_dev_major/minor, spelled out: major in bits 8–19 and 32–43, minor in 0–7 and 20–31 (and 44–63).
        let dev = UInt64(st.st_rdev)
        let major = UInt32(truncatingIfNeeded: ((dev >> 8) & 0xfff) | ((dev >> 32) & ~UInt64(0xfff)))
        let minor = UInt32(truncatingIfNeeded: (dev & 0xff) | ((dev >> 12) & ~UInt64(0xff)))
        return DeviceFile(isBlock: type == S_IFBLK, major: major, minor: minor)
    }

    /// access(2): 0, or its errno.
    public static func hostAccess(_ path: String, _ mode: Int32) -> Int32 {
        access(path, mode) == 0 ? 0 : errno
    }
}
