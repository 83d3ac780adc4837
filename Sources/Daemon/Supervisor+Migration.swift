import APIModels
import CDaemonSupport
import Config
import Foundation
import Posix
import SystemPackage
import VMMInterface

/// Live migration, the source's side (docs/migration.md, "With rtvisord"): rtvisord connects to
/// the target's address and hands the connected socket to the VM's VMM, which moves the VM; the
/// VMM ends with status 9 (`migrated`) once the target runs it.
extension Supervisor {
    /// Bounds each read on the control socket while the VMM migrates: the answer comes only when
    /// the whole memory has moved.
    static let migrationTimeoutSeconds = 3600

    /// This host's name, as the journal and the answers give it.
    nonisolated static var hostName: String {
        var buf = [CChar](repeating: 0, count: 256)
        guard gethostname(&buf, buf.count - 1) == 0 else { return "localhost" }
        return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    public func migrate(_ name: String, _ request: MigrateRequest) async throws(ControlError) -> MigrateResult {
        let r = try record(name)
        guard case let .running(process) = r.lifecycle.phase, r.state == .running else {
            if r.state == .paused { throw .conflict("VM \(name) is paused: resume it first (the migration pauses it itself for the last round)") }
            throw .conflict("VM \(name) is \(r.state.rawValue), not running")
        }
        guard !migrating.contains(name) else { throw .conflict("VM \(name) is being migrated already") }
        let address = try Self.streamAddress(request.address, field: "address")
        let definition = try runningDefinition(name).json.bytes
        let vmmRequest = MigrationRequest(downtimeMilliseconds: request.downtimeMilliseconds ?? 300, maxRounds: request.maxRounds ?? 30,
                                          force: request.force ?? true, definitionJSON: definition, timeoutSeconds: request.timeoutSeconds,
                                          maxBandwidthMiBps: request.maxBandwidthMiBps)
        migrating.insert(name)
        migrationProgress[name] = MigrationStatus(name: name, address: address.description, phase: "connecting")
        defer {
            migrating.remove(name)
            migrationProgress[name] = nil
        }
        let socket = paths.controlSocket(name), here = Self.hostName
        let fields = ["MIGRATION_SOURCE_HOST": here, "MIGRATION_DESTINATION": address.description]
        logger.notice("VM \(name): migrating to \(address)")
        let outcome = await Processes.offThePool {
            Self.sendVM(controlSocket: socket, to: address, request: vmmRequest) { p in Task { await self.noteProgress(name, p) } }
        }
        switch outcome {
        case let .success(.moved(report)):
            event(.vmMigrated, .notice,
                  "VM \(name) migrated from \(here) to \(address): \(report.rounds.count) rounds, \(report.totalBytes >> 20) MiB in \(Int(report.totalMilliseconds)) ms, downtime \(Int(report.downtimeMilliseconds)) ms",
                  vm: name, pid: process.pid,
                  extra: fields.merging(["MIGRATION_DOWNTIME_MS": String(Int(report.downtimeMilliseconds)), "MIGRATION_BYTES": String(report.totalBytes)]) { a, _ in a })
            // The VMM exits with `migrated` once its peer has the answer; the lifecycle shows the
            // VM `migrated` when the wait thread has reported it (never restarted: RestartTracker).
            _ = await waitForExit(name, pid: process.pid, seconds: 10)
            return MigrateResult(name: name, sourceHost: here, address: address.description,
                                 rounds: report.rounds.map { MigrationRound(pages: $0.pages, bytes: $0.bytes, milliseconds: $0.milliseconds) },
                                 totalBytes: report.totalBytes, totalMilliseconds: report.totalMilliseconds,
                                 downtimeMilliseconds: report.downtimeMilliseconds, state: records[name]?.state ?? .migrated)
        case let .success(.refused(reason)):
            event(.vmMigrationFailed, .warning, "VM \(name): migration from \(here) to \(address) failed, the VM runs on here: \(reason)",
                  vm: name, pid: process.pid, extra: fields.merging(["MIGRATION_OUTCOME": "refused"]) { a, _ in a })
            throw .failed("VM \(name) was not migrated (it runs on here): \(reason)")
        case let .success(.unknown(reason)):
            feed(name, .migrationOutcomeUnknown(pid: process.pid))
            let advice = "VM \(name) is PAUSED here and may run on the target. Look at the target: if it runs the VM, `rtvisorctl stop --force \(name)` here; if it does not, `rtvisorctl resume \(name)` here. Never both."
            event(.vmMigrationFailed, .critical, "VM \(name): migration from \(here) to \(address) has an unknown outcome: \(reason). \(advice)",
                  vm: name, pid: process.pid, state: .paused, extra: fields.merging(["MIGRATION_OUTCOME": "unknown"]) { a, _ in a })
            throw .failed("migration outcome unknown: \(reason). \(advice)")
        case let .failure(error):
            // The control socket failed: the VMM may still be migrating, or have ended.
            event(.vmMigrationFailed, .error, "VM \(name): migration from \(here) to \(address) failed: \(error)",
                  vm: name, pid: process.pid, extra: fields.merging(["MIGRATION_OUTCOME": "error"]) { a, _ in a })
            throw .failed("VM \(name): migration failed: \(error) (rtvisorctl list shows whether it still runs here)")
        }
    }

    /// What to do about a socket the unit does not allow (EAFNOSUPPORT: RestrictAddressFamilies=).
    nonisolated static func socketHint(_ e: Int32) -> String {
        e == EAFNOSUPPORT ? " (rtvisord.service allows Unix sockets only: the migration-tcp drop-in allows TCP, docs/migration.md)" : ""
    }

    /// A stream address rtvisord connects to or listens on: unix or tcp (fd:N is the VMM's).
    /// The API's router checks requests with it too.
    public nonisolated static func streamAddress(_ text: String, field: String) throws(ControlError) -> MigrationAddress {
        let address: MigrationAddress
        do { address = try MigrationAddress(parsing: text) } catch { throw .conflict("\(field): \(error)") }
        if case .fd = address { throw .conflict("\(field): fd:N is rtvisor-vmm's; rtvisord takes unix:PATH or tcp:HOST:PORT") }
        if case let .unix(path) = address, !path.hasPrefix("/") { throw .conflict("\(field): unix:PATH needs an absolute path, got \"\(path)\"") }
        return address
    }

    /// Blocking: connects to the target and has the VMM send the VM over that stream. A failure
    /// before the request reached the VMM leaves the VM running untouched.
    nonisolated static func sendVM(controlSocket: String, to address: MigrationAddress, request: MigrationRequest,
                                   progress: (@Sendable (MigrationProgress) -> Void)? = nil) -> Result<VMMControlClient.MigrationOutcome, VMMControlClient.ClientError> {
        let fd: Int32
        switch address {
        case let .unix(path): fd = cdaemon_connect_unix(path)
        case let .tcp(host, port): fd = cdaemon_connect_tcp(host, port)
        case .fd: fd = -1
        }
        guard fd >= 0 else { return .success(.refused("cannot connect to the target at \(address): \(errnoMessage())\(socketHint(errno))")) }
        let stream = FileDescriptor(rawValue: fd)
        // The VMM has its own copy once the request is sent; the target sees the stream end when it does.
        defer { try? stream.close() }
        return sendVM(controlSocket: controlSocket, over: stream, request: request, progress: progress)
    }

    /// Blocking: has the VMM behind `controlSocket` send the VM over `stream` (connected).
    nonisolated static func sendVM(controlSocket: String, over stream: FileDescriptor, request: MigrationRequest,
                                   progress: (@Sendable (MigrationProgress) -> Void)? = nil) -> Result<VMMControlClient.MigrationOutcome, VMMControlClient.ClientError> {
        let client: VMMControlClient
        do { client = try VMMControlClient.connect(controlSocket, timeoutSeconds: 10) } catch {
            return .success(.refused("\(error)"))
        }
        client.setTimeout(seconds: migrationTimeoutSeconds)
        do { return .success(try client.migrate(request, stream: stream, progress: progress)) } catch { return .failure(error) }
    }

    func noteProgress(_ name: String, _ p: MigrationProgress) {
        guard migrationProgress[name] != nil else { return }
        migrationProgress[name]?.phase = "pre-copy"
        migrationProgress[name]?.round = p.round
        migrationProgress[name]?.dirtyPages = p.dirtyPages
        migrationProgress[name]?.bytesSent = p.bytesSent
        migrationProgress[name]?.mebibytesPerSecond = p.mebibytesPerSecond
        migrationProgress[name]?.expectedDowntimeMilliseconds = p.expectedDowntimeMilliseconds
        migrationProgress[name]?.elapsedMilliseconds = p.elapsedMilliseconds
    }

    /// How the migration of VM `name` goes (`GET /v1/vms/{name}/migration`).
    public func migrationStatus(_ name: String) throws(ControlError) -> MigrationStatus {
        _ = try record(name)
        guard let s = migrationProgress[name] else { throw .notFound("VM \(name) is not being migrated") }
        return s
    }

    /// After a daemon restart: a re-adopted VMM that keeps its guest paused (a migration of unknown
    /// outcome, which the previous rtvisord knew of) is `paused` again, so `resume` goes to its
    /// control socket. Asked through the socket, off the actor; VMMs stopped with SIGSTOP are
    /// `paused` already and cannot answer.
    func recoverPausesKeptByVMMs() async {
        let running = records.compactMap { name, r -> (String, pid_t)? in
            guard case let .running(p) = r.lifecycle.phase, !r.lifecycle.pausedByVMM else { return nil }
            return (name, p.pid)
        }
        for (name, pid) in running {
            let socket = paths.controlSocket(name)
            let state = await Processes.offThePool { try? VMMControlClient.connect(socket, timeoutSeconds: 2).describe().runState }
            guard state == .paused, case let .running(p)? = records[name]?.lifecycle.phase, p.pid == pid else { continue }
            feed(name, .migrationOutcomeUnknown(pid: pid))
            event(.vmMigrationFailed, .critical,
                  "VM \(name) is kept PAUSED by its VMM (PID \(pid)): a migration of unknown outcome before rtvisord restarted. If the target runs it, `rtvisorctl stop --force \(name)` here; if not, `rtvisorctl resume \(name)`",
                  vm: name, pid: pid, state: .paused, extra: ["MIGRATION_OUTCOME": "unknown"])
        }
    }

    /// `resume` of a VM its VMM keeps paused after a migration of unknown outcome: through the
    /// control socket (no SIGSTOP is involved).
    func resumeThroughVMM(_ name: String, pid: pid_t) async throws(ControlError) -> ActionResult {
        let socket = paths.controlSocket(name)
        let problem = await Processes.offThePool { () -> String? in
            do {
                let client = try VMMControlClient.connect(socket, timeoutSeconds: 10)
                try client.resume()
                return nil
            } catch { return "\(error)" }
        }
        if let problem { throw .failed("VM \(name): resume through its control socket failed: \(problem)") }
        return try answer(name, .vmmResumed(pid: pid))
    }
}
