import APIModels
import ArgumentParser
import Posix
import Synchronization
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

// `migrate` and `migrate-receive` (docs/migration.md, "With rtvisord"). A migration takes as long
// as the guest's memory takes to cross the link, so `migrate` waits up to an hour for its answer.

let migrationCommandTimeout = 3600

struct Migrate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Move a running VM live to the rtvisord listening at ADDRESS (started there with migrate-receive).",
        discussion: """
            ADDRESS is unix:PATH or tcp:HOST:PORT. Afterwards the VM is 'migrated' here (stopped, never restarted). \
            If the target refuses, the VM runs on here. If the outcome is unknown (the stream broke after the last step), \
            the VM is PAUSED here: look at the target, then 'rtvisorctl stop --force NAME' here if it runs there, \
            'rtvisorctl resume NAME' if not. docs/migration.md.
            """)
    @OptionGroup var options: CommonOptions
    @OptionGroup var vm: NameArgument
    @Argument(help: "Where the target listens: unix:PATH or tcp:HOST:PORT; 'local': a new rtvisor-vmm on this host (as upgrade).")
    var address: String
    @Option(name: .customLong("downtime-ms"), help: "The longest the guest may be paused for the last round (ms).")
    var downtimeMs = 300
    @Option(name: .customLong("max-rounds"), help: "Pre-copy rounds at most; then the last round goes whatever its size.")
    var maxRounds = 30
    @Flag(name: .customLong("no-force"), help: "After --max-rounds, give up (the VM runs on here) instead of forcing the last round.")
    var noForce = false
    @Option(name: .customLong("timeout-s"), help: "Give up (the VM runs on here) if the last round has not begun after this many seconds.")
    var timeoutS: Int?
    @Option(name: .customLong("max-bandwidth"), help: "Send pages at this rate at most (MiB/s).")
    var maxBandwidth: Int?
    @Flag(help: "Print each round's progress on stderr (the default on a terminal).")
    var progress = false

    func validate() throws {
        guard MigrateRequest.downtimeRange.contains(downtimeMs) else { throw ValidationError("--downtime-ms must be 1–60000") }
        guard MigrateRequest.roundsRange.contains(maxRounds) else { throw ValidationError("--max-rounds must be 1–1000") }
        if let timeoutS, !MigrateRequest.timeoutRange.contains(timeoutS) { throw ValidationError("--timeout-s must be 1–86400") }
        if let maxBandwidth, !MigrateRequest.bandwidthRange.contains(maxBandwidth) { throw ValidationError("--max-bandwidth must be 1–1000000 (MiB/s)") }
    }

    func run() throws {
        if address == "local" { return try Upgrade.upgrade(vm.name, options) }
        let body = try jsonBody(MigrateRequest(address: address, downtimeMilliseconds: downtimeMs, maxRounds: maxRounds, force: !noForce,
                                               timeoutSeconds: timeoutS, maxBandwidthMiBps: maxBandwidth))
        let watcher = (progress || isatty(STDERR_FILENO) == 1) && !options.json ? MigrationWatcher(socket: options.socket, vm: vm.name) : nil
        watcher?.start()
        defer { watcher?.stop() }
        try options.call("POST", "/v1/vms/\(pathComponent(vm.name))/migrate", body: body, as: MigrateResult.self,
                         timeoutSeconds: migrationCommandTimeout) { r in
            print("\(r.name): migrated from \(r.sourceHost) to \(r.address) [\(r.state.rawValue)]")
            print("  \(r.rounds.count) rounds, \(mebibytes(r.totalBytes)) MiB in \(oneDecimal(r.totalMilliseconds)) ms, downtime \(oneDecimal(r.downtimeMilliseconds)) ms")
            for (i, round) in r.rounds.enumerated() {
                print("  round \(i): \(round.pages) pages, \(mebibytes(round.bytes)) MiB, \(oneDecimal(round.milliseconds)) ms")
            }
        }
    }
}

/// Polls `GET /v1/vms/NAME/migration` while `migrate` waits, and prints each new round on stderr.
final class MigrationWatcher: @unchecked Sendable {
    private let client: UnixHTTPClient
    private let target: String
    private let stopped = Mutex(false)

    init(socket: String, vm: String) {
        client = UnixHTTPClient(socketPath: socket, timeoutSeconds: 5)
        target = "/v1/vms/\(pathComponent(vm))/migration"
    }

    func start() {
        let thread = try? PosixThread(name: "progress") { [self] in
            var lastRound = -1
            while !stopped.withLock({ $0 }) {
                usleep(300_000)
                guard let r = try? client.request("GET", target), r.status == 200,
                      let s = try? JSONDecoder().decode(MigrationStatus.self, from: Data(r.body)),
                      let round = s.round, round != lastRound, !stopped.withLock({ $0 }) else { continue }
                lastRound = round
                writeErr("  round \(round): \(s.dirtyPages ?? 0) pages dirty, \(oneDecimal(s.mebibytesPerSecond ?? 0)) MiB/s, "
                         + "expected downtime \(oneDecimal(s.expectedDowntimeMilliseconds ?? 0)) ms, \(mebibytes(s.bytesSent ?? 0)) MiB sent, "
                         + "\(oneDecimal((s.elapsedMilliseconds ?? 0) / 1000)) s\n")
            }
        }
        thread?.detach()
    }

