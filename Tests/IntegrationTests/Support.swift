import Foundation
import Testing
import TestSupport

/// Where things are, for tests that run the real `rtvisor-vmm` on `/dev/kvm`.
enum Env {
    static let packageRoot: URL = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static let kvmAvailable: Bool = FileManager.default.isReadableFile(atPath: "/dev/kvm")
        && FileManager.default.isWritableFile(atPath: "/dev/kvm")
    static let noKVMReason: Comment = "/dev/kvm is not present or not accessible: skipping tests that run guests"

    static var vmmBinary: String {
        if let p = ProcessInfo.processInfo.environment["RTVISOR_VMM"] { return p }
        for config in ["debug", "release"] {
            let p = packageRoot.appendingPathComponent(".build/\(config)/rtvisor-vmm").path
            if FileManager.default.isExecutableFile(atPath: p) { return p }
        }
        return packageRoot.appendingPathComponent(".build/debug/rtvisor-vmm").path
    }

    static var inmatesDir: String {
        ProcessInfo.processInfo.environment["RTVISOR_INMATES"] ?? packageRoot.appendingPathComponent("build/inmates").path
    }

    static var guestLinuxDir: String {
        if let p = ProcessInfo.processInfo.environment["RTVISOR_GUEST_LINUX"] { return p }
        let cache = ProcessInfo.processInfo.environment["RTVISOR_CACHE"]
            ?? (ProcessInfo.processInfo.environment["XDG_CACHE_HOME"].map { $0 + "/rtvisor" })
            ?? (NSHomeDirectory() + "/.cache/rtvisor")
        return cache + "/guest-linux/current"
    }

    /// A prerequisite built by a script; its absence is a failure (with the fix), not a skip.
    static func requireFile(_ path: String, builtBy script: String) throws -> String {
        guard FileManager.default.fileExists(atPath: path) else {
            Issue.record("missing \(path): run \(script) first (scripts/test.sh does)")
            throw CancellationError()
        }
        return path
    }

    static func inmate(_ name: String) throws -> String {
        try requireFile(inmatesDir + "/\(name).elf", builtBy: "scripts/build-inmates.sh")
    }
}

struct VMMResult {
    let pid: Int32
    let status: Int32
    /// The signal that ended the VMM, if one did (then `status` is that signal's number).
    let killedBySignal: Int32?
    let stdout: String
    let stderr: String
    let seconds: Double
    var console: String { stdout }
}

/// Writes a definition and runs `rtvisor-vmm --config` on it as a separate process.
enum VMM {
    static func tempDir() throws -> URL { URL(fileURLWithPath: try makeTemporaryDirectory()) }

    static func writeDefinition(_ json: String, name: String = "vm.json", in dir: URL? = nil) throws -> String {
        let d = try dir ?? tempDir()
        let url = d.appendingPathComponent(name)
        try json.write(to: url, atomically: true, encoding: .utf8)
        return url.path
    }

    static func definition(name: String, kernel: String, vcpus: Int = 1, memoryMiB: Int = 64,
                           initrd: String? = nil, cmdline: String = "", extra: String = "") -> String {
        var fields = [
            "\"name\": \"\(name)\"", "\"vcpus\": \(vcpus)", "\"memory_mib\": \(memoryMiB)",
            "\"kernel\": \"\(kernel)\"", "\"cmdline\": \"\(cmdline)\"",
        ]
        if let initrd { fields.append("\"initrd\": \"\(initrd)\"") }
        if !extra.isEmpty { fields.append(extra) }
        return "{" + fields.joined(separator: ", ") + "}"
    }

    /// Runs the VMM; `prefix` wraps it in another command (e.g. `ip netns exec NS`), `environment`
    /// is added to this process's. With `consoleInput` the VMM reads a stdin pipe that stays open
    /// until it ends (its console-in thread lives).
    static func run(config: String, arguments: [String] = [], timeout: Double, prefix: [String] = [],
                    environment: [String: String] = [:], consoleInput: Bool = false) throws -> VMMResult {
        let p = Process()
        let argv = prefix + [Env.vmmBinary, "--config", config] + (consoleInput ? [] : ["--no-console-input"]) + arguments
        p.executableURL = URL(fileURLWithPath: argv[0])
        p.arguments = Array(argv.dropFirst())
        if !environment.isEmpty { p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        let input = Pipe()
        if consoleInput { p.standardInput = input } else { p.standardInput = FileHandle.nullDevice }
        let start = Date()
        try p.run()
        // Read both pipes concurrently so a chatty guest cannot block on a full pipe.
        let outData = LockedData(), errData = LockedData()
        let group = DispatchGroup()
        for (pipe, sink) in [(out, outData), (err, errData)] {
            group.enter()
            DispatchQueue.global().async {
                sink.set(pipe.fileHandleForReading.readDataToEndOfFile())
                group.leave()
            }
        }
        let deadline = DispatchTime.now() + timeout
        var timedOut = false
        while p.isRunning {
            if DispatchTime.now() > deadline { timedOut = true; p.interrupt(); usleep(200_000); if p.isRunning { kill(p.processIdentifier, SIGKILL) }; break }
            usleep(20_000)
        }
        p.waitUntilExit()
        try? input.fileHandleForWriting.close()
        group.wait()
        let result = VMMResult(pid: p.processIdentifier, status: p.terminationStatus,
                               killedBySignal: p.terminationReason == .uncaughtSignal ? p.terminationStatus : nil,
                               stdout: String(decoding: outData.get(), as: UTF8.self),
                               stderr: String(decoding: errData.get(), as: UTF8.self),
                               seconds: Date().timeIntervalSince(start))
        if timedOut {
            Issue.record("rtvisor-vmm did not finish within \(timeout) s; console so far:\n\(result.stdout.suffix(3000))\nstderr:\n\(result.stderr.suffix(2000))")
        }
        return result
    }
}

final class LockedData: @unchecked Sendable {
    private var data = Data()
    private let lock = NSLock()
    func set(_ d: Data) { lock.lock(); data = d; lock.unlock() }
    func append(_ d: Data) { lock.lock(); data.append(d); lock.unlock() }
    func get() -> Data { lock.lock(); defer { lock.unlock() }; return data }
}
