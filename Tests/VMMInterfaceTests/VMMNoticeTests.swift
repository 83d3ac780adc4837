import Foundation
import Testing
import VMMInterface
#if canImport(Glibc)
import Glibc
#endif

/// The notice socket's messages: one JSON notice per SOCK_SEQPACKET message, sent without ever
/// blocking or raising SIGPIPE (a vCPU thread sends them).
@Suite struct VMMNoticeTests {
    func socketPair() throws -> (Int32, Int32) {
        var fds: [Int32] = [-1, -1]
        try #require(socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue), 0, &fds) == 0)
        return (fds[0], fds[1])
    }

    func receive(_ fd: Int32) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: VMMNotice.maximumSize)
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        return n > 0 ? Array(buffer[0..<n]) : []
    }

    @Test func eachNoticeArrivesWholeAsOneMessage() throws {
        let (vmm, daemon) = try socketPair()
        defer { close(vmm); close(daemon) }
        let sender = VMMNoticeSender(descriptor: vmm)
        let notices: [VMMNotice] = [.realtimeApplied(cpus: [1, 3], priority: 80, summary: "cgroup v1 cpuset rtvisor/rt-plc (CPUs 1,3)"),
                                    .guestReady(millisecondsAfterVMCreation: 41.25)]
        for n in notices { #expect(sender.send(n)) }
        #expect(VMMNotice(decoding: receive(daemon)) == notices[0])
        #expect(VMMNotice(decoding: receive(daemon)) == notices[1])
        #expect(receive(daemon).isEmpty, "nothing else")
    }

    @Test func aDaemonThatIsGoneJustMissesTheNotice() throws {
        let (vmm, daemon) = try socketPair()
        defer { close(vmm) }
        close(daemon)
        // No SIGPIPE: the test process would die of it.
        #expect(!VMMNoticeSender(descriptor: vmm).send(.guestReady(millisecondsAfterVMCreation: 1)))
    }

    @Test func bytesThatAreNoNoticeAreNotOne() {
        #expect(VMMNotice(decoding: Array("{\"somethingNewer\":{}}".utf8)) == nil)
        #expect(VMMNotice(decoding: [0xff, 0x00]) == nil)
    }
}
