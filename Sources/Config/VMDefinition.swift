import Arch
import Posix
import SystemPackage
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// One problem in a definition: where (file and JSON path) and why.
public struct DefinitionIssue: Equatable, Sendable, CustomStringConvertible {
    public let file: String
    public let path: String
    public let reason: String
    public var description: String { "\(file): \(path): \(reason)" }
}

/// A definition that failed validation; lists every problem found, not just the first.
public struct DefinitionError: Error, Equatable, CustomStringConvertible {
    public let issues: [DefinitionIssue]
    public var description: String { issues.map(\.description).joined(separator: "\n") }
}

public struct CPUSettings: Equatable, Sendable {
    public var template: CPUTemplate = .auto
    public var disableFeatures: [String] = []
    public init(template: CPUTemplate = .auto, disableFeatures: [String] = []) {
        self.template = template; self.disableFeatures = disableFeatures
    }
    public var policy: CPUIDPolicy { CPUIDPolicy(template: template, disabledFeatures: disableFeatures) }
}

/// A validated VM definition (`/etc/rtvisor/vms/NAME.json`). Paths are absolute.
public struct VMDefinition: Equatable, Sendable {
    public var name: String
    public var vcpus: Int
    public var memoryMiB: Int
    public var kernel: String
    public var initrd: String?
    public var cmdline: String
    public var cpu: CPUSettings
    public var disks: [DiskSettings]
    public var nets: [NetSettings]
    /// Host PCI functions given to this VM with VFIO (Passthrough.swift, docs/vfio.md).
    public var passthrough: [PassthroughSettings] = []
    /// Shared-memory channels to other VMs (ivshmem devices; Channels.swift, docs/channels.md).
    public var channels: [ChannelSettings] = []
    /// rtvisord's fields (autostart, restart policy, stop timeout); see DaemonSettings.swift.
    public var daemon: DaemonSettings = DaemonSettings()
    /// Dedicated host CPUs, SCHED_FIFO and locked memory; nil for an ordinary VM (Realtime.swift).
    public var realtime: RealtimeSettings?
    /// The VMM's seccomp filters (Sandbox.swift, docs/sandbox.md); enforced unless turned off.
    public var sandbox: SandboxSettings = SandboxSettings()

    public static let vcpuRange = 1...254
    public static let memoryRange = 8...(1 << 20)
    public static let cmdlineMax = 0xFFFF
    /// Slots 1–31 of PCI bus 0 (slot 0 is the host bridge).
    public static let maxPciDevices = 31
    public static let knownKeys: Set<String> = Set(["name", "vcpus", "memory_mib", "kernel", "initrd", "cmdline", "cpu",
                                                     "disks", "nets", "realtime", "sandbox", "passthrough", "channels"])
        .union(DaemonSettings.keys)
    public static let cpuKeys: Set<String> = ["template", "disable_features"]
    /// Accepted and ignored: where an editor finds the definition's JSON Schema.
    public static let schemaKey = "$schema"

    public init(name: String, vcpus: Int = 1, memoryMiB: Int = 128, kernel: String, initrd: String? = nil,
                cmdline: String = "", cpu: CPUSettings = CPUSettings(), disks: [DiskSettings] = [], nets: [NetSettings] = []) {
        self.name = name; self.vcpus = vcpus; self.memoryMiB = memoryMiB; self.kernel = kernel
        self.initrd = initrd; self.cmdline = cmdline; self.cpu = cpu
        self.disks = disks; self.nets = nets
    }

    /// Reads and validates the definition at `path`; relative paths in it resolve against
    /// `baseDirectory`, by default the file's directory.
    public static func load(path: String, baseDirectory: String? = nil) throws -> VMDefinition {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw DefinitionError(issues: [DefinitionIssue(file: path, path: "$", reason: "cannot read file: \(Self.reason(for: path))")])
        }
        let dir = path.contains("/") ? String(path[..<path.lastIndex(of: "/")!]) : "."
        return try parse(data, file: path, baseDirectory: baseDirectory ?? dir)
    }

    static func reason(for path: String) -> String {
        var st = stat()
        if stat(path, &st) != 0 { return Errno(rawValue: errno).description }
        if (st.st_mode & S_IFMT) == S_IFDIR { return "is a directory" }
        return "unreadable"
    }

    /// Validates JSON text; relative file paths are resolved against `baseDirectory` (itself made
    /// absolute against the working directory: the VMM finds guest files from `/`, `GuestFile`).
    public static func parse(_ data: Data, file: String, baseDirectory: String, checkFiles: Bool = true) throws -> VMDefinition {
        let baseDirectory = baseDirectory.hasPrefix("/") ? baseDirectory : FileManager.default.currentDirectoryPath + "/" + baseDirectory
        let root: JSONValue
        do {
            root = try JSONValue.parse(data)
        } catch let DecodingError.dataCorrupted(ctx) {
            let detail = (ctx.underlyingError.map { "\($0)" } ?? ctx.debugDescription)
            throw DefinitionError(issues: [DefinitionIssue(file: file, path: "$", reason: "invalid JSON: \(Self.cleanJSONError(detail))")])
        } catch {
            throw DefinitionError(issues: [DefinitionIssue(file: file, path: "$", reason: "invalid JSON: \(error)")])
        }
        var v = Validator(file: file, baseDirectory: baseDirectory, checkFiles: checkFiles)
        let def = v.definition(root)
        if !v.issues.isEmpty { throw DefinitionError(issues: v.issues) }
        return def!
    }

    static func cleanJSONError(_ s: String) -> String {
        // Foundation wraps the useful part ("Unexpected character … around line 3, column 5.") in noise.
        let marker = "NSDebugDescription="
        guard let start = s.indices.first(where: { s[$0...].hasPrefix(marker) }) else { return s }
        let rest = s[s.index(start, offsetBy: marker.count)...]
        return String(rest.prefix { $0 != "," && $0 != ")" })
    }
}

