import Testing
import VMMInterface

@Suite struct SnapshotStateFileTests {
    let header = SnapshotHeader(vm: "web", createdAt: 1_765_000_000, vcpus: 2, memoryBytes: 64 << 20, cpuTemplate: "emulating-kvm",
                                cpuidDigest: "0123456789abcdef", definitionDigest: "fedcba9876543210", diskBytes: [8 << 20])
    let body = Array("{\"machine\":true}".utf8)

    @Test func aWrittenFileReadsBackAsItsHeaderAndBody() throws {
        let file = try SnapshotStateFile.encode(header: header, body: body)
        let (h, b) = try SnapshotStateFile.decode(file)
        #expect(h == header && Array(b) == body)
        #expect(h.formatVersion == SnapshotStateFile.formatVersion && h.rtvisorVersion == RtvisorRelease.version)
        // A listing reads the header from the file's first bytes alone.
        let end = try #require(SnapshotStateFile.headerEnd(Array(file.prefix(24))))
        #expect(try SnapshotStateFile.decodeHeader(Array(file.prefix(end))) == header)
    }

    func refusal(_ change: (inout [UInt8]) -> Void) throws -> String {
        var file = try SnapshotStateFile.encode(header: header, body: body)
        change(&file)
        do { _ = try SnapshotStateFile.decode(file, file: "snap/state") } catch { return error.description }
        Issue.record("a damaged file was accepted")
        return ""
    }

    @Test func eachKindOfDamageIsNamed() throws {
        #expect(try refusal { $0[$0.count - 10] ^= 1 }.contains("checksum mismatch"))
        #expect(try refusal { $0.removeLast(3) }.contains("truncated"))
        #expect(try refusal { $0 += [0, 0] }.contains("trailing garbage"))
        #expect(try refusal { $0[8] = 7 }.contains("snapshot format version 7; this rtvisor"))
        #expect(try refusal { $0[1] = 0 }.contains("not an rtvisor snapshot state file"))
        #expect(try refusal { $0 = Array($0.prefix(10)) }.contains("not an rtvisor snapshot state file"))
        #expect(try refusal { $0[14] = 0xFF }.contains("implausible lengths"))
        #expect(try refusal { $0.removeLast($0.count - 30) }.contains("snap/state"))
    }

    @Test func crc32IsTheZlibOne() {
        #expect(CRC32.checksum(Array("123456789".utf8)) == 0xCBF4_3926)
        #expect(CRC32.checksum([UInt8]()) == 0)
    }

    @Test func digestsTellContentApart() {
        #expect(ContentDigest.fnv1a(Array("a".utf8)) == "af63dc4c8601ec8c")
        #expect(ContentDigest.fnv1a(Array("a".utf8)) != ContentDigest.fnv1a(Array("b".utf8)))
        #expect(ContentDigest.fnv1a([UInt8]()).count == 16)
    }

    @Test func theSnapshotRequestNeedsVersionTwoAndTwoFiles() {
        let r = VMMControl.Request.snapshot(SnapshotRequest(then: .stop, definitionJSON: []))
        #expect(r.minimumVersion == 2 && r.passedFiles == 2)
        #expect(VMMControl.Request.pause.passedFiles == 0)
        #expect(VMMExitStatus(code: 8) == .savedAndStopped)
    }
}
