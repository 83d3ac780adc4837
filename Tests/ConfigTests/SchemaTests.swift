import Testing
import Foundation
import Arch
import SandboxMode
@testable import Config

/// docs/vm-definition.schema.json against the validator: the definitions under Tests/Definitions
/// (valid/ pass both; invalid/ fail both; beyond-schema/ pass the schema, which cannot say what
/// they break, and fail the validator) and the schema's keys, enums and ranges against the
/// validator's own. scripts/test-schema.py runs the same files through a JSON Schema validator.
@Suite struct SchemaTests {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    static let definitions = repository + "/Tests/Definitions"

    static func files(_ kind: String) -> [String] {
        let dir = definitions + "/" + kind
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        return names.filter { $0.hasSuffix(".json") }.sorted().map { dir + "/" + $0 }
    }

    static func examples() -> [String] {
        ["examples/hello.json", "examples/inmate-smp.json", "examples/bridge.json", "examples/daemon/example.json"].map { repository + "/" + $0 }
    }

    /// Files are not looked at: the corpus names paths that exist nowhere.
    static func parse(_ path: String) throws -> VMDefinition {
        try VMDefinition.parse(try Data(contentsOf: URL(fileURLWithPath: path)), file: path, baseDirectory: "/corpus", checkFiles: false)
    }

    @Test func theCorpusIsThere() {
        #expect(Self.files("valid").count >= 8)
        #expect(Self.files("invalid").count >= 60)
        #expect(Self.files("beyond-schema").count >= 7)
    }

    @Test(arguments: files("valid") + examples())
    func validDefinitionsPass(_ path: String) throws {
        _ = try Self.parse(path)
    }

    @Test(arguments: files("invalid") + files("beyond-schema"))
    func invalidDefinitionsFailAtTheirPath(_ path: String) throws {
        let expected = try JSONDecoder().decode([String: String].self, from: Data(contentsOf: URL(fileURLWithPath: Self.definitions + "/expected-paths.json")))
        let key = path.split(separator: "/").suffix(2).joined(separator: "/")
        let want = try #require(expected[key], "\(key) has no entry in expected-paths.json")
        let error = #expect(throws: DefinitionError.self) { try Self.parse(path) }
        #expect(error?.issues.map(\.path).contains(want) == true, "\(key): \(error?.issues.map(\.description) ?? [])")
    }

    @Test func aSchemaKeyIsAcceptedAndMustBeAString() throws {
        let ok = #"{"$schema": "/usr/share/rtvisor/vm-definition.schema.json", "name": "a", "memory_mib": 8, "kernel": "/k"}"#
        #expect(try VMDefinition.parse(Data(ok.utf8), file: "a.json", baseDirectory: "/", checkFiles: false).name == "a")
        let bad = #"{"$schema": true, "name": "a", "memory_mib": 8, "kernel": "/k"}"#
        let e = #expect(throws: DefinitionError.self) { try VMDefinition.parse(Data(bad.utf8), file: "a.json", baseDirectory: "/", checkFiles: false) }
        #expect(e?.issues.map(\.path) == ["$.$schema"])
    }

    // ---- the schema's vocabulary is the validator's ----

    static func schema() throws -> [String: Any] {
        let data = try Data(contentsOf: URL(fileURLWithPath: repository + "/docs/vm-definition.schema.json"))
        return try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
    }

