import Config
import Daemon
import Foundation
import Testing
import TestSupport

@Suite struct ChannelDirectoryTests {
    @Test func aSecondVMClaimingAPeerIdIsReportedAndSkipped() throws {
        let dir = try makeTemporaryDirectory("rtvisord-test")
        let k = try makeKernel(in: dir)
        let channel = { (peer: Int) in "\"channels\": [{\"name\": \"plc-hmi\", \"size_mib\": 4, \"peer\": \(peer)}]" }
        try write(definitionJSON(name: "plc", kernel: k, extra: channel(0)), to: dir + "/a-plc.json")
        try write(definitionJSON(name: "hmi", kernel: k, extra: channel(1)), to: dir + "/b-hmi.json")
        try write(definitionJSON(name: "spy", kernel: k, extra: channel(0)), to: dir + "/c-spy.json")
        let scan = DefinitionDirectory.scan(directory: dir)
        #expect(scan.definitions.keys.sorted() == ["hmi", "plc"])
        #expect(scan.invalidFiles == [dir + "/c-spy.json"])
        #expect(scan.problems.map(\.description) == ["\(dir)/c-spy.json: $.channels[0].peer: peer 0 of channel \"plc-hmi\" is already claimed by VM \"plc\" (\(dir)/a-plc.json)"])
    }
}
