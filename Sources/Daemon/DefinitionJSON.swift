import Config
import Foundation

/// A definition's JSON, edited as JSON (not re-encoded from `VMDefinition`), so fields this
/// daemon does not know survive: what snapshots store (every path absolute, so the snapshot
/// restores from anywhere) and what restore and clone install under a new name, with new MACs,
/// taps and disks. Keys come out sorted and indented: the file is meant to be read and edited.
public struct DefinitionJSON: Equatable, Sendable {
    public private(set) var fields: [String: JSONValue]
    /// Where the text came from, for errors.
    public let file: String

    public init(_ bytes: [UInt8], file: String) throws(DefinitionError) {
        self.file = file
        let root: JSONValue
        do { root = try JSONValue.parse(Data(bytes)) } catch {
            // The parser's own report names the line and column.
            do { _ = try VMDefinition.parse(Data(bytes), file: file, baseDirectory: "/", checkFiles: false) } catch let e as DefinitionError { throw e } catch {}
            throw Self.problem(file, "$", "invalid JSON: \(error)")
        }
        guard case let .object(o) = root else { throw Self.problem(file, "$", "must be a JSON object, got \(root.kindDescription)") }
        fields = o
    }

    static func problem(_ file: String, _ path: String, _ reason: String) -> DefinitionError {
        DefinitionError([DefinitionIssue(in: file, at: path, reason: reason)])
    }

    /// `kernel`, `initrd` and each `disks[].path` that is relative made absolute against `base`
    /// (what `VMDefinition.parse` would resolve it to).
    public mutating func makePathsAbsolute(base: String) {
        func absolute(_ v: JSONValue?) -> JSONValue? {
            guard case let .string(s)? = v, !s.isEmpty, !s.hasPrefix("/") else { return v }
            return .string((base.hasSuffix("/") ? base : base + "/") + s)
        }
        for key in ["kernel", "initrd"] where fields[key] != nil { fields[key] = absolute(fields[key]) }
        if case var .array(disks)? = fields["disks"] {
            for i in disks.indices {
                guard case var .object(disk) = disks[i] else { continue }
                if disk["path"] != nil { disk["path"] = absolute(disk["path"]) }
                disks[i] = .object(disk)
            }
            fields["disks"] = .array(disks)
        }
    }

    public var name: String? {
        if case let .string(s)? = fields["name"] { return s }
        return nil
    }

    public mutating func rename(to name: String) { fields["name"] = .string(name) }

    /// Sets field `key` of `nets[index]` (which exists: the definition was validated).
    public mutating func setNet(_ index: Int, tap: String, mac: [UInt8]) {
        edit("nets", index) { $0["tap"] = .string(tap); $0["mac"] = .string(NetSettings.format(mac)) }
    }

    public mutating func setDiskPath(_ index: Int, _ path: String) {
        edit("disks", index) { $0["path"] = .string(path) }
    }

    /// Each disk whose path is a key of `map` gets the value instead (`migrate-receive
    /// --disk-map OLD=NEW`: the same storage under another path on this host). Returns the
    /// indices of the disks changed.
    @discardableResult
    public mutating func mapDiskPaths(_ map: [String: String]) -> [Int] {
        guard !map.isEmpty, case let .array(disks)? = fields["disks"] else { return [] }
        var changed: [Int] = []
        for (i, disk) in disks.enumerated() {
            guard case let .object(d) = disk, case let .string(path)? = d["path"], let new = map[path] else { continue }
            setDiskPath(i, new)
            changed.append(i)
        }
        return changed
    }

    /// Why a disk map cannot be used, or nil: both sides of each pair must be absolute paths.
    public static func diskMapProblem(_ map: [String: String]) -> String? {
        for (old, new) in map.sorted(by: { $0.key < $1.key }) where !old.hasPrefix("/") || !new.hasPrefix("/") || new.contains("\0") {
            return "disk_map: \"\(old)\" = \"\(new)\": both paths must be absolute"
        }
        return nil
    }

    private mutating func edit(_ list: String, _ index: Int, _ change: (inout [String: JSONValue]) -> Void) {
        guard case var .array(items)? = fields[list], items.indices.contains(index), case var .object(item) = items[index] else { return }
        change(&item)
        items[index] = .object(item)
        fields[list] = .array(items)
    }

    /// Validates the text as `rtvisor-vmm` and the daemon would (`checkFiles`: the kernel, initrd
    /// and disks must be there); relative paths resolve against `base`.
    public func validated(base: String, checkFiles: Bool = true) throws -> VMDefinition {
        try VMDefinition.parse(Data(bytes), file: file, baseDirectory: base, checkFiles: checkFiles)
    }

    /// Sorted keys, two-space indentation, a final newline.
    public var bytes: [UInt8] {
        var out = ""
        Self.write(.object(fields), indent: "", to: &out)
        out += "\n"
        return Array(out.utf8)
    }

    static func write(_ value: JSONValue, indent: String, to out: inout String) {
        switch value {
        case .null: out += "null"
        case let .bool(b): out += b ? "true" : "false"
        case let .integer(i): out += String(i)
        case let .number(d): out += d == d.rounded() && abs(d) < 1e15 ? String(format: "%.1f", d) : "\(d)"
        case let .string(s): out += quoted(s)
        case let .array(items):
            guard !items.isEmpty else { out += "[]"; return }
            out += "[\n"
            for (i, item) in items.enumerated() {
                out += indent + "  "
                write(item, indent: indent + "  ", to: &out)
                out += i == items.count - 1 ? "\n" : ",\n"
            }
            out += indent + "]"
        case let .object(o):
            guard !o.isEmpty else { out += "{}"; return }
            out += "{\n"
            let keys = o.keys.sorted()
            for (i, key) in keys.enumerated() {
                out += indent + "  " + quoted(key) + ": "
                write(o[key]!, indent: indent + "  ", to: &out)
                out += i == keys.count - 1 ? "\n" : ",\n"
            }
            out += indent + "}"
        }
    }

    static func quoted(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where u.value < 0x20:
                let hex = String(u.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(u)
            }
        }
        return out + "\""
    }
}
