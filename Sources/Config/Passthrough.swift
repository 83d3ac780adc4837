/// One host PCI function passed through to the guest with VFIO (`passthrough[]`, docs/vfio.md).
/// The definition checks the address's form; whether the device exists, is bound to vfio-pci and
/// sits in a viable IOMMU group is the host's business, checked when the VM starts (and by
/// `rtvisorctl validate` on the host).
public struct PassthroughSettings: Equatable, Sendable {
    /// Domain:bus:device.function, lower-case hex ("0000:03:00.0").
    public var pci: String

    public static let keys: Set<String> = ["pci"]
    public init(pci: String) { self.pci = pci }

    /// "DDDD:BB:DD.F" with hex digits, device ≤ 0x1f, function ≤ 7; returns the lower-case form.
    public static func normalizedAddress(_ s: String) -> String? {
        let parts = s.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0].count == 4, parts[1].count == 2 else { return nil }
        let devfn = parts[2].split(separator: ".", omittingEmptySubsequences: false)
        guard devfn.count == 2, devfn[0].count == 2, devfn[1].count == 1,
              UInt16(parts[0], radix: 16) != nil, UInt8(parts[1], radix: 16) != nil,
              let dev = UInt8(devfn[0], radix: 16), dev < 32, let fn = UInt8(devfn[1], radix: 16), fn < 8 else { return nil }
        return s.lowercased()
    }
}

extension Validator {
    mutating func passthrough(_ value: JSONValue?) -> [PassthroughSettings] {
        guard let value else { return [] }
        guard case let .array(items) = value else { fail("$.passthrough", "must be an array of {\"pci\": \"DDDD:BB:DD.F\"} objects, got \(value.kindDescription)"); return [] }
        var out: [PassthroughSettings] = []
        for (i, item) in items.enumerated() {
            let at = "$.passthrough[\(i)]"
            guard case let .object(o) = item else { fail(at, "must be an object like {\"pci\": \"0000:03:00.0\"}, got \(item.kindDescription)"); continue }
            for key in o.keys.sorted() where !PassthroughSettings.keys.contains(key) {
                fail("\(at).\(key)", "unknown key" + suggestion(key, PassthroughSettings.keys))
            }
            guard let v = o["pci"] else { fail("\(at).pci", "is required (the host PCI address, e.g. \"0000:03:00.0\")"); continue }
            guard case let .string(s) = v, let address = PassthroughSettings.normalizedAddress(s) else {
                fail("\(at).pci", "must be a PCI address DDDD:BB:DD.F such as \"0000:03:00.0\", got \(v.kindDescription)"); continue
            }
            if out.contains(where: { $0.pci == address }) { fail("\(at).pci", "\(address) is listed twice"); continue }
            out.append(PassthroughSettings(pci: address))
        }
        return out
    }
}
