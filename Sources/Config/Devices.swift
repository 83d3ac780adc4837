import Posix
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// One virtio-blk disk of a definition (`disks[]`).
public struct DiskSettings: Equatable, Sendable {
    /// Absolute path of a raw image file or block device.
    public var path: String
    public var readOnly: Bool
    /// Returned by VIRTIO_BLK_T_GET_ID (/sys/block/vdX/serial in a Linux guest); ≤ 20 bytes.
    public var serial: String
    /// Open with O_DIRECT: bypass the host page cache.
    public var directIO: Bool

    public static let keys: Set<String> = ["path", "read_only", "serial", "direct_io"]
    public static let serialMax = 20

    public init(path: String, readOnly: Bool = false, serial: String = "", directIO: Bool = false) {
        self.path = path; self.readOnly = readOnly; self.serial = serial; self.directIO = directIO
    }
}

/// One virtio-net interface of a definition (`nets[]`), backed by a TAP device.
public struct NetSettings: Equatable, Sendable {
    /// Host interface name; created if it does not exist, attached to if it does. With a
    /// `bridge` and no `tap` in the definition: `bridgeTapName`.
    public var tap: String
    public var mac: [UInt8]
    /// An existing Linux bridge the VMM makes the tap a port of (and brings the tap up on).
    public var bridge: String?
    /// The tap's MTU, offered to the guest too (VIRTIO_NET_F_MTU). Without it a tap on a bridge
    /// takes the bridge's MTU and the guest keeps its default.
    public var mtu: Int?

    public static let keys: Set<String> = ["tap", "mac", "bridge", "mtu"]
    /// The IPv4 minimum (RFC 791) to the largest a tap takes.
    public static let mtuRange = 68...65535

    public init(tap: String, mac: [UInt8], bridge: String? = nil, mtu: Int? = nil) {
        self.tap = tap; self.mac = mac; self.bridge = bridge; self.mtu = mtu
    }

    /// The tap of interface `index` on a bridge when the definition names none: `rtv-VM-INDEX`
    /// while that fits IFNAMSIZ (15 characters), else `rtv`, 8 hex digits of the VM name's hash,
    /// `-INDEX`. Stable, so the host's view of a VM's ports survives restarts.
    public static func bridgeTapName(vmName: String, index: Int) -> String {
        let readable = "rtv-\(vmName)-\(index)"
        if readable.utf8.count <= 15 { return readable }
        var h: UInt32 = 0x811c_9dc5 // FNV-1a 32
        for b in vmName.utf8 { h = (h ^ UInt32(b)) &* 0x0100_0193 }
        let hex = String(h, radix: 16)
        return "rtv" + String(repeating: "0", count: 8 - hex.count) + hex + "-\(index)"
    }

    /// An interface name as the kernel takes it: 1–15 bytes (IFNAMSIZ with the NUL), printable
    /// ASCII without '/', ':' or spaces, not "." or "..".
    public static func isInterfaceName(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.count <= 15 && s != "." && s != ".."
            && s.unicodeScalars.allSatisfy { $0.isASCII && $0.value > 0x20 && $0.value < 0x7F && $0 != "/" && $0 != ":" }
    }

    /// A locally administered unicast MAC derived from the VM name and interface index, so a VM
    /// keeps its address across restarts without one in the definition.
    public static func stableMAC(vmName: String, index: Int) -> [UInt8] {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325 // FNV-1a 64
        for b in Array("\(vmName)/\(index)".utf8) { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return [0x02] + (0..<5).map { UInt8(truncatingIfNeeded: h >> (8 * UInt64($0))) }
    }

    public static func parseMAC(_ s: String) -> [UInt8]? {
        let parts = s.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 6 else { return nil }
        var out: [UInt8] = []
        for p in parts {
            guard p.count == 2, let b = UInt8(p, radix: 16) else { return nil }
            out.append(b)
        }
        return out
    }

    public static func format(_ mac: [UInt8]) -> String {
        mac.map { let s = String($0, radix: 16); return s.count == 1 ? "0" + s : s }.joined(separator: ":")
    }
}

extension Validator {
    mutating func disks(_ value: JSONValue?) -> [DiskSettings] {
        guard let value else { return [] }
        guard case let .array(items) = value else { fail("$.disks", "must be an array of disk objects, got \(value.kindDescription)"); return [] }
        var disks: [DiskSettings] = []
        var seen: [String: Int] = [:]
        for (i, item) in items.enumerated() {
            let at = "$.disks[\(i)]"
            guard case let .object(o) = item else { fail(at, "must be an object, got \(item.kindDescription)"); continue }
            for key in o.keys.sorted() where !DiskSettings.keys.contains(key) {
                fail("\(at).\(key)", "unknown key" + suggestion(key, DiskSettings.keys))
            }
            let readOnly = bool(o, "read_only", at: at) ?? false
            let directIO = bool(o, "direct_io", at: at) ?? false
            var serial = ""
            if let v = o["serial"] {
                if case let .string(s) = v, s.utf8.count <= DiskSettings.serialMax, s.unicodeScalars.allSatisfy({ $0.isASCII && $0.value >= 0x20 && $0.value < 0x7F }) {
                    serial = s
                } else {
                    fail("\(at).serial", "must be a string of at most \(DiskSettings.serialMax) printable ASCII characters, got \(v.kindDescription)")
                }
            }
            guard let path = diskPath(o, at: at, readOnly: readOnly) else { continue }
            if let first = seen[path] {
                fail("\(at).path", "\(path) is already used by $.disks[\(first)]")
                continue
            }
            seen[path] = i
            disks.append(DiskSettings(path: path, readOnly: readOnly, serial: serial, directIO: directIO))
        }
        return disks
    }

