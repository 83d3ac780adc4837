import Foundation
import Testing
@testable import Config

/// The `realtime` block of definitions.
@Suite("VMDefinition realtime")
struct RealtimeDefinitionTests {
    func base(_ rt: String, vcpus: Int = 2, memory: Int = 64) -> String {
        "{\"name\": \"rt0\", \"vcpus\": \(vcpus), \"memory_mib\": \(memory), \"kernel\": \"../images/vmlinux\", \"realtime\": \(rt)}"
    }

    @Test func loadsWithDefaults() throws {
        let w = try Workspace()
        let d = try w.load(base("{\"cpus\": [2, 3]}"))
        #expect(d.realtime == RealtimeSettings(cpus: [2, 3], priority: 50, lockMemory: true, hugepages: false, exits: [], moveIRQs: true))
        let full = try w.load(base("{\"cpus\": [3, 1], \"priority\": 90, \"lock_memory\": false, \"hugepages\": true, \"exits\": [\"pause\", \"hlt\", \"pause\"], \"move_irqs\": false}"))
        #expect(full.realtime == RealtimeSettings(cpus: [3, 1], priority: 90, lockMemory: false, hugepages: true, exits: [.hlt, .pause], moveIRQs: false))
        #expect(full.realtime?.disabledExitMask == 0b110)
        #expect(try w.load("{\"name\": \"plain\", \"memory_mib\": 64, \"kernel\": \"../images/vmlinux\"}").realtime == nil)
    }

    @Test func rejectsBadBlocksNamingThePathAndReason() throws {
        let w = try Workspace()
        let cases: [(String, Int, Int, String, String)] = [
            ("[1, 2]", 2, 64, "$.realtime", "must be an object"),
            ("{}", 2, 64, "$.realtime.cpus", "is required"),
            ("{\"cpus\": []}", 2, 64, "$.realtime.cpus", "empty list"),
            ("{\"cpus\": [1]}", 2, 64, "$.realtime.cpus", "lists 1 CPU for 2 vCPUs"),
            ("{\"cpus\": [1, 1]}", 2, 64, "$.realtime.cpus[1]", "CPU 1 is already given to vCPU 0"),
            ("{\"cpus\": [1, -1]}", 2, 64, "$.realtime.cpus[1]", "host CPU number"),
            ("{\"cpus\": \"1\"}", 1, 64, "$.realtime.cpus", "must be an array"),
            ("{\"cpus\": [1], \"priority\": 99}", 1, 64, "$.realtime.priority", "from 1 to 98"),
            ("{\"cpus\": [1], \"priority\": 0}", 1, 64, "$.realtime.priority", "from 1 to 98"),
            ("{\"cpus\": [1], \"exits\": [\"hlt\", \"nmi\"]}", 1, 64, "$.realtime.exits[1]", "must be one of"),
            ("{\"cpus\": [1], \"lock_memory\": \"yes\"}", 1, 64, "$.realtime.lock_memory", "true or false"),
            ("{\"cpus\": [1], \"hugepages\": true}", 1, 65, "$.realtime.hugepages", "multiple of 2"),
            ("{\"cpus\": [1], \"priorty\": 5}", 1, 64, "$.realtime.priorty", "did you mean \"priority\""),
        ]
        for (rt, vcpus, memory, path, reason) in cases {
            let all = w.issues(base(rt, vcpus: vcpus, memory: memory))
            #expect(all.contains { $0.path == path && $0.reason.contains(reason) }, "\(rt): \(all)")
        }
    }
}
