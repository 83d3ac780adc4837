#if canImport(Glibc)
import Glibc
#endif

/// A host PCI function belongs to one running VM at a time; so does its IOMMU group, which VFIO
/// assigns as a whole. rtvisord checks this before it starts a VMM, so the second VM's failure
/// names the first instead of surfacing as EBUSY from /dev/vfio.
public enum PassthroughClaims {
    /// Why `name` may not take `wanted`, or nil. `running` are the other VMs' current claims;
    /// `group` gives a device's IOMMU group (nil when unknown).
    public static func conflict(vm name: String, wants wanted: [String], running: [(vm: String, devices: [String])],
                                group: (String) -> Int?) -> String? {
        for (other, theirs) in running.sorted(by: { $0.vm < $1.vm }) where other != name {
            for device in wanted {
                if theirs.contains(device) {
                    return "VM \(name): PCI device \(device) is already passed through to VM \(other)"
                }
                if let g = group(device), let shared = theirs.first(where: { group($0) == g }) {
                    return "VM \(name): PCI device \(device) is in IOMMU group \(g), which VM \(other) holds (for \(shared)); a group goes to one VM"
                }
            }
        }
        return nil
    }

    /// The IOMMU group number from sysfs (the `iommu_group` link's last component).
    public static func sysfsGroup(_ device: String, sysfs: String = "/sys") -> Int? {
        var buf = [CChar](repeating: 0, count: 1024)
        let n = readlink("\(sysfs)/bus/pci/devices/\(device)/iommu_group", &buf, buf.count - 1)
        guard n > 0 else { return nil }
        let target = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return target.split(separator: "/").last.flatMap { Int($0) }
    }
}
