import Config
import Daemon
import Foundation
import Testing
import TestSupport

@Suite struct DefinitionDirectoryTests {
    @Test func loadsValidSkipsBrokenReportsEachProblem() throws {
        let dir = try makeTemporaryDirectory("rtvisord-test")
        let k = try makeKernel(in: dir)
        try write(definitionJSON(name: "web", kernel: k, extra: "\"autostart\": true, \"restart\": \"on-failure\""), to: dir + "/web.json")
        try write("{\"name\": \"bad\", \"memory_mib\": 2, \"kernel\": \"missing.elf\", \"restart\": {\"policy\": \"sometimes\"}}", to: dir + "/bad.json")
        try write("{ not json", to: dir + "/garbage.json")
        try write("ignored", to: dir + "/README.txt")
        try write(definitionJSON(name: "hidden", kernel: k), to: dir + "/.hidden.json")

        let scan = DefinitionDirectory.scan(directory: dir)
        #expect(scan.definitions.keys.sorted() == ["web"])
        let web = try #require(scan.definitions["web"])
        #expect(web.definition.daemon.autostart)
        #expect(web.definition.daemon.restart.policy == .onFailure)
        #expect(web.directory == dir)
        #expect(scan.invalidFiles == [dir + "/bad.json", dir + "/garbage.json"])
        let bad = scan.problems.filter { $0.file == dir + "/bad.json" }.map { "\($0.path): \($0.reason)" }
        #expect(bad.contains("$.memory_mib: must be an integer from 8 to 1048576, got 2"))
        #expect(bad.contains { $0.hasPrefix("$.kernel: \(dir)/missing.elf: No such file") })
        #expect(bad.contains { $0.hasPrefix("$.restart.policy: must be one of") })
        let garbage = try #require(scan.problems.first { $0.file == dir + "/garbage.json" })
        #expect(garbage.path == "$")
        #expect(garbage.reason.hasPrefix("invalid JSON"))
    }

    @Test func duplicateNameFirstFileWins() throws {
        let dir = try makeTemporaryDirectory("rtvisord-test")
        let k = try makeKernel(in: dir)
        try write(definitionJSON(name: "vm", kernel: k), to: dir + "/a.json")
        try write(definitionJSON(name: "vm", kernel: k, memory: 64), to: dir + "/b.json")
        let scan = DefinitionDirectory.scan(directory: dir)
        #expect(scan.definitions["vm"]?.file == dir + "/a.json")
        #expect(scan.problems.map(\.description) == ["\(dir)/b.json: $.name: VM \"vm\" is already defined by \(dir)/a.json"])
    }

    @Test func missingDirectoryIsOneProblem() {
        let scan = DefinitionDirectory.scan(directory: "/nonexistent/rtvisor/vms")
        #expect(scan.definitions.isEmpty)
        #expect(scan.problems.count == 1)
        #expect(scan.problems[0].reason.contains("cannot read the definitions directory"))
    }

    @Test func relativeKernelResolvedAgainstTheDefinitionsDirectory() throws {
        let dir = try makeTemporaryDirectory("rtvisord-test")
        _ = try makeKernel(in: dir)
        try write(definitionJSON(name: "rel", kernel: "kernel.elf"), to: dir + "/rel.json")
        let scan = DefinitionDirectory.scan(directory: dir)
        #expect(scan.definitions["rel"]?.definition.kernel == dir + "/kernel.elf")
        // The bytes handed to the VMM are the file's, unchanged.
        #expect(scan.definitions["rel"]?.contents == Array(definitionJSON(name: "rel", kernel: "kernel.elf").utf8))
    }