    static func object(_ o: [String: Any], _ path: String...) throws -> [String: Any] {
        var cur = o
        for p in path { cur = try #require(cur[p] as? [String: Any], "no \(p) in the schema") }
        return cur
    }

    static func keys(_ o: [String: Any]) throws -> Set<String> { Set(try object(o, "properties").keys) }
    static func strings(_ o: [String: Any], _ key: String) -> Set<String> { Set((o[key] as? [String]) ?? []) }
    static func range(_ o: [String: Any]) -> ClosedRange<Int>? {
        guard let lo = o["minimum"] as? Int, let hi = o["maximum"] as? Int else { return nil }
        return lo...hi
    }

    @Test func keysMatchTheValidators() throws {
        let s = try Self.schema()
        let p = try Self.object(s, "properties")
        #expect(try Self.keys(s) == VMDefinition.knownKeys.union([VMDefinition.schemaKey]))
        #expect(try Self.keys(Self.object(p, "cpu")) == VMDefinition.cpuKeys)
        #expect(try Self.keys(Self.object(p, "disks", "items")) == DiskSettings.keys)
        #expect(try Self.keys(Self.object(p, "nets", "items")) == NetSettings.keys)
        #expect(try Self.keys(Self.object(p, "passthrough", "items")) == PassthroughSettings.keys)
        #expect(try Self.keys(Self.object(p, "channels", "items")) == ChannelSettings.keys)
        #expect(try Self.keys(Self.object(p, "realtime")) == RealtimeSettings.keys)
        #expect(try Self.keys(Self.object(p, "sandbox")) == SandboxSettings.keys)
        let restart = try #require((p["restart"] as? [String: Any])?["oneOf"] as? [[String: Any]])
        #expect(try Self.keys(restart[1]) == RestartSettings.keys)
        #expect(Self.strings(s, "required") == ["name", "memory_mib", "kernel"])
        #expect(s["additionalProperties"] as? Bool == false)
    }

    @Test func enumsMatchTheValidators() throws {
        let s = try Self.schema()
        let p = try Self.object(s, "properties")
        #expect(Self.strings(try Self.object(p, "cpu", "properties", "template"), "enum") == Set(CPUTemplate.allCases.map(\.rawValue)))
        #expect(Self.strings(try Self.object(p, "cpu", "properties", "disable_features", "items"), "enum") == Set(CPUFeature.all.map(\.name)))
        #expect(Self.strings(try Self.object(p, "sandbox", "properties", "seccomp"), "enum") == Set(SeccompMode.allCases.map(\.rawValue)))
        #expect(Self.strings(try Self.object(p, "realtime", "properties", "exits", "items"), "enum") == Set(DisabledExit.allCases.map(\.rawValue)))
        #expect(Self.strings(try Self.object(s, "$defs", "restartPolicy"), "enum") == Set(RestartPolicyKind.allCases.map(\.rawValue)))
    }

    @Test func rangesMatchTheValidators() throws {
        let p = try Self.object(try Self.schema(), "properties")
        #expect(Self.range(try Self.object(p, "vcpus")) == VMDefinition.vcpuRange)
        #expect(Self.range(try Self.object(p, "memory_mib")) == VMDefinition.memoryRange)
        #expect(try Self.object(p, "cmdline")["maxLength"] as? Int == VMDefinition.cmdlineMax)
        #expect(Self.range(try Self.object(p, "cpu_weight")) == DaemonSettings.cpuWeightRange)
        let channel = try Self.object(p, "channels", "items", "properties")
        #expect(Self.range(try Self.object(channel, "peer")) == 0...(ChannelSettings.maxPeers - 1))
        #expect(Self.range(try Self.object(channel, "vectors")) == 1...ChannelSettings.maxVectors)
        #expect((channel["size_mib"] as? [String: Any])?["enum"] as? [Int] == ChannelSettings.sizeRange.filter { $0 & ($0 - 1) == 0 })
        #expect(Self.range(try Self.object(p, "realtime", "properties", "priority")) == RealtimeSettings.priorityRange)
        #expect(Self.range(try Self.object(p, "realtime", "properties", "cpus", "items")) == 0...RealtimeSettings.maxCPU)
        let probe = try #require(try Self.object(p, "realtime", "properties", "latency_probe_us")["anyOf"] as? [[String: Any]])
        #expect(Self.range(probe[1]) == RealtimeSettings.latencyProbeRange)
        #expect(try Self.object(p, "disks", "items", "properties", "serial")["pattern"] as? String == "^[ -~]{0,\(DiskSettings.serialMax)}$")
        #expect(try Self.object(p, "disks")["maxItems"] as? Int == VMDefinition.maxPciDevices)
        #expect(Self.range(try Self.object(p, "nets", "items", "properties", "mtu")) == NetSettings.mtuRange)
    }
}