    func stop() { stopped.withLock { $0 = true } }
}

struct Upgrade: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Move a running VM to the rtvisor-vmm installed now, on this host, without stopping its guest.",
        discussion: """
            The way to update rtvisor without stopping guests: install the new binaries, then upgrade each running VM.             Guest RAM and the taps are handed to the new VMM as file descriptors (nothing is copied); the guest pauses             only while its state moves. Real-time VMs and VMs with passthrough devices are refused. On failure the VM             runs on under its old VMM. docs/migration.md.
            """)
    @OptionGroup var options: CommonOptions
    @OptionGroup var vm: NameArgument

    func run() throws { try Self.upgrade(vm.name, options) }

    static func upgrade(_ name: String, _ options: CommonOptions) throws {
        try options.call("POST", "/v1/vms/\(pathComponent(name))/upgrade", body: [], as: UpgradeResult.self,
                         timeoutSeconds: migrationCommandTimeout) { r in
            print("\(r.name): now under \(r.vmm), PID \(r.oldPID) → \(r.newPID) [\(r.state.rawValue)]")
            let memory = r.memoryHandedOver ? "memory handed over" : "memory copied (\(mebibytes(r.totalBytes)) MiB)"
            print("  \(memory), \(oneDecimal(r.totalMilliseconds)) ms in all, downtime \(oneDecimal(r.downtimeMilliseconds)) ms")
        }
    }
}

struct MigrateReceive: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate-receive",
        abstract: "Listen for one VM sent by another rtvisord's migrate; it is installed as a defined VM and runs here.",
        discussion: """
            Returns once listening (with the migration's id); --wait waits until the VM runs here or the migration failed. \
            Disk paths must resolve here: shared storage, or --disk-map OLD=NEW. docs/migration.md.
            """)
    @OptionGroup var options: CommonOptions
    @Option(help: "Where to listen: unix:PATH or tcp:HOST:PORT (tcp:0.0.0.0:PORT for every address).")
    var listen: String
    @Option(help: "Install the VM under this name instead of the source's.")
    var name: String?
    @Option(name: .customLong("disk-map"), help: "A disk path of the source (OLD) and its path here (NEW); repeatable.")
    var diskMap: [String] = []
    @Option(name: .customLong("timeout"), help: "Seconds to wait for the source to connect.")
    var timeout: Int?
    @Flag(help: "Wait until the VM runs here, or the migration failed (exit status 1).")
    var wait = false

    func diskPairs() throws -> [String: String] {
        var map: [String: String] = [:]
        for pair in diskMap {
            let parts = pair.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else { throw ValidationError("--disk-map takes OLD=NEW, got \"\(pair)\"") }
            map[absolutePath(parts[0])] = absolutePath(parts[1])
        }
        return map
    }

    func validate() throws {
        _ = try diskPairs()
        if let timeout, !IncomingRequest.timeoutRange.contains(timeout) { throw ValidationError("--timeout must be 1–86400") }
    }

    func run() throws {
        let map = try diskPairs()
        let body = try jsonBody(IncomingRequest(listen: listen, name: name, diskMap: map.isEmpty ? nil : map, timeoutSeconds: timeout))
        let (started, text) = try options.fetch("POST", "/v1/migrations/incoming", body: body, as: IncomingMigration.self)
        if !wait {
            if options.json { print(text, terminator: text.hasSuffix("\n") ? "" : "\n") }
            else { print("incoming migration \(started.id): listening on \(started.listen)\(started.name.map { " (as \($0))" } ?? "")") }
            return
        }
        if !options.json { print("incoming migration \(started.id): listening on \(started.listen)") }
        // Polling, like shutdown-guests: a migration may take longer than one request should be held.
        var last = started
        var lastText = text
        while last.phase == .listening || last.phase == .receiving {
            usleep(200_000)
            (last, lastText) = try options.fetch("GET", "/v1/migrations/incoming/\(pathComponent(started.id))", as: IncomingMigration.self)
        }
        if options.json { print(lastText, terminator: lastText.hasSuffix("\n") ? "" : "\n") }
        if last.phase == .running {
            if !options.json { print("\(last.name ?? "?"): migrated in from \(last.sourceHost ?? "?"), PID \(last.pid.map(String.init) ?? "?") [running]") }
            return
        }
        writeErr("rtvisorctl: incoming migration \(started.id) failed: \(last.error ?? "unknown reason")\n")
        throw ExitCode(1)
    }
}