    @Test func reloadPlanAddsRemovesChangesAndKeepsInvalid() throws {
        let dir = try makeTemporaryDirectory("rtvisord-test")
        let k = try makeKernel(in: dir)
        try write(definitionJSON(name: "same", kernel: k), to: dir + "/same.json")
        try write(definitionJSON(name: "grow", kernel: k), to: dir + "/grow.json")
        try write(definitionJSON(name: "policy", kernel: k), to: dir + "/policy.json")
        try write(definitionJSON(name: "gone", kernel: k), to: dir + "/gone.json")
        try write(definitionJSON(name: "breaks", kernel: k), to: dir + "/breaks.json")
        let before = DefinitionDirectory.scan(directory: dir).definitions

        // Whitespace only: not a change.
        try write(definitionJSON(name: "same", kernel: k).replacingOccurrences(of: ", ", with: ",\n  "), to: dir + "/same.json")
        try write(definitionJSON(name: "grow", kernel: k, memory: 64), to: dir + "/grow.json")
        try write(definitionJSON(name: "policy", kernel: k, extra: "\"restart\": \"always\", \"autostart\": true"), to: dir + "/policy.json")
        try FileManager.default.removeItem(atPath: dir + "/gone.json")
        try write("{\"name\": \"breaks\", \"memory_mib\": \"lots\", \"kernel\": \"\(k)\"}", to: dir + "/breaks.json")
        try write(definitionJSON(name: "new", kernel: k), to: dir + "/new.json")

        let after = DefinitionDirectory.scan(directory: dir)
        let plan = ReloadPlan.make(current: before, scan: after)
        #expect(plan.added == ["new"])
        #expect(plan.removed == ["gone"])
        #expect(plan.changed == ["grow"])
        #expect(plan.settingsChanged == ["policy"])
        #expect(plan.keptDespiteInvalidFile == ["breaks"])
    }

    @Test func machineDiffersIgnoresDaemonFields() throws {
        let dir = try makeTemporaryDirectory("rtvisord-test")
        let k = try makeKernel(in: dir)
        let a = try VMDefinition.parse(Data(definitionJSON(name: "x", kernel: k).utf8), file: "a", baseDirectory: dir)
        var b = a
        b.daemon.autostart = true
        b.daemon.restart.policy = .always
        #expect(!LoadedDefinition.machineDiffers(a, b))
        b.cmdline = "console=ttyS0"
        #expect(LoadedDefinition.machineDiffers(a, b))
    }
}

@Suite struct DaemonFieldTests {
    @Test func defaultsWhenAbsent() throws {
        let dir = try makeTemporaryDirectory("rtvisord-test")
        let d = try VMDefinition.parse(Data(definitionJSON(name: "x", kernel: try makeKernel(in: dir)).utf8), file: "f", baseDirectory: dir)
        #expect(d.daemon == DaemonSettings())
        #expect(d.daemon.restart.policy == .no)
        #expect(d.daemon.stopTimeoutSeconds == 30)
    }

    @Test func restartObjectFullyParsed() throws {
        let dir = try makeTemporaryDirectory("rtvisord-test")
        let json = definitionJSON(name: "x", kernel: try makeKernel(in: dir), extra: """
        "autostart": true, "stop_timeout_s": 7, "cpu_weight": 400,
        "restart": {"policy": "always", "limit": 3, "window_s": 60, "backoff_ms": 250, "backoff_max_ms": 4000}
        """)
        let d = try VMDefinition.parse(Data(json.utf8), file: "f", baseDirectory: dir)
        #expect(d.daemon == DaemonSettings(autostart: true, restart: RestartSettings(policy: .always, limit: 3, windowSeconds: 60, backoffMs: 250, backoffMaxMs: 4000),
                                           stopTimeoutSeconds: 7, cpuWeight: 400))
    }

    @Test func badDaemonFieldsReportedWithPaths() throws {
        let dir = try makeTemporaryDirectory("rtvisord-test")
        let json = definitionJSON(name: "x", kernel: try makeKernel(in: dir), extra: """
        "autostart": "yes", "stop_timeout_s": 0,
        "restart": {"policy": "on-failure", "limt": 3, "backoff_ms": 500, "backoff_max_ms": 100}
        """)
        do {
            _ = try VMDefinition.parse(Data(json.utf8), file: "f.json", baseDirectory: dir)
            Issue.record("expected a DefinitionError")
        } catch let e as DefinitionError {
            let got = Set(e.issues.map { "\($0.path): \($0.reason)" })
            #expect(got == [
                "$.autostart: must be true or false, got \"yes\"",
                "$.stop_timeout_s: must be an integer from 1 to 3600, got 0",
                "$.restart.limt: unknown key (did you mean \"limit\"?)",
                "$.restart.backoff_max_ms: must be at least backoff_ms (500)",
            ])
        }
    }
}