/// Walks the JSON tree collecting issues with their JSON paths.
struct Validator {
    let file: String
    let baseDirectory: String
    let checkFiles: Bool
    var issues: [DefinitionIssue] = []

    mutating func fail(_ path: String, _ reason: String) { issues.append(DefinitionIssue(file: file, path: path, reason: reason)) }

    mutating func definition(_ root: JSONValue) -> VMDefinition? {
        guard case let .object(o) = root else { fail("$", "must be a JSON object, got \(root.kindDescription)"); return nil }
        for key in o.keys.sorted() where !VMDefinition.knownKeys.contains(key) && key != VMDefinition.schemaKey {
            fail("$.\(key)", "unknown key" + suggestion(key, VMDefinition.knownKeys))
        }
        // Editors find docs/vm-definition.schema.json through "$schema"; its value is theirs.
        if let s = o[VMDefinition.schemaKey], s.stringValue == nil {
            fail("$.\(VMDefinition.schemaKey)", "must be a string (the JSON Schema's URI or path), got \(s.kindDescription)")
        }
        let name = string(o, "name", required: true) ?? ""
        if case .string = o["name"] {
            if name.isEmpty {
                fail("$.name", "must not be empty")
            } else {
                let ok = name.count <= 64 && name.unicodeScalars.allSatisfy { ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) || $0 == "-" || $0 == "_" }
                if !ok { fail("$.name", "must be 1–64 characters of letters, digits, '-' and '_', got \"\(name)\"") }
            }
        }
        let vcpus = integer(o, "vcpus", range: VMDefinition.vcpuRange) ?? 1
        let memory = integer(o, "memory_mib", range: VMDefinition.memoryRange, required: true) ?? 0
        let kernel = file(o, "kernel", required: true)
        let initrd = file(o, "initrd", required: false)
        let cmdline = string(o, "cmdline", required: false) ?? ""
        if cmdline.utf8.count > VMDefinition.cmdlineMax { fail("$.cmdline", "is \(cmdline.utf8.count) bytes, the limit is \(VMDefinition.cmdlineMax)") }
        let cpu = cpuSettings(o["cpu"])
        let disks = disks(o["disks"])
        let nets = nets(o["nets"], vmName: name)
        let passthrough = passthrough(o["passthrough"])
        let channels = channels(o["channels"])
        if disks.count + nets.count + passthrough.count + channels.count > VMDefinition.maxPciDevices {
            fail("$", "\(disks.count) disks, \(nets.count) nets, \(passthrough.count) passthrough devices and \(channels.count) channels exceed the \(VMDefinition.maxPciDevices) PCI slots")
        }
        var def = VMDefinition(name: name, vcpus: vcpus, memoryMiB: memory, kernel: kernel ?? "", initrd: initrd,
                               cmdline: cmdline, cpu: cpu, disks: disks, nets: nets)
        def.daemon = daemonSettings(o)
        def.passthrough = passthrough
        def.channels = channels
        def.realtime = realtime(o["realtime"], vcpus: vcpus, memoryMiB: memory)
        def.sandbox = sandbox(o["sandbox"])
        return def
    }

    mutating func cpuSettings(_ value: JSONValue?) -> CPUSettings {
        var settings = CPUSettings()
        guard let value else { return settings }
        guard case let .object(o) = value else { fail("$.cpu", "must be an object, got \(value.kindDescription)"); return settings }
        for key in o.keys.sorted() where !VMDefinition.cpuKeys.contains(key) {
            fail("$.cpu.\(key)", "unknown key" + suggestion(key, VMDefinition.cpuKeys))
        }
        if let t = o["template"] {
            if case let .string(s) = t, let template = CPUTemplate(rawValue: s) { settings.template = template }
            else { fail("$.cpu.template", "must be one of \(CPUTemplate.allCases.map { "\"\($0.rawValue)\"" }.joined(separator: ", ")), got \(t.kindDescription)") }
        }
        if let f = o["disable_features"] {
            guard case let .array(items) = f else { fail("$.cpu.disable_features", "must be an array of feature names, got \(f.kindDescription)"); return settings }
            for (i, item) in items.enumerated() {
                guard case let .string(s) = item else { fail("$.cpu.disable_features[\(i)]", "must be a string, got \(item.kindDescription)"); continue }
                if CPUFeature.named(s) == nil {
                    fail("$.cpu.disable_features[\(i)]", "unknown CPU feature \"\(s)\"" + suggestion(s.lowercased(), Set(CPUFeature.byName.keys)))
                } else {
                    settings.disableFeatures.append(s.lowercased())
                }
            }
        }
        return settings
    }

    mutating func string(_ o: [String: JSONValue], _ key: String, required: Bool) -> String? {
        guard let v = o[key] else { if required { fail("$.\(key)", "is required") }; return nil }
        guard case let .string(s) = v else { fail("$.\(key)", "must be a string, got \(v.kindDescription)"); return nil }
        return s
    }

    mutating func integer(_ o: [String: JSONValue], _ key: String, range: ClosedRange<Int>, required: Bool = false) -> Int? {
        guard let v = o[key] else { if required { fail("$.\(key)", "is required") }; return nil }
        guard case let .integer(i) = v, let n = Int(exactly: i), range.contains(n) else {
            fail("$.\(key)", "must be an integer from \(range.lowerBound) to \(range.upperBound), got \(v.kindDescription)")
            return nil
        }
        return n
    }

    mutating func file(_ o: [String: JSONValue], _ key: String, required: Bool) -> String? {
        guard let s = string(o, key, required: required) else { return nil }
        guard !s.isEmpty else { fail("$.\(key)", "must not be empty"); return nil }
        let path = s.hasPrefix("/") ? s : baseDirectory + "/" + s
        if checkFiles {
            var st = stat()
            if stat(path, &st) != 0 {
                fail("$.\(key)", "\(path): \(Errno(rawValue: errno))")
                return nil
            }
            if (st.st_mode & S_IFMT) != S_IFREG { fail("$.\(key)", "\(path): not a regular file"); return nil }
            if let refusal = guestFileRefusal(path, field: "$.\(key)", allowing: [.regularFile]) { fail("$.\(key)", refusal); return nil }
            if access(path, R_OK) != 0 { fail("$.\(key)", "\(path): not readable: \(Errno(rawValue: errno))"); return nil }
        }
        return path
    }

    /// What the VMM's own lookup of a guest file (`GuestFile`: root's symlinks only, no foreign
    /// hard links; docs/sandbox.md) would refuse about `path`, so a definition that cannot start is
    /// reported when it is validated or loaded, not only when its VMM starts.
    func guestFileRefusal(_ path: String, field: String, allowing kinds: Set<GuestFile.Kind>) -> String? {
        do { _ = try GuestFile.locate(path, field: field, allowing: kinds); return nil } catch { return "\(path): \(error.reason)" }
    }

    /// Unknown names that get a "did you mean" per definition: the API validates what a local
    /// client sends, and a megabyte of unknown keys must not cost a megabyte of edit distances.
    static let maxSuggestions = 32
    /// Unknown names examined for a suggestion, and edit distances computed (the tests' measure of work).
    var suggestionsComputed = 0, distancesComputed = 0

    /// " (did you mean "x"?)" when a key is at most two edits away from a known one. Only names
    /// within two characters of a known one's length are compared (no others can be that close).
    mutating func suggestion(_ key: String, _ known: Set<String>) -> String {
        guard suggestionsComputed < Self.maxSuggestions, let longest = known.map(\.utf8.count).max(), key.utf8.count <= longest + 2 else { return "" }
        suggestionsComputed += 1
        let length = key.count
        let candidates = known.filter { abs($0.count - length) <= 2 }
        distancesComputed += candidates.count
        let best = candidates.map { ($0, editDistance(key, $0)) }.min { $0.1 < $1.1 || ($0.1 == $1.1 && $0.0 < $1.0) }
        if let best, best.1 <= 2 { return " (did you mean \"\(best.0)\"?)" }
        return ""
    }

    func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        if a.isEmpty || b.isEmpty { return max(a.count, b.count) }
        var prev = Array(0...b.count)
        for i in 1...a.count {
            var cur = [i] + Array(repeating: 0, count: b.count)
            for j in 1...b.count {
                cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            prev = cur
        }
        return prev[b.count]
    }
}
