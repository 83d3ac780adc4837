import Foundation
import Posix
import Realtime
import Testing
import VMMInterface

extension RealtimePartitionTests {
    /// A real-time VM saved and restored: the restored VMM builds the partition, pins its vCPU at
    /// its priority and locks guest RAM before the vCPU runs again, and undoes all of it at the end.
    @Test func aRestoredRealtimeVMGetsItsPartitionBeforeItsVCPURunsAndGivesItBack() throws {
        let before = HostSnapshot.take()
        let dir = try VMM.tempDir()
        let def = try VMM.definition(name: "rtsnap", kernel: try Env.inmate("ticker"), memoryMiB: 32, cmdline: "ticker.report=10",
                                     extra: "\"realtime\": {\"cpus\": [\(Self.rtCPU)], \"priority\": 42}")
        let path = try VMM.writeDefinition(def, in: dir)
        let control = dir.appendingPathComponent("control.sock").path
        let vm = try RunningVMM(config: path, dir: dir, arguments: ["--control-socket", control])
        defer { if vm.process.isRunning { kill(vm.process.processIdentifier, SIGKILL) } }
        try #require(vm.waitFor("TICK cpu=0 n=20", seconds: 30), "guest did not start:\n\(vm.output)")
        let snap = dir.appendingPathComponent("snap").path
        let reply = try ControlClient.snapshot(try ControlClient.connect(control), into: snap, definition: path, then: .stop)
        guard case .snapshotSaved = reply else { throw SnapshotTestError("snapshot: \(reply)") }
        #expect(vm.waitExit(seconds: 30) && vm.process.terminationStatus == VMMExitStatus.savedAndStopped.code, "\(vm.output.suffix(2000))")
        #expect(PartitionState.load(vm: "rtsnap") == nil, "the saved VM's partition is released")

        let restoredDir = dir.appendingPathComponent("restored")
        try FileManager.default.createDirectory(at: restoredDir, withIntermediateDirectories: true)
        let restored = try RunningVMM(config: SnapshotLayout.definition(in: snap), dir: restoredDir, arguments: ["--restore", snap])
        defer { if restored.process.isRunning { kill(restored.process.processIdentifier, SIGKILL) } }
        try #require(restored.waitFor("TICK cpu=0 n=", seconds: 30), "restored guest does not run:\n\(restored.output)")
        let first = tickCounts(restored.output, cpu: 0).first ?? 0
        #expect(first > 20, "the count goes on from the snapshot: \(first)")
        let vcpus = restored.threads.filter { $0.name.hasPrefix("vcpu") }
        #expect(vcpus.count == 1)
        for t in vcpus {
            #expect(ThreadScheduling.affinity(tid: t.tid) == [Self.rtCPU])
            let sched = ThreadScheduling.scheduler(tid: t.tid)
            #expect(sched?.policy == 1 && sched?.priority == 42, "policy/priority \(String(describing: sched))")
        }
        let locked = Int((Self.statusField(restored.process.processIdentifier, "VmLck") ?? "0 kB").split(separator: " ")[0]) ?? 0
        #expect(locked >= 32 * 1024, "VmLck \(locked) kB")
        // The restored VMM ran the same real-time set-up phase as a boot (before any vCPU exists).
        #expect(restored.output.contains("real-time check for VM rtsnap"), "\(restored.output.suffix(2000))")

        kill(restored.process.processIdentifier, SIGTERM)
        #expect(restored.waitExit(seconds: 20))
        #expect(restored.output.contains("real-time partition of rtsnap released"), "\(restored.output.suffix(2000))")
        #expect(HostSnapshot.take().matches(before), "host not restored")
    }
}
