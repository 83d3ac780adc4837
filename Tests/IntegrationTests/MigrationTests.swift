import CDaemonSupport
import Foundation
import Posix
import SystemPackage
import Testing
import TestSupport
import VMMInterface

/// Live migration between two VMMs on this host (issue 19, docs/migration.md): the memwriter
/// inmate writes its memory at a fixed rate and verifies all of it every 1024 steps, so the steps
/// it reports before the move followed by those after it must read as one sequence of checks
/// that passed.
@Suite(.enabled(if: Env.kvmAvailable, Env.noKVMReason), .serialized)
struct MigrationTests {
    struct Pair {
        let dir: URL
        let definition: String
        let control: String
        let incoming: String
        let source: RunningVMM
        let target: RunningVMM
    }

    /// `tcpPort`: the target listens on 127.0.0.1 there instead of a unix socket.
    func start(steps: Int, tcpPort: Int? = nil) throws -> Pair {
        let dir = try VMM.tempDir()
        let def = VMM.definition(name: "memw", kernel: try Env.inmate("memwriter"), memoryMiB: 32, cmdline: "memw.steps=\(steps)")
        let path = try VMM.writeDefinition(def, in: dir)
        let control = dir.appendingPathComponent("control.sock").path
        let incoming = tcpPort.map { "tcp:127.0.0.1:\($0)" } ?? "unix:" + dir.appendingPathComponent("incoming.sock").path
        let source = try RunningVMM(arguments: ["--config", path, "--control-socket", control])
        let target = try RunningVMM(arguments: ["--incoming", incoming])
        return Pair(dir: dir, definition: path, control: control, incoming: incoming, source: source, target: target)
    }

    func steps(_ console: String) -> [Int] {
        console.split(separator: "\n").compactMap { line in
            guard line.hasPrefix("MEMW step="), line.hasSuffix("") else { return nil }
            return Int(line.dropFirst(10).prefix { $0.isNumber })
        }
    }

