import CDaemonSupport
import Logging
import Posix
import Sandbox
import SystemPackage
import VMM
import VMMInterface
#if canImport(Glibc)
import Glibc
#endif

/// `--control-socket`: serves `VMMControl` (pause, resume, snapshot, migrate, statistics) to rtvisord or, for a VMM
/// started by hand, its user. The socket is created before the jail (mode 0600: only its owner,
/// root under rtvisord, may connect) and each peer's uid is checked again on accept. One
/// connection at a time, one request at a time, on a thread of its own (the `vmm` filter).
final class ControlServer: @unchecked Sendable {
    private let listenFD: Int32
    private let ownerUID: uid_t
    private let logger: Logger
    /// The console's recent output, which a migration takes along.
    private let consoleBacklog: (@Sendable () -> [UInt8])?

    init(socketPath: String, logger: Logger, consoleBacklog: (@Sendable () -> [UInt8])?) throws(VMMSetupError) {
        self.consoleBacklog = consoleBacklog
        listenFD = cdaemon_listen_unix(socketPath, 4, 0o600)
        if listenFD < 0 { throw VMMSetupError("--control-socket \(socketPath): \(errnoMessage())") }
        ownerUID = getuid()
        self.logger = logger
    }

    func start(machine: Machine) {
        final class Box: @unchecked Sendable {
            let server: ControlServer; let machine: Machine
            init(_ s: ControlServer, _ m: Machine) { server = s; machine = m }
        }
        var thread = pthread_t()
        pthread_create(&thread, nil, { raw in
            let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
            Sandbox.enterThreadOrExit(.vmm, label: "control")
            box.server.loop(box.machine)
            return nil
        }, Unmanaged.passRetained(Box(self, machine)).toOpaque())
        pthread_detach(thread)
    }

    private func loop(_ machine: Machine) {
        while true {
            var p = pollfd(fd: listenFD, events: Int16(POLLIN), revents: 0)
            guard (try? retryInterrupted({ poll(&p, 1, -1) })) != nil else { return }
            let fd = cdaemon_accept(listenFD)
            guard fd >= 0 else { continue }
            // Blocking from here: one peer is served to the end of its connection.
            _ = fcntl(fd, F_SETFL, 0)
            var uid: uid_t = 0, gid: gid_t = 0, pid: pid_t = 0
            guard cdaemon_peer_uid(fd, &uid, &gid, &pid) == 0, uid == 0 || uid == ownerUID else {
                logger.warning("control socket: refused a peer (uid \(uid), pid \(pid)): only root or uid \(ownerUID) may control this VMM")
                close(fd)
                continue
            }
            serve(VMMControlConnection(socket: FileDescriptor(rawValue: fd)), machine)
        }
    }

    private func serve(_ connection: VMMControlConnection, _ machine: Machine) {
        var version: Int? = nil
        // A VM this connection paused (pause, or a snapshot that stays paused) is resumed when
        // the connection ends: a peer that died mid-way must not leave the guest stopped.
        var pausedHere = false
        defer { if pausedHere && machine.runState == .paused { machine.resume() } }
        while true {
            let frame: (body: [UInt8], files: [FileDescriptor])?
            do { frame = try connection.receiveFrame() } catch {
                logger.warning("control socket: \(error)")
                return
            }
            guard let (body, files) = frame else { return }
            defer { for f in files { try? f.close() } }
            let id: UInt64, request: VMMControl.Request
            do { (id, request) = try VMMControl.request(from: body) } catch {
                logger.warning("control socket: \(error)")
                return
            }
            var passing: [FileDescriptor] = []
            let reply = answer(request, id: id, files: files, version: &version, connection, machine, passing: &passing)
            switch (request, reply) {
            case (.pause, .runState(.paused)): pausedHere = true
            case (.resume, _): pausedHere = false
            case let (.snapshot(s), .snapshotSaved) where s.then == .stayPaused: pausedHere = true
            default: break
            }
            let sent = (try? connection.reply(reply, to: id, passing: passing)) != nil
            // A VM saved to be stopped ends once its peer has the answer (or is gone).
            if case let .snapshot(s) = request, s.then == .stop, case .snapshotSaved = reply { machine.stopAfterSnapshot() }
            if case .migrate = request, case .migrated = reply { machine.stopAfterMigration() }
            if !sent { return }
        }
    }

    private func answer(_ request: VMMControl.Request, id: UInt64, files: [FileDescriptor], version: inout Int?,
                        _ connection: VMMControlConnection, _ machine: Machine, passing: inout [FileDescriptor]) -> VMMControl.Reply {
        if case let .hello(low, high) = request {
            let reply = VMMControl.answerHello(minVersion: low, maxVersion: high, vmmVersion: RtvisorRelease.version)
            if case let .hello(v, _) = reply { version = v }
            return reply
        }
        guard let version else { return .refused("the first request must be hello") }
        guard request.minimumVersion <= version else { return .refused("\(request) needs control protocol \(request.minimumVersion), this connection speaks \(version)") }
        guard files.count == request.passedFiles else { return .refused("the request came with \(files.count) files, it takes \(request.passedFiles)") }
        switch request {
        case .hello: return .refused("hello twice")
        case .describe:
            let def = machine.definition
            return .description(VMMDescription(vm: def.name, pid: getpid(), vcpus: def.vcpus, memoryMiB: def.memoryMiB, runState: machine.runState))
        case .pause:
            do { try machine.pause() } catch { return .refused("\(error)") }
            return .runState(machine.runState)
        case .resume:
            machine.resume()
            return .runState(machine.runState)
        case .statistics:
            return .statistics(machine.statistics())
        case let .channelDescriptors(name):
            // Sent as they are (SCM_RIGHTS duplicates them): this VMM keeps its own.
            guard let fds = machine.channelDescriptors(name) else { return .refused("this VM has no channel \"\(name)\" with descriptors rtvisord passed") }
            passing = fds.map { FileDescriptor(rawValue: $0) }
            return .channelDescriptors(count: fds.count)
        case let .consoleTail(maxBytes):
            guard let consoleBacklog else { return .refused("this VMM keeps no console backlog (no --console-socket)") }
            return .consoleTail(Array(consoleBacklog().suffix(max(0, min(maxBytes, 65536)))))
        case let .migrate(migration):
            // Version 4 peers hear how it goes after each round (interim replies to this request).
            let report: ((MigrationProgress) -> Void)? = version >= 4 ? { p in try? connection.reply(.migrationProgress(p), to: id) } : nil
            do { return .migrated(try machine.migrate(migration, over: files[0], consoleBacklog: consoleBacklog, progress: report)) } catch {
                logger.error("migration: \(error)")
                return .refused("\(error)")
            }
        case let .snapshot(snapshot):
            do { return .snapshotSaved(try machine.snapshot(snapshot, stateFile: files[0], memoryFile: files[1])) } catch {
                logger.error("snapshot: \(error)")
                return .refused("\(error)")
            }
        }
    }
}
