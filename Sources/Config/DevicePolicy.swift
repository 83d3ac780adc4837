#if canImport(Glibc)
import Glibc
#endif

/// A device node that the process's device cgroup denies, explained. For root, access(2) or
/// open(2) of a device node fails with EPERM (not EACCES) only when the device cgroup (or an
/// LSM) says no; under systemd that is rtvisord.service's `DevicePolicy=closed`, which the
/// drop-ins of systemd/rtvisord.service.d open (docs/daemon.md, "Block devices and VFIO").
/// Shared by the definition check (a disk) and rtvisord's check before it starts a VMM.
public struct DeniedDevice: Equatable, Sendable, CustomStringConvertible {
    public var path: String
    public var isBlock: Bool
    public var major: UInt32
    public var minor: UInt32
    /// Read-write access was asked for (else read-only).
    public var write: Bool

    public static let blockDropIn = "block-devices.conf"
    public static let vfioDropIn = "vfio.conf"

    public init(path: String, isBlock: Bool, major: UInt32, minor: UInt32, write: Bool) {
        self.path = path; self.isBlock = isBlock; self.major = major; self.minor = minor; self.write = write
    }

    /// From stat(2)'s `st_rdev`.
    public init(path: String, isBlock: Bool, rdev: UInt64, write: Bool) {
        let (major, minor) = Self.split(rdev)
        self.init(path: path, isBlock: isBlock, major: major, minor: minor, write: write)
    }

    /// glibc's gnu_dev_major/minor, spelled out: major in bits 8–19 and 32–43, minor in 0–7 and 20–31.
    public static func split(_ dev: UInt64) -> (major: UInt32, minor: UInt32) {
        (UInt32(truncatingIfNeeded: ((dev >> 8) & 0xfff) | ((dev >> 32) & ~UInt64(0xfff))),
         UInt32(truncatingIfNeeded: (dev & 0xff) | ((dev >> 12) & ~UInt64(0xff))))
    }

    /// The drop-in that allows it: block devices, or (character devices: VFIO) vfio.conf.
    public var dropIn: String { isBlock ? Self.blockDropIn : Self.vfioDropIn }

    public var description: String {
        let name = String(dropIn.dropLast(".conf".count))
        return "\(path) is a \(isBlock ? "block" : "character") device (\(major):\(minor)) that the device cgroup denies "
            + "(\(write ? "read-write" : "read") access: Operation not permitted). Under systemd that is rtvisord.service's "
            + "DevicePolicy=closed (only /dev/kvm and /dev/net/tun); the drop-in \(dropIn) allows \(isBlock ? "block devices" : "VFIO"): "
            + "scripts/install.sh --drop-in \(name), or copy share/rtvisor/systemd/rtvisord.service.d/\(dropIn) of the install prefix "
            + "to /etc/systemd/system/rtvisord.service.d/, then systemctl daemon-reload && systemctl restart rtvisord "
            + "(guests keep running; docs/daemon.md, \"Block devices and VFIO\")"
    }
}
