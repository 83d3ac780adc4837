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
/// start itself and names the drop-in that allows it (`DeniedDevice`). access(2) asks the same
/// device cgroup program that open(2) does (the kernel's inode_permission), without opening the
/// device. A disk is checked when its definition is loaded too (Config: a denied disk makes the
/// definition invalid, with the same explanation); this check also covers VFIO, and a policy
/// that changed since the definitions were read.
public enum DeviceAccess {
    /// One device node a VM needs.
    public struct Node: Equatable, Sendable {
        /// Where the definition names it ("$.disks[0].path", "$.passthrough[0].pci (…)").
        public var jsonPath: String
        /// The node, and the access the VMM needs (a disk that is not read-only, VFIO: read-write).
        public var device: DeniedDevice

        public init(jsonPath: String, device: DeniedDevice) { self.jsonPath = jsonPath; self.device = device }
    }

    /// A device file's kind and number, from stat(2); nil for anything else (a regular file, a
    /// missing path: the VMM reports those itself).
    public struct DeviceFile: Equatable, Sendable {
        public var isBlock: Bool
        public var major: UInt32
        public var minor: UInt32
        public init(isBlock: Bool, major: UInt32, minor: UInt32) { self.isBlock = isBlock; self.major = major; self.minor = minor }
    }

    /// The device nodes `definition` needs: its disks that are block devices, and for
    /// passthrough /dev/vfio/vfio and each device's IOMMU group node.
    public static func nodes(of definition: VMDefinition, deviceFile: (String) -> DeviceFile? = hostDeviceFile,
                             iommuGroup: (String) -> Int? = { PassthroughClaims.sysfsGroup($0) }) -> [Node] {
        var nodes: [Node] = []
        func add(_ jsonPath: String, _ path: String, block: Bool, write: Bool) {
            guard !nodes.contains(where: { $0.device.path == path }), let f = deviceFile(path), f.isBlock == block else { return }
            nodes.append(Node(jsonPath: jsonPath, device: DeniedDevice(path: path, isBlock: block, major: f.major, minor: f.minor, write: write)))
        }
        for (i, disk) in definition.disks.enumerated() {
            add("$.disks[\(i)].path", disk.path, block: true, write: !disk.readOnly)
        }
        if let first = definition.passthrough.first { add("$.passthrough[0].pci (\(first.pci))", "/dev/vfio/vfio", block: false, write: true) }
        for (i, device) in definition.passthrough.enumerated() {
            if let group = iommuGroup(device.pci) { add("$.passthrough[\(i)].pci (\(device.pci))", "/dev/vfio/\(group)", block: false, write: true) }
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
            if check(node.device.path, node.device.write ? R_OK | W_OK : R_OK) == EPERM { return "\(node.jsonPath): \(node.device)" }
        }
        return nil
    }

    /// stat(2) of a device file.
    public static func hostDeviceFile(_ path: String) -> DeviceFile? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        let type = st.st_mode & S_IFMT
        guard type == S_IFBLK || type == S_IFCHR else { return nil }
        let (major, minor) = DeniedDevice.split(UInt64(st.st_rdev))
        return DeviceFile(isBlock: type == S_IFBLK, major: major, minor: minor)
    }

    /// access(2): 0, or its errno.
    public static func hostAccess(_ path: String, _ mode: Int32) -> Int32 {
        access(path, mode) == 0 ? 0 : errno
    }
}
