#if canImport(Glibc)
import Glibc
#endif

/// A PCI function's address on the host: domain:bus:device.function, as sysfs spells it.
public struct PciAddress: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let domain: UInt16
    public let bus: UInt8
    public let device: UInt8
    public let function: UInt8

    /// Parses "0000:03:00.0" (hex; device 00–1f, function 0–7). Nil for anything else.
    public init?(_ text: String) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0].count == 4, parts[1].count == 2 else { return nil }
        let devfn = parts[2].split(separator: ".", omittingEmptySubsequences: false)
        guard devfn.count == 2, devfn[0].count == 2, devfn[1].count == 1,
              let d = UInt16(parts[0], radix: 16), let b = UInt8(parts[1], radix: 16),
              let dev = UInt8(devfn[0], radix: 16), dev < 32, let fn = UInt8(devfn[1], radix: 16), fn < 8 else { return nil }
        domain = d; bus = b; device = dev; function = fn
    }

    public var description: String {
        func hex(_ v: some BinaryInteger, _ width: Int) -> String {
            let s = String(v, radix: 16)
            return String(repeating: "0", count: max(0, width - s.count)) + s
        }
        return "\(hex(domain, 4)):\(hex(bus, 2)):\(hex(device, 2)).\(function)"
    }

    /// Functions of one physical device share domain, bus and device number.
    public func samePhysicalDevice(as other: PciAddress) -> Bool {
        domain == other.domain && bus == other.bus && device == other.device
    }

    public static func < (a: Self, b: Self) -> Bool { a.description < b.description }
}

/// What sysfs says about the host's PCI functions and IOMMU groups. `root` is "/sys" on a real
/// host and a directory tree in the tests.
public struct HostPCI: Sendable {
    public let root: String
    public init(root: String = "/sys") { self.root = root }

    public func devicePath(_ a: PciAddress) -> String { "\(root)/bus/pci/devices/\(a)" }

    public func exists(_ a: PciAddress) -> Bool { access(devicePath(a), F_OK) == 0 }

    /// The bound driver's name, nil when unbound.
    public func driver(of a: PciAddress) -> String? { linkTarget(devicePath(a) + "/driver").map(basename) }

    /// The IOMMU group number, nil when the host has no IOMMU (or it is off).
    public func iommuGroup(of a: PciAddress) -> Int? { linkTarget(devicePath(a) + "/iommu_group").flatMap { Int(basename($0)) } }

    /// Every function in IOMMU group `group`.
    public func groupMembers(_ group: Int) -> [PciAddress] {
        guard let dir = opendir("\(root)/kernel/iommu_groups/\(group)/devices") else { return [] }
        defer { closedir(dir) }
        var out: [PciAddress] = []
        while let e = readdir(dir) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if let a = PciAddress(name) { out.append(a) }
        }
        return out.sorted()
    }

    /// "vendor:device" in hex, for messages ("8086:10d3").
    public func identity(of a: PciAddress) -> String? {
        guard let v = readSmall(devicePath(a) + "/vendor"), let d = readSmall(devicePath(a) + "/device") else { return nil }
        return "\(v.replacingPrefix("0x")):\(d.replacingPrefix("0x"))"
    }

    private func basename(_ path: String) -> String { path.split(separator: "/").last.map(String.init) ?? path }

    private func linkTarget(_ path: String) -> String? {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink(path, &buf, buf.count - 1)
        guard n > 0 else { return nil }
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    private func readSmall(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: 64)
        let n = read(fd, &buf, buf.count)
        guard n > 0 else { return nil }
        return String(decoding: buf[0..<n], as: UTF8.self).trimmingWhitespace
    }
}

extension String {
    fileprivate func replacingPrefix(_ p: String) -> String { hasPrefix(p) ? String(dropFirst(p.count)) : self }
    fileprivate var trimmingWhitespace: String {
        String(self.drop { $0 == " " || $0 == "\n" }.reversed().drop { $0 == " " || $0 == "\n" }.reversed())
    }
}