    func connectIncoming(_ address: String) throws -> FileDescriptor {
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            switch try MigrationAddress(parsing: address) {
            case let .unix(path): if let fd = connectToUnixSocket(path) { return FileDescriptor(rawValue: fd) }
            case let .tcp(host, port): let fd = cdaemon_connect_tcp(host, port); if fd >= 0 { return FileDescriptor(rawValue: fd) }
            case .fd: break
            }
            usleep(20_000)
        }
        throw SnapshotTestError("the target's \(address) never came up")
    }

    func migrate(_ p: Pair, over stream: FileDescriptor) throws -> VMMControl.Reply {
        let definition = try [UInt8](Data(contentsOf: URL(fileURLWithPath: p.definition)))
        let control = try ControlClient.connect(p.control)
        defer { try? stream.close() }
        return try control.call(.migrate(MigrationRequest(downtimeMilliseconds: 50, definitionJSON: definition)), files: [stream])
    }

    @Test(arguments: [nil, 47000 + Int(getpid() % 1000)])
    func aGuestWritingItsMemoryMovesMidRunAndVerifiesAllOfItOnTheTarget(tcpPort: Int?) throws {
        let total = 10240
        let p = try start(steps: total, tcpPort: tcpPort)
        #expect(p.source.waitForConsole(timeout: 60) { self.steps($0).contains(2048) }, "source: \(p.source.console)\n\(p.source.stderr)")
        let reply = try migrate(p, over: try connectIncoming(p.incoming))
        guard case let .migrated(report) = reply else { throw SnapshotTestError("migrate: \(reply)\nsource: \(p.source.stderr)\ntarget: \(p.target.stderr)") }
        #expect(report.rounds.count >= 2, "pre-copy took rounds while the guest wrote: \(report.rounds)")
        #expect(report.downtimeMilliseconds > 0 && report.totalBytes > 0)
        #expect(p.source.waitForExit(timeout: 30) == VMMExitStatus.migrated.code, "source: \(p.source.stderr)")
        #expect(p.target.waitForExit(timeout: 120) == 0, "target: \(p.target.console.suffix(2000))\n\(p.target.stderr)")
        #expect(p.target.console.contains("INMATE memwriter PASS"))
        #expect(!p.target.console.contains("MEMW_START"), "the target must not boot the guest")
        let seen = steps(p.source.console + p.target.console)
        #expect(seen == Array(stride(from: 1024, through: total, by: 1024)), "every check, once, in order: \(seen)")
        #expect(!steps(p.target.console).isEmpty, "checks ran on the target")
    }

    @Test func aTargetThatCannotTakeTheVMRefusesItBeforeAnyMemoryMoves() throws {
        let dir = try VMM.tempDir()
        let disk = dir.appendingPathComponent("disk.img").path
        FileManager.default.createFile(atPath: disk, contents: Data(count: 1 << 20))
        let def = VMM.definition(name: "memw", kernel: try Env.inmate("memwriter"), memoryMiB: 32, cmdline: "memw.steps=0",
                                 extra: "\"disks\": [{\"path\": \"\(disk)\"}]")
        let path = try VMM.writeDefinition(def, in: dir)
        // The target's own definition of the VM says 2 vCPUs: what the guest saw differs.
        let other = try VMM.writeDefinition(VMM.definition(name: "memw", kernel: try Env.inmate("memwriter"), vcpus: 2, memoryMiB: 32,
                                                           extra: "\"disks\": [{\"path\": \"\(disk)\"}]"), name: "other.json", in: dir)
        let control = dir.appendingPathComponent("control.sock").path
        let incoming = "unix:" + dir.appendingPathComponent("incoming.sock").path
        let source = try RunningVMM(arguments: ["--config", path, "--control-socket", control])
        defer { kill(source.process.processIdentifier, SIGKILL) }
        #expect(source.waitForConsole(timeout: 60) { $0.contains("MEMW_START") })
        // The disk is shared storage: the target opens it without its lock (the source has it).
        let target = try RunningVMM(arguments: ["--incoming", incoming, "--config", other])
        let reply = try migrate(Pair(dir: dir, definition: path, control: control, incoming: incoming, source: source, target: target),
                                over: try connectIncoming(incoming))
        guard case let .refused(reason) = reply else { throw SnapshotTestError("expected a refusal: \(reply)") }
        #expect(reason.contains("the target refused the VM: the VM has 1 vCPUs, the definition here 2"), "\(reason)")
        #expect(target.waitForExit(timeout: 30) == VMMExitStatus.vmmError.code)
        #expect(source.process.isRunning, "the source keeps running")
        let before = steps(source.console).count
        #expect(source.waitForConsole(timeout: 60) { self.steps($0).count > before }, "and keeps verifying its memory")
    }

    /// Capped at 2 MiB/s, the guest dirties memory faster than it is sent: the control
    /// connection hears each round (iteration, dirty pages, rate, expected downtime), then the
    /// timeout gives the migration up; the VM runs on here and the target discards what it got.
    @Test func aMigrationThatCannotConvergeReportsItsRoundsAndGivesUpAtItsTimeout() throws {
        let p = try start(steps: 0)
        defer { kill(p.source.process.processIdentifier, SIGKILL) }
        #expect(p.source.waitForConsole(timeout: 60) { self.steps($0).contains(1024) })
        let stream = try connectIncoming(p.incoming)
        let definition = try [UInt8](Data(contentsOf: URL(fileURLWithPath: p.definition)))
        let control = try ControlClient.connect(p.control)
        var rounds: [MigrationProgress] = []
        let request = MigrationRequest(downtimeMilliseconds: 1, maxRounds: 1000, force: false, definitionJSON: definition,
                                       timeoutSeconds: 3, maxBandwidthMiBps: 2)
        let reply = try control.call(.migrate(request), files: [stream]) { interim in
            if case let .migrationProgress(progress) = interim { rounds.append(progress) }
        }
        try? stream.close()
        guard case let .refused(reason) = reply else { throw SnapshotTestError("expected the timeout: \(reply)") }
        #expect(reason.contains("the timeout of 3 s is over, given up, the VM keeps running here"), "\(reason)")
        #expect(rounds.count >= 2 && rounds.map(\.round) == Array(0..<rounds.count), "\(rounds)")
        #expect(rounds.allSatisfy { $0.dirtyPages > 0 && $0.mebibytesPerSecond > 0 && $0.mebibytesPerSecond < 2.5 }, "\(rounds)")
        #expect(rounds.last!.elapsedMilliseconds >= 3000 && rounds.last!.bytesSent > 0)
        #expect(p.target.waitForExit(timeout: 30) == VMMExitStatus.vmmError.code)
        #expect(p.target.stderr.contains("the source abandoned the migration"), "\(p.target.stderr)")
        let before = steps(p.source.console).count
        #expect(p.source.waitForConsole(timeout: 60) { self.steps($0).count > before }, "the source keeps verifying its memory")
    }

    /// A guest writing its disk (storage both sides see: here the same file) moves between two
    /// requests: the disk's locks go with the VM, the device's queue goes on from its indices
    /// (the used ring the VMM wrote is among the pages it resends), every sector verifies.
    @Test func aDiskWriterMovesWithItsDiskAndItsDataVerifies() throws {
        let dir = try VMM.tempDir()
        let disk = try DiskImage(megabytes: 4, in: dir)
        let sectors = 400, start = 8
        let def = VMM.definition(name: "blkmig", kernel: try Env.inmate("virtio-blk"), memoryMiB: 16,
                                 cmdline: "blk.mode=durable blk.start=\(start) blk.sectors=\(sectors) blk.seed=0x77",
                                 extra: "\"disks\": [{\"path\": \"\(disk.path)\"}]")
        let path = try VMM.writeDefinition(def, in: dir)
        let control = dir.appendingPathComponent("control.sock").path
        let incoming = "unix:" + dir.appendingPathComponent("incoming.sock").path
        let source = try RunningVMM(arguments: ["--config", path, "--control-socket", control])
        let target = try RunningVMM(arguments: ["--incoming", incoming])
        #expect(source.waitForConsole(timeout: 60) { $0.contains("ACK \(start + 30)\n") }, "\(source.console)\n\(source.stderr)")
        let reply = try migrate(Pair(dir: dir, definition: path, control: control, incoming: incoming, source: source, target: target),
                                over: try connectIncoming(incoming))
        guard case .migrated = reply else { throw SnapshotTestError("migrate: \(reply)\n\(source.stderr)\n\(target.stderr)") }
        #expect(source.waitForExit(timeout: 30) == VMMExitStatus.migrated.code)
        #expect(!source.console.contains("INMATE virtio-blk OK"), "the move fell inside the writes")
        #expect(target.waitForExit(timeout: 120) == 0, "target: \(target.console.suffix(1000))\n\(target.stderr)")
        #expect(target.console.contains("INMATE virtio-blk OK: durable: \(sectors) sectors acknowledged"))
        let acks = (source.console + target.console).split(separator: "\n").compactMap { $0.hasPrefix("ACK ") ? Int($0.dropFirst(4)) : nil }
        #expect(acks == Array(start..<(start + sectors)), "every sector acknowledged once, in order")
        let data = try disk.sectors(UInt64(start), sectors)
        for s in 0..<sectors {
            #expect(Array(data[(s * 512)..<((s + 1) * 512)]) == blockPattern(seed: 0x77, sector: UInt64(start + s)), "sector \(start + s)")
        }
    }

    /// The stream is cut after a random number of bytes, twenty times: afterwards exactly one of
    /// the two VMMs runs the guest, and its memory checks keep passing.
    @Test func aStreamCutAnywhereLeavesExactlyOneRunningVM() throws {
        var outcomes: [String: Int] = [:]
        for trial in 0..<20 {
            let p = try start(steps: 0)
            defer { kill(p.source.process.processIdentifier, SIGKILL); kill(p.target.process.processIdentifier, SIGKILL) }
            #expect(p.source.waitForConsole(timeout: 60) { self.steps($0).contains(1024) })
            let cut = Int.random(in: 1...(trial % 4 == 0 ? 64 << 10 : 6 << 20))
            let proxy = try CuttingProxy(to: try connectIncoming(p.incoming), cutAfter: cut)
            let reply = try migrate(p, over: proxy.sourceEnd)
            var running: [RunningVMM] = []
            switch reply {
            case .migrated:
                outcomes["moved", default: 0] += 1
                #expect(p.source.waitForExit(timeout: 30) == VMMExitStatus.migrated.code)
                running = [p.target]
            case let .refused(reason) where reason.contains("it may"):
                // Unknown outcome: the source stays paused; whoever drives the migration looks
                // at the target and resumes the source only if the target does not run.
                outcomes["unknown", default: 0] += 1
                usleep(300_000)
                if p.target.process.isRunning {
                    kill(p.source.process.processIdentifier, SIGKILL)
                    running = [p.target]
                } else {
                    _ = try ControlClient.connect(p.control).call(.resume)
                    running = [p.source]
                }
            case .refused:
                outcomes["stayed", default: 0] += 1
                #expect(p.target.waitForExit(timeout: 30) != nil, "trial \(trial): the target discards the partial VM")
                running = [p.source]
            default:
                Issue.record("trial \(trial): \(reply)")
            }
            proxy.finish()
            #expect([p.source, p.target].filter { $0.process.isRunning }.count == 1, "trial \(trial) (cut at \(cut)): \(reply)")
            for vm in running {
                let before = steps(vm.console).last ?? 0
                #expect(vm.waitForConsole(timeout: 60) { (self.steps($0).last ?? 0) > before + 1024 },
                        "trial \(trial): the running VM keeps verifying its memory:\n\(vm.console.suffix(500))\n\(vm.stderr.suffix(1000))")
                #expect(!vm.console.contains("FAIL"))
            }
        }
        print("stream-cut trials: \(outcomes)")
    }
}

