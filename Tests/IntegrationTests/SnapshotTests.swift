import Foundation
import KVM
import Testing
import VMMInterface

/// Snapshot and restore of running guests (issue 18, docs/snapshot.md) on /dev/kvm: the ticker
/// inmate counts its LAPIC timer's interrupts on every CPU and prints each tenth tick, so the
/// console of the VM before the snapshot followed by the console of the restored VM must read
/// as one uninterrupted count.
@Suite(.enabled(if: Env.kvmAvailable, Env.noKVMReason), .serialized)
struct SnapshotRestoreTests {
    static let report = 10

    struct Ticker {
        let dir: URL
        let definition: String
        let control: String
        let vm: RunningVMM
    }

    func startTicker(vcpus: Int, total: Int, extra: String = "") throws -> Ticker {
        let dir = try VMM.tempDir()
        let def = VMM.definition(name: "ticker", kernel: try Env.inmate("ticker"), vcpus: vcpus, memoryMiB: 16,
                                 cmdline: "ticker.report=\(Self.report) ticker.total=\(total)", extra: extra)
        let path = try VMM.writeDefinition(def, in: dir)
        let control = dir.appendingPathComponent("control.sock").path
        let vm = try RunningVMM(arguments: ["--config", path, "--control-socket", control])
        return Ticker(dir: dir, definition: path, control: control, vm: vm)
    }

    /// The complete `TICK` lines of `cpu` in `console` (a line cut by the snapshot is completed
    /// by the restored VM's console, which is why callers join the two first).
    func counts(_ console: String, cpu: Int) -> [Int] {
        var lines = console.split(separator: "\n", omittingEmptySubsequences: false)
        if !console.hasSuffix("\n") { lines.removeLast() }
        return tickCounts(lines.joined(separator: "\n"), cpu: cpu)
    }

    /// Every report of every CPU, in order, from the first to at least `total`: nothing restarted
    /// from zero, nothing skipped, and the timer kept firing to the end.
    func expectUninterruptedCount(_ console: String, cpus: Int, total: Int) {
        for cpu in 0..<cpus {
            let seen = counts(console, cpu: cpu)
            let expected = Array(stride(from: Self.report, through: seen.last ?? 0, by: Self.report))
            #expect(seen == expected, "CPU \(cpu): \(seen)")
            #expect((seen.last ?? 0) >= (cpu == 0 ? total : Self.report * 2), "CPU \(cpu) stopped counting at \(seen.last ?? 0)")
        }
    }

    func snapshotAfter(ticks: Int, of t: Ticker, vcpus: Int, into dir: String, then: SnapshotRequest.After) throws -> SnapshotSummary {
        let reached = t.vm.waitForConsole(timeout: 60) { c in (0..<vcpus).allSatisfy { (tickCounts(c, cpu: $0).last ?? 0) >= ticks } }
        #expect(reached, "console: \(t.vm.console)\nstderr: \(t.vm.stderr)")
        let reply: VMMControl.Reply
        do { reply = try ControlClient.snapshot(try ControlClient.connect(t.control), into: dir, definition: t.definition, then: then) } catch {
            throw SnapshotTestError("snapshot: \(error)\nconsole: \(t.vm.console.suffix(500))\nstderr: \(t.vm.stderr)")
        }
        guard case let .snapshotSaved(summary) = reply else { throw SnapshotTestError("snapshot: \(reply)\nstderr: \(t.vm.stderr)") }
        return summary
    }

    @Test(arguments: [1, 2])
    func aTickerSavedAndStoppedCountsOnFromWhereItWasWhenRestored(vcpus: Int) throws {
        let total = 300
        let t = try startTicker(vcpus: vcpus, total: total)
        let snap = t.dir.appendingPathComponent("snap").path
        let summary = try snapshotAfter(ticks: 40, of: t, vcpus: vcpus, into: snap, then: .stop)
        #expect(t.vm.waitForExit(timeout: 30) == VMMExitStatus.savedAndStopped.code, "stderr: \(t.vm.stderr)")
        #expect(summary.header.vcpus == vcpus && summary.header.memoryBytes == 16 << 20)
        #expect(summary.memoryDataBytes < 16 << 20, "zero pages are left as holes")
        #expect(!t.vm.console.contains("TICKER_DONE"))

        let restored = try RunningVMM(arguments: ["--restore", snap])
        #expect(restored.waitForExit(timeout: 90) == 0, "console: \(restored.console)\nstderr: \(restored.stderr)")
        #expect(restored.console.contains("TICKER_DONE"))
        #expect(!restored.console.contains("TICKER_START"), "the restored guest must not boot again")
        expectUninterruptedCount(t.vm.console + restored.console, cpus: vcpus, total: total)
    }