    mutating func diskPath(_ o: [String: JSONValue], at: String, readOnly: Bool) -> String? {
        guard let v = o["path"] else { fail("\(at).path", "is required"); return nil }
        guard case let .string(s) = v, !s.isEmpty else { fail("\(at).path", "must be a non-empty string, got \(v.kindDescription)"); return nil }
        let path = s.hasPrefix("/") ? s : baseDirectory + "/" + s
        guard checkFiles else { return path }
        var st = stat()
        guard stat(path, &st) == 0 else { fail("\(at).path", "\(path): \(Errno(rawValue: errno))"); return nil }
        let type = st.st_mode & S_IFMT
        guard type == S_IFREG || type == S_IFBLK else { fail("\(at).path", "\(path): not a regular file or block device"); return nil }
        if let refusal = guestFileRefusal(path, field: "\(at).path", allowing: [.regularFile, .blockDevice]) { fail("\(at).path", refusal); return nil }
        guard access(path, readOnly ? R_OK : R_OK | W_OK) == 0 else {
            // A block device the device cgroup denies (rtvisord.service's DevicePolicy=closed):
            // not a permission problem read_only would solve.
            if errno == EPERM && type == S_IFBLK {
                fail("\(at).path", "\(DeniedDevice(path: path, isBlock: true, rdev: UInt64(st.st_rdev), write: !readOnly))")
                return nil
            }
            fail("\(at).path", "\(path): not \(readOnly ? "readable" : "readable and writable"): \(Errno(rawValue: errno))"
                 + (readOnly ? "" : " (set \"read_only\": true for a read-only disk)"))
            return nil
        }
        if type == S_IFREG && st.st_size < 512 { fail("\(at).path", "\(path): smaller than one 512-byte sector"); return nil }
        return path
    }

    mutating func nets(_ value: JSONValue?, vmName: String) -> [NetSettings] {
        guard let value else { return [] }
        guard case let .array(items) = value else { fail("$.nets", "must be an array of interface objects, got \(value.kindDescription)"); return [] }
        var nets: [NetSettings] = []
        var taps: [String: Int] = [:]
        var macs: [[UInt8]: Int] = [:]
        for (i, item) in items.enumerated() {
            let at = "$.nets[\(i)]"
            guard case let .object(o) = item else { fail(at, "must be an object, got \(item.kindDescription)"); continue }
            for key in o.keys.sorted() where !NetSettings.keys.contains(key) {
                fail("\(at).\(key)", "unknown key" + suggestion(key, NetSettings.keys))
            }
            let bridge = interfaceName(o, "bridge", at: at)
            var tap = interfaceName(o, "tap", at: at)
            if o["tap"] == nil {
                if o["bridge"] == nil { fail("\(at).tap", "is required (or a \"bridge\" to put an interface of its own on)") }
                else if bridge != nil { tap = NetSettings.bridgeTapName(vmName: vmName, index: i) }
            }
            var mtu: Int? = nil
            if let v = o["mtu"] {
                if case let .integer(n) = v, let m = Int(exactly: n), NetSettings.mtuRange.contains(m) { mtu = m }
                else { fail("\(at).mtu", "must be an integer from \(NetSettings.mtuRange.lowerBound) to \(NetSettings.mtuRange.upperBound), got \(v.kindDescription)") }
            }
            var mac = NetSettings.stableMAC(vmName: vmName, index: i)
            if let v = o["mac"] {
                if case let .string(s) = v, let m = NetSettings.parseMAC(s) {
                    if m[0] & 1 != 0 { fail("\(at).mac", "\(s) is a multicast address; the first octet must be even") }
                    else if m.allSatisfy({ $0 == 0 }) { fail("\(at).mac", "must not be 00:00:00:00:00:00") }
                    else { mac = m }
                } else {
                    fail("\(at).mac", "must be six hex octets separated by ':' like \"02:00:00:00:00:01\", got \(v.kindDescription)")
                }
            }
            guard let tap else { continue }
            if tap == bridge { fail("\(at).bridge", "\"\(tap)\" is the tap itself; name the bridge the tap joins"); continue }
            if let first = taps[tap] { fail("\(at).tap", "\"\(tap)\" is already used by $.nets[\(first)]"); continue }
            if let first = macs[mac] { fail("\(at).mac", "\(NetSettings.format(mac)) is already used by $.nets[\(first)]"); continue }
            taps[tap] = i
            macs[mac] = i
            nets.append(NetSettings(tap: tap, mac: mac, bridge: bridge, mtu: mtu))
        }
        return nets
    }

    /// `o[key]` when it is an interface name (a tap's, a bridge's).
    mutating func interfaceName(_ o: [String: JSONValue], _ key: String, at: String) -> String? {
        guard let v = o[key] else { return nil }
        if case let .string(s) = v, NetSettings.isInterfaceName(s) { return s }
        fail("\(at).\(key)", "must be an interface name of 1–15 printable ASCII characters without '/', ':' or spaces, got \(v.kindDescription)")
        return nil
    }

    mutating func bool(_ o: [String: JSONValue], _ key: String, at: String) -> Bool? {
        guard let v = o[key] else { return nil }
        guard case let .bool(b) = v else { fail("\(at).\(key)", "must be true or false, got \(v.kindDescription)"); return nil }
        return b
    }
}
