import Foundation
import Posix
import SystemPackage
import Testing
import TestSupport
import VMMInterface

/// An rtvisor-vmm running in the background, its console collected as it comes, for tests that
/// act on a running VM (snapshots through the control socket).
final class RunningVMM: @unchecked Sendable {
    let process = Process()
    private let out = LockedData(), err = LockedData()
    private let stdin = Pipe()

    /// `prefix` wraps the VMM in another command (`ip netns exec NS`).
    init(arguments: [String], consoleInput: Bool = false, prefix: [String] = []) throws {
        let argv = prefix + [Env.vmmBinary] + arguments + (consoleInput ? [] : ["--no-console-input"])
        process.executableURL = URL(fileURLWithPath: argv[0])
        process.arguments = Array(argv.dropFirst())
        let o = Pipe(), e = Pipe()
        process.standardOutput = o
        process.standardError = e
        process.standardInput = consoleInput ? stdin : FileHandle.nullDevice
        for (pipe, sink) in [(o, out), (e, err)] {
            pipe.fileHandleForReading.readabilityHandler = { h in
                let d = h.availableData
                if !d.isEmpty { sink.append(d) }
            }
        }
        try process.run()
    }

    var console: String { String(decoding: out.get(), as: UTF8.self) }
    var stderr: String { String(decoding: err.get(), as: UTF8.self) }

    /// Types a line on the serial console (needs `consoleInput`).
    func type(_ line: String) { stdin.fileHandleForWriting.write(Data((line + "\n").utf8)) }

    /// Waits until the console matches `predicate`; false at the timeout.
    @discardableResult
    func waitForConsole(timeout: Double, _ predicate: (String) -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if predicate(console) { return true }
            if !process.isRunning { return predicate(console) }
            usleep(20_000)
        }
        return false
    }

    /// The exit status, or nil if it is still running at the timeout (then it is killed).
    func waitForExit(timeout: Double) -> Int32? {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            return nil
        }
        process.waitUntilExit()
        usleep(50_000)  // the readability handlers' last chunks
        return process.terminationStatus
    }

    deinit { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
}

/// Client side of `--control-socket`, as rtvisord uses it.
enum ControlClient {
    static func connect(_ path: String, timeout: Double = 10) throws -> VMMControlConnection {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            if let fd = connectToUnixSocket(path) {
                let c = VMMControlConnection(socket: FileDescriptor(rawValue: fd))
                _ = try c.hello()
                return c
            }
            guard Date() < deadline else { throw SnapshotTestError("cannot connect to \(path)") }
            usleep(20_000)
        }
    }

    /// Saves the VM into `dir` (state + memory; the definition is copied from `definition`).
    static func snapshot(_ connection: VMMControlConnection, into dir: String, definition: String,
                         then: SnapshotRequest.After) throws -> VMMControl.Reply {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let definitionBytes = try Data(contentsOf: URL(fileURLWithPath: definition))
        try definitionBytes.write(to: URL(fileURLWithPath: SnapshotLayout.definition(in: dir)))
        let state = try FileDescriptor.open(SnapshotLayout.state(in: dir), .writeOnly, options: [.create, .exclusiveCreate], permissions: [.ownerReadWrite])
        let memory = try FileDescriptor.open(SnapshotLayout.memory(in: dir), .writeOnly, options: [.create, .exclusiveCreate], permissions: [.ownerReadWrite])
        defer { try? state.close(); try? memory.close() }
        return try connection.call(.snapshot(SnapshotRequest(then: then, definitionJSON: Array(definitionBytes))), files: [state, memory])
    }
}

struct SnapshotTestError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// The `TICK cpu=C n=N` counts the ticker inmate printed for `cpu`, in order.
func tickCounts(_ console: String, cpu: Int) -> [Int] {
    console.split(separator: "\n").compactMap { line in
        guard line.hasPrefix("TICK cpu=\(cpu) n=") else { return nil }
        return Int(line.split(separator: "=").last ?? "")
    }
}
