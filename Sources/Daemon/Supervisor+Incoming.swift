import APIModels
import CDaemonSupport
import Config
import Foundation
import Posix
import SystemPackage
import VMMInterface

/// Live migration, the target's side (docs/migration.md, "With rtvisord"): rtvisord listens,
/// accepts one stream, reads its hello and configuration, installs the definition that came
/// with it (renamed, disks mapped) as a defined VM and starts its VMM with the stream
/// (`--incoming fd:3 --incoming-config FILE`). The VM is `incoming` until the VMM serves its
/// control socket, which it does once the guest runs here.
extension Supervisor {
    /// How long the source may take to send hello and configuration once connected.
    static let incomingHandshakeSeconds = 30
    /// How long the VMM may take to receive the VM (all of its memory) before it is given up on.
    static let incomingTimeoutSeconds = 3600.0
    static let incomingListenSeconds = 3600

    /// What the accepting thread hands back: the connected stream, after hello and configuration.
    struct Arrival: @unchecked Sendable {
        let channel: MigrationChannel
        let config: MigrationConfig
    }

    public func receiveMigration(_ request: IncomingRequest) async throws(ControlError) -> IncomingMigration {
        guard !shuttingDown else { throw .conflict("rtvisord is shutting its guests down: nothing is received now") }
        if let name = request.name {
            guard ClonePlan.isValidName(name) else { throw .conflict("name \"\(name)\" is not a VM name (1–64 letters, digits, '-' and '_')") }
            // Checked again when the VM arrives; a name that is running cannot be taken now either.
            if let r = records[name], r.lifecycle.process != nil || r.state == .restarting {
                throw .conflict("VM \(name) is \(r.state.rawValue): stop it first, or receive under another name (--name)")
            }
        }
        if let problem = DefinitionJSON.diskMapProblem(request.diskMap ?? [:]) { throw .conflict(problem) }
        let address = try Self.streamAddress(request.listen, field: "listen")
        // Listening replaces the file at the path: only a socket (one left by an earlier listener) may be there.
        if case let .unix(path) = address {
            var st = stat()
            if lstat(path, &st) == 0 && st.st_mode & S_IFMT != S_IFSOCK {
                throw .conflict("listen: \(path) exists and is not a socket (rtvisord would replace it)")
            }
        }
        let listener: Int32
        switch address {
        case let .unix(path): listener = cdaemon_listen_unix(path, 1, 0o600)
        case let .tcp(host, port): listener = cdaemon_listen_tcp(host, port)
        case .fd: listener = -1
        }
        guard listener >= 0 else { throw .failed("cannot listen on \(address): \(errnoMessage())\(Self.socketHint(errno))") }
        let id = String(nextIncomingID)
        nextIncomingID += 1
        let entry = IncomingMigration(id: id, listen: address.description, phase: .listening, name: request.name)
        incoming[id] = entry
        logger.notice("incoming migration \(id): listening on \(address)")
        let seconds = request.timeoutSeconds ?? Self.incomingListenSeconds
        // Accepting and the handshake block: a thread of their own, off the actor and the pool.
        let thread = Thread { [self] in
            let arrived = Self.acceptMigration(listener, address, timeoutSeconds: seconds)
            Task { await self.migrationArrived(id, arrived, request) }
        }
        thread.name = "incoming-\(id)"
        thread.start()
        return entry
    }

    public func incomingMigrations() -> IncomingList {
        IncomingList(migrations: incoming.values.sorted { (Int($0.id) ?? 0) < (Int($1.id) ?? 0) })
    }

    public func incomingMigration(_ id: String) throws(ControlError) -> IncomingMigration {
        guard let m = incoming[id] else { throw .notFound("no incoming migration \(id)") }
        return m
    }

    /// Blocking: waits for one connection (then stops listening), reads hello and configuration.
    /// A stream that is not a migration, or whose configuration cannot be read, is answered
    /// `refused` before it is closed.
    nonisolated static func acceptMigration(_ listener: Int32, _ address: MigrationAddress, timeoutSeconds: Int) -> Result<Arrival, ControlError> {
        defer {
            close(listener)
            if case let .unix(path) = address { unlink(path) }
        }
        var p = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
        let ready = (try? retryInterrupted { poll(&p, 1, Int32(min(timeoutSeconds, Int(Int32.max / 1000)) * 1000)) }) ?? -1
        guard ready > 0 else { return .failure(.failed("no source connected to \(address) within \(timeoutSeconds) s")) }
        let fd = cdaemon_accept(listener)
        guard fd >= 0 else { return .failure(.failed("accept on \(address): \(errnoMessage())")) }
        // Blocking from here (accept4 made it non-blocking): the VMM reads it blocking too.
        _ = fcntl(fd, F_SETFL, 0)
        let channel = MigrationChannel(socket: FileDescriptor(rawValue: fd))
        setReceiveTimeout(fd, seconds: incomingHandshakeSeconds)
        func refuse(_ reason: String) -> Result<Arrival, ControlError> {
            try? channel.send(.refused(reason))
            try? channel.socket.close()
            return .failure(.failed(reason))
        }
        let first: MigrationMessage
        do { first = try channel.receive() } catch { return refuse("not a migration stream: \(error)") }
        guard case let .hello(version, rtvisorVersion) = first else { return refuse("not a migration stream: it began with \(first.name), not hello") }
        guard version == MigrationMessage.version else {
            return refuse("migration protocol \(version) (rtvisor \(rtvisorVersion)); this host speaks \(MigrationMessage.version)")
        }
        let second: MigrationMessage
        do { second = try channel.receive() } catch { return refuse("the configuration cannot be read: \(error)") }
        guard case let .config(config) = second else { return refuse("the source sent \(second.name) where its configuration belongs") }
        // The VMM inherits the socket, and with it this timeout: the memory rounds take longer.
        setReceiveTimeout(fd, seconds: 0)
        return .success(Arrival(channel: channel, config: config))
    }