    @Test func aSnapshotOfARunningVMLeavesItRunningAndItsMappedRestoreTakesConsoleInput() throws {
        let total = 250
        let t = try startTicker(vcpus: 1, total: total)
        let snap = t.dir.appendingPathComponent("snap").path
        _ = try snapshotAfter(ticks: 30, of: t, vcpus: 1, into: snap, then: .resume)
        // The original goes on to the end, uninterrupted.
        #expect(t.vm.waitForExit(timeout: 90) == 0, "stderr: \(t.vm.stderr)")
        expectUninterruptedCount(t.vm.console, cpus: 1, total: total)

        // The snapshot, mapped copy-on-write, resumes from its own point and answers the console.
        let restored = try RunningVMM(arguments: ["--restore", snap, "--restore-memory", "map"], consoleInput: true)
        #expect(restored.waitForConsole(timeout: 60) { tickCounts($0, cpu: 0).count >= 2 }, "stderr: \(restored.stderr)")
        restored.type("still here")
        #expect(restored.waitForConsole(timeout: 60) { $0.contains("ECHO still here") }, "console: \(restored.console)")
        #expect(restored.waitForExit(timeout: 90) == 0, "stderr: \(restored.stderr)")
        let first = counts(restored.console, cpu: 0).first ?? 0
        #expect(first > 30 && first <= 50, "the restored count starts after the snapshot's point: \(counts(restored.console, cpu: 0))")
    }

    /// A VM paused by a control connection (a pause, or a snapshot that stays paused) runs on
    /// when that connection ends, whatever its peer did or did not send.
    @Test func aVMPausedByAConnectionResumesWhenTheConnectionEnds() throws {
        let t = try startTicker(vcpus: 1, total: 0)
        #expect(t.vm.waitForConsole(timeout: 60) { (tickCounts($0, cpu: 0).last ?? 0) >= 20 })
        var connection: VMMControlConnection? = try ControlClient.connect(t.control)
        let reply = try ControlClient.snapshot(connection!, into: t.dir.appendingPathComponent("snap").path, definition: t.definition, then: .stayPaused)
        guard case .snapshotSaved = reply else { throw SnapshotTestError("snapshot: \(reply)") }
        let paused = tickCounts(t.vm.console, cpu: 0).count
        usleep(500_000)
        #expect(tickCounts(t.vm.console, cpu: 0).count == paused, "a paused guest prints nothing")
        connection = nil  // closes the socket
        #expect(t.vm.waitForConsole(timeout: 30) { tickCounts($0, cpu: 0).count > paused + 2 }, "the guest runs on: \(t.vm.console.suffix(300))")
        // And a pause followed by a resume on one connection leaves it running, too.
        let c = try ControlClient.connect(t.control)
        #expect(try c.call(.pause) == .runState(.paused))
        #expect(try c.call(.resume) == .runState(.running))
        kill(t.vm.process.processIdentifier, SIGTERM)
        #expect(t.vm.waitForExit(timeout: 30) == 128 + SIGTERM)
    }

