import Testing
@testable import Config
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

@Suite struct ChannelDefinitionTests {
    func parse(_ channels: String) throws -> VMDefinition {
        let json = #"{"name": "plc", "kernel": "/k", "memory_mib": 64, "channels": \#(channels)}"#
        return try VMDefinition.parse(Data(json.utf8), file: "plc.json", baseDirectory: "/", checkFiles: false)
    }

    func issues(_ channels: String) -> [String] {
        do { _ = try parse(channels); return [] } catch let e as DefinitionError { return e.issues.map { "\($0.path): \($0.reason)" } } catch { return ["\(error)"] }
    }

    @Test func aChannelIsParsedWithOneVectorByDefault() throws {
        let def = try parse(#"[{"name": "plc-hmi", "size_mib": 4, "peer": 0, "vectors": 2}, {"name": "log", "size_mib": 1, "peer": 15}]"#)
        #expect(def.channels == [ChannelSettings(name: "plc-hmi", sizeMiB: 4, peer: 0, vectors: 2), ChannelSettings(name: "log", sizeMiB: 1, peer: 15, vectors: 1)])
        #expect(def.channels[0].sizeBytes == 4 << 20)
    }

    @Test func eachBadFieldGetsItsError() {
        #expect(issues(#"[{"name": "c", "size_mib": 3, "peer": 0}]"#) == ["$.channels[0].size_mib: must be a power of two (BAR2 is naturally aligned), got 3"])
        #expect(issues(#"[{"name": "c", "size_mib": 2048, "peer": 0}]"#) == ["$.channels[0].size_mib: must be an integer from 1 to 1024, got 2048"])
        #expect(issues(#"[{"name": "c", "size_mib": 4, "peer": 16}]"#) == ["$.channels[0].peer: must be an integer from 0 to 15, got 16"])
        #expect(issues(#"[{"name": "c", "size_mib": 4, "peer": -1}]"#) == ["$.channels[0].peer: must be an integer from 0 to 15, got -1"])
        #expect(issues(#"[{"name": "c", "size_mib": 4, "peer": 0, "vectors": 9}]"#) == ["$.channels[0].vectors: must be an integer from 1 to 8, got 9"])
        #expect(issues(#"[{"name": "c", "size_mib": 4, "peer": 0, "vectors": 0}]"#) == ["$.channels[0].vectors: must be an integer from 1 to 8, got 0"])
        #expect(issues(#"[{"size_mib": 4, "peer": 0}]"#) == ["$.channels[0].name: is required"])
        #expect(issues(#"[{"name": "a/b", "size_mib": 4, "peer": 0}]"#) == [#"$.channels[0].name: must be 1–64 characters of letters, digits, '-' and '_', got "a/b""#])
        #expect(issues(#"[{"name": "c", "size_mib": 4, "peer": 0, "vector": 2}]"#) == [#"$.channels[0].vector: unknown key (did you mean "vectors"?)"#])
        #expect(issues(#"[{"name": "c", "size_mib": 4, "peer": 0}, {"name": "c", "size_mib": 4, "peer": 1}]"#) == [#"$.channels[1].name: channel "c" is already attached by $.channels[0]"#])
        #expect(issues(#"{"name": "c"}"#) == ["$.channels: must be an array of channel objects, got an object"])
    }

    func claim(_ vm: String, _ channels: ChannelSettings...) -> ChannelClaims.Claim { ChannelClaims.Claim(file: "/vms/\(vm).json", vm: vm, channels: channels) }

    @Test func twoVMsClaimingOnePeerIdTheLaterIsRefused() {
        let conflicts = ChannelClaims.conflicts([
            claim("plc", ChannelSettings(name: "plc-hmi", sizeMiB: 4, peer: 0, vectors: 2)),
            claim("hmi", ChannelSettings(name: "plc-hmi", sizeMiB: 4, peer: 1, vectors: 2)),
            claim("spy", ChannelSettings(name: "plc-hmi", sizeMiB: 4, peer: 1, vectors: 2)),
        ])
        #expect(conflicts.keys.sorted() == [2])
        #expect(conflicts[2]?.map(\.description) == [#"/vms/spy.json: $.channels[0].peer: peer 1 of channel "plc-hmi" is already claimed by VM "hmi" (/vms/hmi.json)"#])
    }

    @Test func peersMustAgreeOnSizeAndVectors() {
        let conflicts = ChannelClaims.conflicts([
            claim("plc", ChannelSettings(name: "c", sizeMiB: 4, peer: 0, vectors: 2)),
            claim("hmi", ChannelSettings(name: "c", sizeMiB: 8, peer: 1, vectors: 1)),
            claim("other", ChannelSettings(name: "d", sizeMiB: 8, peer: 0, vectors: 1)),
        ])
        #expect(conflicts[1]?.map { "\($0.path): \($0.reason)" } == [
            #"$.channels[0].size_mib: channel "c" is 4 MiB in VM "plc" (/vms/plc.json), here 8"#,
            #"$.channels[0].vectors: channel "c" has 2 vectors in VM "plc" (/vms/plc.json), here 1"#,
        ])
        #expect(conflicts[2] == nil)
    }
}