    nonisolated static func setReceiveTimeout(_ fd: Int32, seconds: Int) {
        var tv = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// The source's configuration is here: install the VM and start its VMM with the stream, then
    /// wait until it runs the guest (or gives up). Anything refused here is said to the source.
    func migrationArrived(_ id: String, _ arrived: Result<Arrival, ControlError>, _ request: IncomingRequest) async {
        let arrival: Arrival
        switch arrived {
        case let .success(a): arrival = a
        case let .failure(error): return incomingFailed(id, "\(error)", sourceHost: nil)
        }
        let host = arrival.config.sourceHost, channel = arrival.channel
        incoming[id]?.sourceHost = host
        func refuse(_ reason: String) {
            try? channel.send(.refused(reason))
            try? channel.socket.close()
            incomingFailed(id, reason, sourceHost: host)
        }
        var json: DefinitionJSON
        do { json = try DefinitionJSON(arrival.config.definitionJSON, file: "the definition from \(host)") } catch { return refuse("\(error)") }
        if let name = request.name { json.rename(to: name) }
        json.mapDiskPaths(request.diskMap ?? [:])
        guard let name = json.name, ClonePlan.isValidName(name) else { return refuse("the definition from \(host) has no valid VM name") }
        incoming[id]?.name = name
        let installed: InstalledDefinition
        do {
            installed = try install(json, from: "a migration from \(host)", mustBeNew: false, vmNoun: "the incoming VM", verb: "receive")
        } catch { return refuse("\(error)") }
        let configFile = paths.incomingConfig(name)
        do {
            try FileManager.default.createDirectory(atPath: paths.vmDirectory(name), withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o750])
            try HostFiles.replaceAtomically(configFile, with: Array(try JSONEncoder().encode(arrival.config)))
            chmod(configFile, 0o600)
        } catch {
            undoInstall(installed)
            return refuse("cannot write \(configFile): \(error)")
        }
        let spawned = feed(name, .incomingRequested(IncomingSource(socket: channel.socket.rawValue, configFile: configFile, sourceHost: host)))
        guard case .success? = spawned, let process = records[name]?.lifecycle.process else {
            var reason = "its VMM did not start"
            if case let .failure(error)? = spawned { reason = "\(error)" }
            undoInstall(installed)
            return refuse("VM \(name): \(reason)")
        }
        // The VMM has its own copy of the stream now.
        try? channel.socket.close()
        incoming[id]?.phase = .receiving
        incoming[id]?.pid = process.pid
        let pid = process.pid, startTime = process.startTime, socket = paths.controlSocket(name)
        let problem = await Processes.offThePool {
            VMMControlClient.waitUntilServing(socket, timeoutSeconds: Self.incomingTimeoutSeconds) { Processes.isAlive(pid, startTime: startTime) }
        }
        if problem == nil && records[name]?.pid == pid {
            feed(name, .incomingConfirmed(pid: pid))
            incoming[id]?.phase = .running
            event(.vmMigratedIn, .notice, "VM \(name) migrated from \(host) to \(Self.hostName): runs here (rtvisor-vmm PID \(pid))",
                  vm: name, pid: pid, state: .running,
                  extra: ["MIGRATION_SOURCE_HOST": host, "MIGRATION_DESTINATION": Self.hostName, "MIGRATION_LISTEN": request.listen])
            return
        }
        // The lifecycle hears of the exit from the wait thread, with the VMM's own reason.
        if !(await waitForExit(name, pid: pid, seconds: 10)) {
            feed(name, .stopRequested(force: true))
            _ = await waitForExit(name, pid: pid, seconds: VMLifecycle.killGraceSeconds + 2)
        }
        let reason = records[name]?.lifecycle.lastExit?.reason ?? problem ?? "it ended"
        undoInstall(installed)
        incomingFailed(id, "VM \(name) could not be received from \(host): \(reason)", sourceHost: host)
    }

    func incomingFailed(_ id: String, _ reason: String, sourceHost: String?) {
        incoming[id]?.phase = .failed
        incoming[id]?.error = reason
        var extra = ["MIGRATION_DESTINATION": Self.hostName, "MIGRATION_OUTCOME": "refused"]
        if let sourceHost { extra["MIGRATION_SOURCE_HOST"] = sourceHost }
        event(.vmMigrationFailed, .warning, "incoming migration \(id) on \(incoming[id]?.listen ?? "?"): nothing runs here: \(reason)",
              vm: incoming[id]?.name, extra: extra)
    }
}