    /// One good snapshot, then each way of spoiling it: every restore is refused with the reason
    /// and runs no guest code.
    @Test func damagedOrMismatchedSnapshotsAreRefusedWithTheirReason() throws {
        let t = try startTicker(vcpus: 1, total: 0)
        let good = t.dir.appendingPathComponent("good").path
        _ = try snapshotAfter(ticks: 20, of: t, vcpus: 1, into: good, then: .stop)
        #expect(t.vm.waitForExit(timeout: 30) == VMMExitStatus.savedAndStopped.code)
        let fm = FileManager.default

        func variant(_ name: String, _ spoil: (String) throws -> Void) throws -> String {
            let dir = t.dir.appendingPathComponent(name).path
            try fm.copyItem(atPath: good, toPath: dir)
            try spoil(dir)
            return dir
        }
        func edit(_ file: String, _ change: (inout [UInt8]) -> Void) throws {
            var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: file)))
            change(&bytes)
            try Data(bytes).write(to: URL(fileURLWithPath: file))
        }
        func definition(_ dir: String, extra: String, vcpus: Int = 1) throws {
            let def = VMM.definition(name: "ticker", kernel: try Env.inmate("ticker"), vcpus: vcpus, memoryMiB: 16,
                                     cmdline: "ticker.report=\(Self.report) ticker.total=0", extra: extra)
            try def.write(toFile: SnapshotLayout.definition(in: dir), atomically: true, encoding: .utf8)
        }
        let cases: [(String, String, (String) throws -> Void)] = [
            ("corrupt", "checksum mismatch", { try edit(SnapshotLayout.state(in: $0)) { $0[$0.count / 2] ^= 0x40 } }),
            ("truncated", "truncated", { try edit(SnapshotLayout.state(in: $0)) { $0.removeLast(100) } }),
            ("version", "snapshot format version 99", { try edit(SnapshotLayout.state(in: $0)) { $0[8] = 99 } }),
            ("not-a-snapshot", "no RTVSNAP magic", { try edit(SnapshotLayout.state(in: $0)) { $0[0] = 0x7F } }),
            ("memory-size", "the memory file has", { dir in
                let h = try FileHandle(forWritingTo: URL(fileURLWithPath: SnapshotLayout.memory(in: dir)))
                try h.truncate(atOffset: 8 << 20)
                try h.close()
            }),
            ("no-memory", "memory", { try fm.removeItem(atPath: SnapshotLayout.memory(in: $0)) }),
            ("vcpus", "saved with 1 vCPUs, the definition has 2", { try definition($0, extra: "", vcpus: 2) }),
            // The other template than the one `auto` chose on this host.
            ("template", "CPU template", { try definition($0, extra: "\"cpu\": {\"template\": \"\(KVMSystem.hostEmulatesRing0 ? "host" : "emulating-kvm")\"}") }),
            ("passthrough", "a VM with passthrough devices cannot be restored", { try definition($0, extra: "\"passthrough\": [{\"pci\": \"0000:00:1f.7\"}]") }),
            ("cpuid", "CPUID differs", { try definition($0, extra: "\"cpu\": {\"disable_features\": [\"tsc_deadline_timer\"]}") }),
        ]
        for (name, reason, spoil) in cases {
            let dir = try variant(name, spoil)
            let r = try RunningVMM(arguments: ["--restore", dir])
            let status = r.waitForExit(timeout: 30)
            #expect(status == VMMExitStatus.vmmError.code, "\(name): status \(String(describing: status))")
            #expect(r.stderr.contains(reason), "\(name): expected '\(reason)' in: \(r.stderr)")
            #expect(!r.console.contains("TICK"), "\(name): guest code ran")
        }
    }
}