/// Forwards a migration stream between a socketpair end (handed to the source VMM) and the
/// target's connection, and cuts both directions once `cutAfter` bytes went towards the target.
final class CuttingProxy: @unchecked Sendable {
    let sourceEnd: FileDescriptor
    private let inner: Int32
    private let target: FileDescriptor
    private let cutAfter: Int
    private let lock = NSLock()
    private var forwarded = 0
    private var cut = false
    private let done = DispatchGroup()

    init(to target: FileDescriptor, cutAfter: Int) throws {
        var fds: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0 else { throw SnapshotTestError("socketpair: \(errnoMessage())") }
        sourceEnd = FileDescriptor(rawValue: fds[0])
        inner = fds[1]
        self.target = target
        self.cutAfter = cutAfter
        for (from, to, counted) in [(inner, target.rawValue, true), (target.rawValue, inner, false)] {
            done.enter()
            Thread.detachNewThread { [self] in
                defer { done.leave() }
                var buf = [UInt8](repeating: 0, count: 65536)
                while true {
                    let n = read(from, &buf, buf.count)
                    if n <= 0 { break }
                    var allowed = n
                    if counted {
                        lock.lock()
                        allowed = min(n, max(0, cutAfter - forwarded))
                        forwarded += allowed
                        if forwarded >= cutAfter { cut = true }
                        lock.unlock()
                    }
                    if allowed > 0 && (try? buf.withUnsafeBytes { try writeAll(to, UnsafeRawBufferPointer(rebasing: $0[0..<allowed])) }) == nil { break }
                    lock.lock(); let isCut = cut; lock.unlock()
                    if isCut { break }
                }
                lock.lock(); cut = true; lock.unlock()
                shutdown(inner, Int32(SHUT_RDWR))
                shutdown(target.rawValue, Int32(SHUT_RDWR))
            }
        }
    }

    func finish() {
        shutdown(inner, Int32(SHUT_RDWR))
        shutdown(target.rawValue, Int32(SHUT_RDWR))
        done.wait()
        close(inner)
        try? target.close()
    }
}
