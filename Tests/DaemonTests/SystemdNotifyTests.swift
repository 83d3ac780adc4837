import CDaemonSupport
import Foundation
import SystemdNotify
import Testing
import TestSupport

@Suite struct SystemdNotifyTests {
    @Test func messageLines() {
        #expect(SystemdNotifier.message([.ready, .status("3 VMs running")]) == "READY=1\nSTATUS=3 VMs running\n")
        #expect(SystemdNotifier.message([.stopping]) == "STOPPING=1\n")
        #expect(SystemdNotifier.message([.watchdog]) == "WATCHDOG=1\n")
        #expect(SystemdNotifier.message([.reloading]) == "RELOADING=1\n")
        #expect(SystemdNotifier.State.status("a\nb").line == "STATUS=a b")
    }

    @Test func watchdogIntervalFollowsSdWatchdogEnabledRules() {
        #expect(SystemdNotifier.watchdogInterval(environment: [:], pid: 10) == nil)
        #expect(SystemdNotifier.watchdogInterval(environment: ["WATCHDOG_USEC": "20000000"], pid: 10) == 20_000_000)
        #expect(SystemdNotifier.watchdogInterval(environment: ["WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "10"], pid: 10) == 20_000_000)
        #expect(SystemdNotifier.watchdogInterval(environment: ["WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "11"], pid: 10) == nil)
        #expect(SystemdNotifier.watchdogInterval(environment: ["WATCHDOG_USEC": "0"], pid: 10) == nil)
        #expect(SystemdNotifier.watchdogInterval(environment: ["WATCHDOG_USEC": "x"], pid: 10) == nil)
        let n = SystemdNotifier(environment: ["WATCHDOG_USEC": "30000000"])
        #expect(n.watchdogPingIntervalNanoseconds == 15_000_000_000)
    }

    @Test func withoutNotifySocketNothingIsSent() {
        #expect(!SystemdNotifier(environment: [:]).notify(.ready))
    }

    @Test(arguments: [false, true])
    func datagramReachesThePathOrAbstractSocket(abstract: Bool) throws {
        let path = abstract ? "@rtvisor-test-\(UUID().uuidString)" : try makeTemporaryDirectory("rtvisord-test") + "/notify.sock"
        let server = cdaemon_bind_datagram(path)
        #expect(server >= 0)
        defer { close(server) }
        let n = SystemdNotifier(environment: ["NOTIFY_SOCKET": path])
        #expect(n.notify(.ready, .status("1 VM running")))
        var buf = [UInt8](repeating: 0, count: 512)
        var fd: Int32 = -1
        let r = buf.withUnsafeMutableBytes { cdaemon_recv_with_fd(server, $0.baseAddress, $0.count, &fd) }
        #expect(String(decoding: buf[0..<max(0, r)], as: UTF8.self) == "READY=1\nSTATUS=1 VM running\n")
    }
}