/// Virtio devices across a snapshot: their queues go on from the saved indices.
@Suite(.enabled(if: Env.kvmAvailable, Env.noKVMReason), .serialized)
struct SnapshotVirtioTests {
    /// A guest writing and flushing sector after sector is saved between two requests and
    /// stopped; the restored guest writes the rest, and the host finds every sector's pattern.
    @Test func aDiskWriterSavedBetweenRequestsFinishesAfterRestoreAndItsDataVerifies() throws {
        let dir = try VMM.tempDir()
        let disk = try DiskImage(megabytes: 4, in: dir)
        let sectors = 300, start = 16
        let def = VMM.definition(name: "blksnap", kernel: try Env.inmate("virtio-blk"), memoryMiB: 16,
                                 cmdline: "blk.mode=durable blk.start=\(start) blk.sectors=\(sectors) blk.seed=0x5eed",
                                 extra: "\"disks\": [{\"path\": \"\(disk.path)\"}]")
        let path = try VMM.writeDefinition(def, in: dir)
        let control = dir.appendingPathComponent("control.sock").path
        let vm = try RunningVMM(arguments: ["--config", path, "--control-socket", control])
        #expect(vm.waitForConsole(timeout: 60) { $0.contains("ACK \(start + 20)\n") }, "console: \(vm.console)\nstderr: \(vm.stderr)")
        let snap = dir.appendingPathComponent("snap").path
        let reply = try ControlClient.snapshot(try ControlClient.connect(control), into: snap, definition: path, then: .stop)
        guard case let .snapshotSaved(summary) = reply else { throw SnapshotTestError("snapshot: \(reply)") }
        #expect(summary.header.diskBytes == [4 << 20])
        #expect(vm.waitForExit(timeout: 30) == VMMExitStatus.savedAndStopped.code)
        #expect(!vm.console.contains("INMATE virtio-blk OK"), "the snapshot must fall between two requests, not after the last")

        let restored = try RunningVMM(arguments: ["--restore", snap])
        #expect(restored.waitForExit(timeout: 120) == 0, "console: \(restored.console)\nstderr: \(restored.stderr)")
        #expect(restored.console.contains("INMATE virtio-blk OK: durable: \(sectors) sectors acknowledged"))
        let acks = (vm.console + restored.console).split(separator: "\n").compactMap { $0.hasPrefix("ACK ") ? Int($0.dropFirst(4)) : nil }
        #expect(acks == Array(start..<(start + sectors)), "every sector acknowledged once, in order")
        let data = try disk.sectors(UInt64(start), sectors)
        for s in 0..<sectors {
            #expect(Array(data[(s * 512)..<((s + 1) * 512)]) == blockPattern(seed: 0x5eed, sector: UInt64(start + s)), "sector \(start + s)")
        }

        // A disk whose size changed since the snapshot is refused: the guest knows its size.
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: disk.path))
        try h.truncate(atOffset: 8 << 20)
        try h.close()
        let refused = try RunningVMM(arguments: ["--restore", snap])
        #expect(refused.waitForExit(timeout: 30) == VMMExitStatus.vmmError.code)
        #expect(refused.stderr.contains("$.disks[0] has \(8 << 20) bytes, \(4 << 20) when the VM was saved"), "\(refused.stderr)")
    }

    /// A guest exchanging frames with the host through a tap is saved mid-exchange and stopped;
    /// the restored guest receives the replies still to come and finishes the exchange.
    @Test(.enabled(if: EchoNamespace.unavailableReason == nil, Comment(rawValue: EchoNamespace.unavailableReason ?? "")))
    func aNetworkGuestSavedMidExchangeKeepsExchangingFramesAfterRestore() throws {
        let frames = 1500
        let ns = try EchoNamespace(echoArguments: ["--count", "\(frames)"])
        defer { _ = ns.finish() }
        let dir = try VMM.tempDir()
        let def = VMM.definition(name: "netsnap", kernel: try Env.inmate("virtio-net"), memoryMiB: 16,
                                 cmdline: "net.frames=\(frames) net.window=1 net.timeout_ms=30000",
                                 extra: "\"nets\": [{\"tap\": \"\(ns.tap)\", \"mac\": \"02:00:00:aa:bb:07\"}]")
        let path = try VMM.writeDefinition(def, in: dir)
        let control = dir.appendingPathComponent("control.sock").path
        let netns = [EchoNamespace.ip, "netns", "exec", ns.name]
        let vm = try RunningVMM(arguments: ["--config", path, "--control-socket", control], prefix: netns)
        #expect(vm.waitForConsole(timeout: 60) { $0.contains("MAC 02:00:00:aa:bb:07") }, "console: \(vm.console)\nstderr: \(vm.stderr)")
        usleep(300_000)
        // A pause and resume restart the receive thread from the control thread (its filter,
        // stacked under the thread's own, must let it wait on its epoll).
        do {
            let c = try ControlClient.connect(control)
            #expect(try c.call(.pause) == .runState(.paused))
            #expect(try c.call(.resume) == .runState(.running))
        } catch {
            usleep(300_000)
            throw SnapshotTestError("pause/resume: \(error)\nstderr: \(vm.stderr.suffix(1500))")
        }
        usleep(100_000)
        let snap = dir.appendingPathComponent("snap").path
        let reply = try ControlClient.snapshot(try ControlClient.connect(control), into: snap, definition: path, then: .stop)
        guard case .snapshotSaved = reply else { throw SnapshotTestError("snapshot: \(reply)") }
        #expect(vm.waitForExit(timeout: 30) == VMMExitStatus.savedAndStopped.code)
        #expect(!vm.console.contains("INMATE virtio-net OK"), "the snapshot must fall inside the exchange: \(vm.console)")

        let restored = try RunningVMM(arguments: ["--restore", snap], prefix: netns)
        #expect(restored.waitForExit(timeout: 120) == 0, "console: \(restored.console)\nstderr: \(restored.stderr)")
        #expect(restored.console.contains("INMATE virtio-net OK: sent \(frames) received \(frames)"), "console: \(restored.console)")
        let echo = ns.finish()
        #expect(echo.output.contains("good=\(frames) bad=0 echoed=\(frames)"), "echo: \(echo.output)")
    }
}
