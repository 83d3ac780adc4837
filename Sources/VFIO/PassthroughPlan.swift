/// The host-side checks of a VM's `passthrough` list, before anything is opened: every address is
/// a device, bound to vfio-pci, in an IOMMU group that is viable, and the functions of one
/// physical device that share a group are passed together or not at all.
public struct PassthroughPlan: Equatable, Sendable {
    /// IOMMU group → the requested functions in it, in request order of their first appearance.
    public var groups: [(group: Int, devices: [PciAddress])]

    public static func == (a: Self, b: Self) -> Bool {
        a.groups.map(\.group) == b.groups.map(\.group) && a.groups.map(\.devices) == b.groups.map(\.devices)
    }

    /// Drivers a group member may be bound to without making the group unusable (the kernel's
    /// rule: vfio-pci itself, pci-stub, and PCIe port drivers of bridges).
    public static let harmlessDrivers: Set<String> = ["vfio-pci", "pci-stub", "pcieport"]

    /// Checks `requested` (JSON path prefix `field` for messages) against the host.
    public static func resolve(_ requested: [String], host: HostPCI, field: String = "$.passthrough") throws -> PassthroughPlan {
        var problems: [String] = []
        var addresses: [PciAddress] = []
        for (i, text) in requested.enumerated() {
            let at = "\(field)[\(i)].pci"
            guard let a = PciAddress(text) else {
                problems.append("\(at): \"\(text)\" is not a PCI address (DDDD:BB:DD.F, e.g. 0000:03:00.0)"); continue
            }
            if addresses.contains(a) { problems.append("\(at): \(a) is listed twice"); continue }
            guard host.exists(a) else {
                problems.append("\(at): no PCI device \(a) on this host (\(host.devicePath(a)) does not exist)"); continue
            }
            let id = host.identity(of: a).map { " [\($0)]" } ?? ""
            var bound = false
            switch host.driver(of: a) {
            case "vfio-pci": bound = true
            case nil:
                problems.append("\(at): \(a)\(id) is not bound to vfio-pci (no driver); bind it: echo vfio-pci > \(host.devicePath(a))/driver_override && echo \(a) > \(host.root)/bus/pci/drivers_probe")
            case let d?:
                problems.append("\(at): \(a)\(id) is bound to \(d), not vfio-pci; rebind it: echo vfio-pci > \(host.devicePath(a))/driver_override && echo \(a) > \(host.devicePath(a))/driver/unbind && echo \(a) > \(host.root)/bus/pci/drivers_probe")
            }
            guard host.iommuGroup(of: a) != nil else {
                problems.append("\(at): \(a) has no IOMMU group: the host's IOMMU is off or absent (enable VT-d/AMD-Vi in the firmware and boot with intel_iommu=on or amd_iommu=on)"); continue
            }
            if bound { addresses.append(a) }
        }
        var groups: [(group: Int, devices: [PciAddress])] = []
        for a in addresses {
            let g = host.iommuGroup(of: a)!
            if let i = groups.firstIndex(where: { $0.group == g }) { groups[i].devices.append(a) } else { groups.append((g, [a])) }
        }
        for (group, devices) in groups {
            let members = host.groupMembers(group)
            // Viability: the kernel refuses the whole group while any member has another driver.
            let offenders = members.filter { m in host.driver(of: m).map { !harmlessDrivers.contains($0) } ?? false }
            if !offenders.isEmpty {
                let list = offenders.map { "\($0) (driver \(host.driver(of: $0)!))" }.joined(separator: ", ")
                problems.append("\(field): IOMMU group \(group) of \(devices.map(\.description).joined(separator: ", ")) is not viable: \(list) must be bound to vfio-pci or unbound first (the group is assigned as a whole)")
            }
            // The multifunction rule.
            for m in members where !devices.contains(m) && devices.contains(where: { $0.samePhysicalDevice(as: m) }) {
                let sibling = devices.first { $0.samePhysicalDevice(as: m) }!
                problems.append("\(field): \(m) shares IOMMU group \(group) with \(sibling) (another function of the same physical device): pass both to this VM or neither")
            }
        }
        if !problems.isEmpty { throw VFIOError(problems.joined(separator: "\n")) }
        return PassthroughPlan(groups: groups)
    }
}
