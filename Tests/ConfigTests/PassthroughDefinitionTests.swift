import Testing
@testable import Config
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

@Suite struct PassthroughDefinitionTests {
    func parse(_ extra: String) throws -> VMDefinition {
        let json = #"{"name": "pt", "kernel": "/bin/sh", "memory_mib": 64, "passthrough": \#(extra)}"#
        return try VMDefinition.parse(Data(json.utf8), file: "pt.json", baseDirectory: "/")
    }

    func issues(_ extra: String) -> [String] {
        do { _ = try parse(extra); return [] } catch let e as DefinitionError { return e.issues.map { "\($0.path): \($0.reason)" } } catch { return ["\(error)"] }
    }

    @Test func addressesAreNormalised() throws {
        let def = try parse(#"[{"pci": "0000:AF:00.0"}, {"pci": "0000:af:00.1"}]"#)
        #expect(def.passthrough.map(\.pci) == ["0000:af:00.0", "0000:af:00.1"])
    }

    @Test func badEntriesNameTheirField() {
        #expect(issues(#"{"pci": "0000:03:00.0"}"#) == [#"$.passthrough: must be an array of {"pci": "DDDD:BB:DD.F"} objects, got an object"#])
        #expect(issues(#"["0000:03:00.0"]"#) == [#"$.passthrough[0]: must be an object like {"pci": "0000:03:00.0"}, got "0000:03:00.0""#])
        #expect(issues(#"[{}]"#) == [#"$.passthrough[0].pci: is required (the host PCI address, e.g. "0000:03:00.0")"#])
        #expect(issues(#"[{"pci": "03:00.0"}]"#).first?.hasPrefix("$.passthrough[0].pci: must be a PCI address DDDD:BB:DD.F") == true)
        #expect(issues(#"[{"pci": "0000:03:20.0"}]"#).count == 1)
        #expect(issues(#"[{"pci": "0000:03:00.0", "rom": true}]"#) == ["$.passthrough[0].rom: unknown key"])
        #expect(issues(#"[{"pci": "0000:03:00.0"}, {"pci": "0000:03:00.0"}]"#) == ["$.passthrough[1].pci: 0000:03:00.0 is listed twice"])
    }
}
