import APIModels
import Foundation
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Per-VM statistics from a real rtvisord with inmates on /dev/kvm (issue 20): a disk inmate's
/// reads and writes and a net inmate's frames show up in `GET /v1/vms/NAME/stats` and grow
/// between two reads; the VMM's exit counters are there, by kind.
@Suite(.enabled(if: Env.kvmAvailable, Env.noKVMReason),
       .enabled(if: EchoNamespace.unavailableReason == nil, Comment(rawValue: EchoNamespace.unavailableReason ?? "")),
       .serialized)
struct StatsDaemonTests {
    typealias D = DaemonProcessTests
    typealias Daemon = SnapshotDaemonTests.Daemon

    /// One `GET` on the daemon's API socket; the decoded body of a 200 answer.
    static func get<T: Decodable>(_ d: Daemon, _ target: String, as: T.Type) -> T? {
        guard let answer = unixSocketExchange(d.dir + "/run/api.sock", httpRequest("GET", target), receiveTimeoutSeconds: 10),
              answer.hasPrefix("HTTP/1.1 200"), let body = answer.range(of: "\r\n\r\n") else { return nil }
        return try? JSONDecoder().decode(T.self, from: Data(answer[body.upperBound...].utf8))
    }

    @Test func diskAndNICCountersGrowBetweenTwoReads() throws {
        let frames = 3000
        // The echo's idle timeout ends it soon after the daemon has stopped the VM (SIGINT does
        // not reach it: the test runner's blocked signal mask is inherited).
        let ns = try EchoNamespace(echoArguments: ["--count", "\(frames)", "--timeout", "10"])
        defer { _ = ns.finish() }
        let dir = try VMM.tempDir()
        let disk = try DiskImage(megabytes: 8, in: dir)
        // Both keep their device busy for about 15 s: a write and a read back every 5 ms, a
        // frame out and its echo back every 5 ms.
        let blk = VMM.definition(name: "disk", kernel: try Env.inmate("virtio-blk"), memoryMiB: 16,
                                 cmdline: "blk.mode=steady blk.secs=15 blk.gap_us=5000 blk.sectors=64",
                                 extra: "\"autostart\": true, \"stop_timeout_s\": 2, \"disks\": [{\"path\": \"\(disk.path)\", \"serial\": \"data\"}]")
        let net = VMM.definition(name: "net", kernel: try Env.inmate("virtio-net"), memoryMiB: 16,
                                 cmdline: "net.frames=\(frames) net.gap_us=5000",
                                 extra: "\"autostart\": true, \"stop_timeout_s\": 2, \"nets\": [{\"tap\": \"\(ns.tap)\", \"mac\": \"02:00:00:aa:bb:02\"}]")
        // rtvisord in the namespace with the tap (and net-echo.py on its other end).
        let d = try Daemon(definitions: [("disk", blk), ("net", net)], prefix: [EchoNamespace.ip, "netns", "exec", ns.name])
        guard d.waitRunning(["disk", "net"]) else { Issue.record("not running: \(d.log)"); return }

        func stats(_ name: String) -> VMStats? { Self.get(d, "/v1/vms/\(name)/stats", as: VMStats.self) }
        // Traffic has begun once the devices count something.
        #expect(D.waitFor(10, "disk and NIC counters") {
            (stats("disk")?.disks.first?.writeOps ?? 0) > 0 && (stats("net")?.nics.first?.txFrames ?? 0) > 0
        }, "\(d.log)")
        guard let disk1 = stats("disk"), let net1 = stats("net") else { Issue.record("no stats: \(d.log)"); return }
        usleep(1_000_000)
        guard let disk2 = stats("disk"), let net2 = stats("net") else { Issue.record("no stats: \(d.log)"); return }

        // The disk: named by its serial; reads and writes of one sector each, growing.
        #expect(disk1.disks.map(\.id) == ["data"])
        if let a = disk1.disks.first, let b = disk2.disks.first {
            #expect(a.readOps > 0 && a.writeOps > 0 && a.readBytes > 0 && a.writeBytes > 0, "\(a)")
            #expect(b.readOps > a.readOps && b.writeOps > a.writeOps, "\(a) → \(b)")
            #expect(b.readBytes > a.readBytes && b.writeBytes > a.writeBytes, "\(a) → \(b)")
            #expect(b.writeBytes - a.writeBytes == 512 * (b.writeOps - a.writeOps), "one sector per write")
            #expect(b.serviceSeconds > a.serviceSeconds && b.errors == 0)
        }
        // The NIC: frames both ways (the echo answers each), growing.
        #expect(net1.nics.map(\.tap) == [ns.tap])
        if let a = net1.nics.first, let b = net2.nics.first {
            #expect(a.txFrames > 0 && a.rxFrames > 0 && a.txBytes > 0 && a.rxBytes > 0, "\(a)")
            #expect(b.txFrames > a.txFrames && b.rxFrames > a.rxFrames, "\(a) → \(b)")
            #expect(b.txBytes > a.txBytes && b.rxBytes > a.rxBytes, "\(a) → \(b)")
        }
        // Exits by kind, counted by the VMM: doorbells are MMIO writes to the BAR, PCI
        // configuration is port I/O; and they grow too.
        for (a, b) in [(disk1, disk2), (net1, net2)] {
            #expect(a.vcpus.count == 1, "\(a.vcpus)")
            guard let va = a.vcpus.first, let vb = b.vcpus.first else { continue }
            #expect((va.exits["mmio"] ?? 0) > 0 && (va.exits["io"] ?? 0) > 0, "\(va.exits)")
            #expect((vb.exits["mmio"] ?? 0) > (va.exits["mmio"] ?? 0), "\(va.exits) → \(vb.exits)")
            #expect((va.cpuSeconds ?? 0) > 0 && vb.cpuSeconds! >= va.cpuSeconds!, "\(va) → \(vb)")
            #expect(a.pid != nil && a.vmmStartedAt != nil && a.state == .running)
            #expect((a.memory?.residentBytes ?? 0) > 0 && a.memory?.guestBytes == 16 << 20, "\(String(describing: a.memory))")
        }
        // The list of all VMs has both, from the same one aggregation.
        let all = Self.get(d, "/v1/stats", as: StatsList.self)
        #expect(all?.vms.map(\.name) == ["disk", "net"])
        #expect(all?.vms.first?.disks.first?.writeOps ?? 0 >= disk2.disks.first?.writeOps ?? 0)

        // rtvisorctl: the same numbers for people and scripts.
        let (status, human) = d.ctl(["stats", "disk"])
        #expect(status == 0 && human.hasPrefix("disk: running, PID ") && human.contains("  disk data: ") && human.contains(" writes ("), "\(human)")
        #expect(human.contains("  vCPU 0: CPU ") && human.contains("mmio "), "\(human)")
        let (jsonStatus, json) = d.ctl(["stats", "net", "--json"])
        #expect(jsonStatus == 0 && (try? JSONDecoder().decode(VMStats.self, from: Data(json.utf8)))?.nics.first?.tap == ns.tap, "\(json)")
        let (topStatus, top) = d.ctl(["top", "--once", "--interval", "0.5", "--sort", "disk"])
        let lines = top.split(separator: "\n").map(String.init)
        #expect(topStatus == 0 && lines.count == 4 && lines[1].hasPrefix("NAME ") && lines[2].hasPrefix("disk ") && lines[3].hasPrefix("net "), "\(top)")
        // Both VMs busy: a rate in every CPU% cell, and the disk's rate of disk writes.
        #expect(lines.dropFirst(2).allSatisfy { !$0.split(separator: " ", omittingEmptySubsequences: true)[3].hasPrefix("-") }, "\(top)")
        #expect(d.ctl(["top", "--sort", "size"]).0 == 64, "a bad --sort is a usage error")
        d.stop()
    }
}
