import Foundation
import Testing
import TestSupport
import VMMInterface

extension RealtimePartitionTests {
    /// Admission control on the target: a real-time VM cannot move to a VMM whose host has its
    /// CPUs taken (here: by the source itself, on the same host). Refused before memory moves;
    /// the source keeps running with its partition.
    @Test func aTargetWithTheRealtimeCPUsTakenRefusesTheMigration() throws {
        let dir = try VMM.tempDir()
        let def = VMM.definition(name: "rtmig", kernel: try Env.inmate("ticker"), memoryMiB: 32, cmdline: "ticker.report=10",
                                 extra: "\"realtime\": {\"cpus\": [\(Self.rtCPU)], \"priority\": 42}")
        let path = try VMM.writeDefinition(def, in: dir)
        let control = dir.appendingPathComponent("control.sock").path
        let source = try RunningVMM(config: path, dir: dir, arguments: ["--control-socket", control])
        defer { if source.process.isRunning { kill(source.process.processIdentifier, SIGTERM); _ = source.waitExit(seconds: 20) } }
        try #require(source.waitFor("TICK cpu=0 n=20", seconds: 30), "\(source.output)")
        let incoming = dir.appendingPathComponent("incoming.sock").path
        let targetDir = dir.appendingPathComponent("target")
        try FileManager.default.createDirectory(at: targetDir, withIntermediateDirectories: true)
        let target = try RunningVMM(config: path, dir: targetDir, arguments: ["--incoming", "unix:\(incoming)"])
        var stream: Int32? = nil
        for _ in 0..<200 where stream == nil { stream = connectToUnixSocket(incoming); if stream == nil { usleep(20_000) } }
        let definition = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        let reply = try ControlClient.connect(control).call(.migrate(MigrationRequest(definitionJSON: definition)),
                                                            files: [.init(rawValue: try #require(stream))])
        guard case let .refused(reason) = reply else { throw SnapshotTestError("expected a refusal: \(reply)") }
        // On one host the target meets the source's own partition ("already in use"); on
        // another, another VM's ("real-time CPU N already given to VM X"): both are admission.
        #expect(reason.contains("the target refused the VM") && reason.contains("real-time") && reason.contains("already"), "\(reason)")
        #expect(target.waitExit(seconds: 20) && target.process.terminationStatus == VMMExitStatus.vmmError.code)
        #expect(source.process.isRunning)
        let ticks = tickCounts(source.output, cpu: 0).count
        #expect(source.waitFor("TICK cpu=0 n=\((ticks + 2) * 10)", seconds: 30), "the source keeps running")
    }
}
