import Foundation
import Testing
import VMMInterface

@Suite struct ControlProtocolTests {
    @Test func versionsNegotiateToTheHighestCommonOne() {
        #expect(VMMControl.negotiate(1...3, 2...5) == 3)
        #expect(VMMControl.negotiate(1...1, 1...1) == 1)
        #expect(VMMControl.negotiate(1...2, 3...4) == nil)
    }

    @Test func helloFromThisBuildIsAccepted() {
        let v = VMMControl.versions
        #expect(VMMControl.answerHello(minVersion: v.lowerBound, maxVersion: v.upperBound, vmmVersion: "0.1") == .hello(version: v.upperBound, vmmVersion: "0.1"))
    }

    @Test func helloFromANewerDaemonWithNoCommonVersionIsRefusedByName() {
        guard case let .refused(why) = VMMControl.answerHello(minVersion: 90, maxVersion: 99, vmmVersion: "0.1") else {
            Issue.record("not refused"); return
        }
        #expect(why.contains("90…99"))
        #expect(VMMControl.answerHello(minVersion: 2, maxVersion: 1, vmmVersion: "x") == .refused("hello: empty version range 2…1"))
    }

    @Test(arguments: [VMMControl.Request.hello(minVersion: 1, maxVersion: 1), .describe, .statistics, .consoleTail(maxBytes: 4096), .channelDescriptors(name: "plc-hmi")])
    func requestsRoundTripThroughFrames(_ request: VMMControl.Request) throws {
        let frame = try VMMControl.frame(request, id: 7)
        let body = Array(frame[4...])
        #expect(try ControlFrame.bodyLength(Array(frame[0..<4])) == body.count)
        let (id, decoded) = try VMMControl.request(from: body)
        #expect(id == 7 && decoded == request)
        #expect(request.minimumVersion <= VMMControl.versions.upperBound)
    }

    @Test(arguments: [
        VMMControl.Reply.hello(version: 1, vmmVersion: "0.1"),
        .description(VMMDescription(vm: "web", pid: 4242, vcpus: 2, memoryMiB: 256)),
        .refused("no"),
        .consoleTail(Array("login: \u{1B}[0m\r\n".utf8)),
        .statistics(VMMStatistics(vcpus: [.init(index: 0, exits: ["io": 12, "mmio": 3]), .init(index: 1, exits: [:])],
                                  disks: [.init(readOps: 1, writeOps: 2, flushOps: 3, readBytes: 512, writeBytes: 1024, errors: 0, serviceNanoseconds: 99)],
                                  nics: [.init(rxFrames: 5, rxBytes: 300, txFrames: 6, txBytes: 400, rxDrops: 1, txDrops: 0)])),
    ])
    func repliesRoundTripThroughFrames(_ reply: VMMControl.Reply) throws {
        let frame = try VMMControl.frame(reply, id: UInt64.max)
        let (id, decoded) = try VMMControl.reply(from: Array(frame[4...]))
        #expect(id == UInt64.max && decoded == reply)
    }

    /// Statistics came with version 5: a version-4 VMM (one that outlived a daemon upgrade) is
    /// still spoken to, and is not asked for them.
    @Test func statisticsNeedVersion5AndAVersion4VMMStillTalks() {
        #expect(VMMControl.versions.upperBound == 7)
        #expect(VMMControl.Request.channelDescriptors(name: "c").minimumVersion == 7)
        #expect(VMMControl.Request.statistics.minimumVersion == 5)
        #expect(VMMControl.Request.consoleTail(maxBytes: 1).minimumVersion == 6)
        #expect(VMMControl.negotiate(VMMControl.versions, 1...4) == 4)
        #expect(VMMControl.Request.statistics.passedFiles == 0)
    }

    /// The JSON the daemon reads: each counter under its own key, exit kinds by their raw names.
    @Test func statisticsCodeAsJSON() throws {
        let s = VMMStatistics(vcpus: [.init(index: 0, exits: [VMExitKind.io.rawValue: 7, VMExitKind.systemEvent.rawValue: 1])], disks: [], nics: [])
        let text = String(decoding: try JSONEncoder().encode(s), as: UTF8.self)
        #expect(text.contains("\"system-event\":1") && text.contains("\"io\":7"), "\(text)")
        #expect(try JSONDecoder().decode(VMMStatistics.self, from: Data(text.utf8)) == s)
        #expect(VMExitKind.allCases.count == Set(VMExitKind.allCases.map(\.rawValue)).count)
    }

    @Test func aBodyThatIsNoRequestIsAProtocolError() {
        let body = Array(ControlFrame.encode(id: 3, payload: Array("{\"reboot\":{}}".utf8))[4...])
        #expect(throws: ControlFrame.ProtocolError.self) { try VMMControl.request(from: body) }
        #expect(throws: ControlFrame.ProtocolError.self) { try VMMControl.request(from: [1, 2]) }
    }
}
