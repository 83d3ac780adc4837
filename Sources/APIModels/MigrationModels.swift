// The live-migration shapes of the control API (docs/api.yaml, docs/migration.md "With rtvisord").
// snake_case on the wire, like the rest of APIModels.

/// `POST /v1/vms/{name}/migrate`: move the running VM to the rtvisord (or rtvisor-vmm) that
/// listens at `address`.
public struct MigrateRequest: Codable, Sendable, Equatable {
    /// `unix:PATH` or `tcp:HOST:PORT` (`tcp:[v6]:PORT`): where the target listens.
    public var address: String
    /// The longest the guest may be paused for the last round (default 300).
    public var downtimeMilliseconds: Int?
    /// Pre-copy rounds at most (default 30); then the last round goes whatever its size, unless
    /// `force` is false: then the migration is given up and the VM keeps running here.
    public var maxRounds: Int?
    public var force: Bool?
    /// Give up (the VM runs on here) if the last round has not begun within this many seconds.
    public var timeoutSeconds: Int?
    /// Send pages at this rate at most (MiB/s; default: as fast as the link takes them).
    public var maxBandwidthMiBps: Int?

    public init(address: String, downtimeMilliseconds: Int? = nil, maxRounds: Int? = nil, force: Bool? = nil, timeoutSeconds: Int? = nil,
                maxBandwidthMiBps: Int? = nil) {
        self.address = address; self.downtimeMilliseconds = downtimeMilliseconds; self.maxRounds = maxRounds; self.force = force
        self.timeoutSeconds = timeoutSeconds; self.maxBandwidthMiBps = maxBandwidthMiBps
    }

    public static let downtimeRange = 1...60_000
    public static let roundsRange = 1...1000
    public static let timeoutRange = 1...86_400
    public static let bandwidthRange = 1...1_000_000

    enum CodingKeys: String, CodingKey {
        case address, force, downtimeMilliseconds = "downtime_ms", maxRounds = "max_rounds", timeoutSeconds = "timeout_s"
        case maxBandwidthMiBps = "max_bandwidth_mib_s"
    }
}

/// `GET /v1/vms/{name}/migration`: a migration under way, as its VMM last reported it.
public struct MigrationStatus: Codable, Sendable, Equatable {
    public var name: String
    public var address: String
    /// `connecting`, then `pre-copy` once the first round is reported.
    public var phase: String
    public var round: Int?
    public var dirtyPages: Int?
    public var bytesSent: UInt64?
    public var mebibytesPerSecond: Double?
    public var expectedDowntimeMilliseconds: Double?
    public var elapsedMilliseconds: Double?

    public init(name: String, address: String, phase: String) { self.name = name; self.address = address; self.phase = phase }

    enum CodingKeys: String, CodingKey {
        case name, address, phase, round
        case dirtyPages = "dirty_pages", bytesSent = "bytes_sent", mebibytesPerSecond = "mib_per_s"
        case expectedDowntimeMilliseconds = "expected_downtime_ms", elapsedMilliseconds = "elapsed_ms"
    }
}

/// One pre-copy round as the source VMM reported it.
public struct MigrationRound: Codable, Sendable, Equatable {
    public var pages: Int
    public var bytes: UInt64
    public var milliseconds: Double
    public init(pages: Int, bytes: UInt64, milliseconds: Double) { self.pages = pages; self.bytes = bytes; self.milliseconds = milliseconds }
    enum CodingKeys: String, CodingKey { case pages, bytes, milliseconds = "ms" }
}

/// The answer to a migration that moved the VM: it runs on the target, and is `migrated` here.
public struct MigrateResult: Codable, Sendable, Equatable {
    public var name: String
    /// This host's name.
    public var sourceHost: String
    public var address: String
    public var rounds: [MigrationRound]
    public var totalBytes: UInt64
    public var totalMilliseconds: Double
    /// From the pause to the target's `running`.
    public var downtimeMilliseconds: Double
    /// The VM's state here afterwards: `migrated`.
    public var state: VMStateName

    public init(name: String, sourceHost: String, address: String, rounds: [MigrationRound], totalBytes: UInt64, totalMilliseconds: Double,
                downtimeMilliseconds: Double, state: VMStateName) {
        self.name = name; self.sourceHost = sourceHost; self.address = address; self.rounds = rounds; self.totalBytes = totalBytes
        self.totalMilliseconds = totalMilliseconds; self.downtimeMilliseconds = downtimeMilliseconds; self.state = state
    }

    enum CodingKeys: String, CodingKey {
        case name, address, rounds, state
        case sourceHost = "source_host", totalBytes = "total_bytes", totalMilliseconds = "total_ms", downtimeMilliseconds = "downtime_ms"
    }
}

/// `POST /v1/migrations/incoming`: listen for one VM sent by another host's `migrate`.
public struct IncomingRequest: Codable, Sendable, Equatable {
    /// `unix:PATH` or `tcp:HOST:PORT` to listen on (`tcp:0.0.0.0:PORT` for every address).
    public var listen: String
    /// Install the VM under this name instead of the source's.
    public var name: String?
    /// Disk paths of the source's definition (keys, absolute) and what they are on this host.
    public var diskMap: [String: String]?
    /// How long to wait for the source to connect (default 3600 s).
    public var timeoutSeconds: Int?

    public init(listen: String, name: String? = nil, diskMap: [String: String]? = nil, timeoutSeconds: Int? = nil) {
        self.listen = listen; self.name = name; self.diskMap = diskMap; self.timeoutSeconds = timeoutSeconds
    }

    public static let timeoutRange = 1...86_400

    enum CodingKeys: String, CodingKey { case listen, name, diskMap = "disk_map", timeoutSeconds = "timeout_s" }
}

/// Where an incoming migration is.
public enum IncomingPhase: String, Codable, Sendable, Equatable {
    /// Waiting for the source to connect.
    case listening
    /// The VM's VMM is taking it over (its memory is arriving).
    case receiving
    /// The VM runs here.
    case running
    /// Nothing runs here: refused, the stream broke, or the VMM gave up (`error` says why).
    case failed
}

/// `POST /v1/migrations/incoming` answers with it once listening; `GET
/// /v1/migrations/incoming/{id}` tells how it went.
public struct IncomingMigration: Codable, Sendable, Equatable {
    public var id: String
    public var listen: String
    public var phase: IncomingPhase
    /// The VM's name here, once known (`name` of the request, or the source's once its
    /// configuration arrived).
    public var name: String?
    public var sourceHost: String?
    public var pid: Int32?
    public var error: String?

    public init(id: String, listen: String, phase: IncomingPhase, name: String? = nil, sourceHost: String? = nil, pid: Int32? = nil,
                error: String? = nil) {
        self.id = id; self.listen = listen; self.phase = phase; self.name = name; self.sourceHost = sourceHost; self.pid = pid; self.error = error
    }

    enum CodingKeys: String, CodingKey { case id, listen, phase, name, pid, error, sourceHost = "source_host" }
}

public struct IncomingList: Codable, Sendable, Equatable {
    public var migrations: [IncomingMigration]
    public init(migrations: [IncomingMigration]) { self.migrations = migrations }
}

/// The answer to `POST /v1/vms/{name}/upgrade`: the VM runs on under a new rtvisor-vmm (the
/// binary installed now), its guest paused only for `downtime_ms`.
public struct UpgradeResult: Codable, Sendable, Equatable {
    public var name: String
    public var oldPID: Int32
    public var newPID: Int32
    /// The rtvisor-vmm binary the VM runs under now.
    public var vmm: String
    /// Guest RAM went over as descriptors (false: the pages were copied, a VM whose memory is a
    /// mapped snapshot file).
    public var memoryHandedOver: Bool
    public var totalBytes: UInt64
    public var totalMilliseconds: Double
    public var downtimeMilliseconds: Double
    public var state: VMStateName

    public init(name: String, oldPID: Int32, newPID: Int32, vmm: String, memoryHandedOver: Bool, totalBytes: UInt64,
                totalMilliseconds: Double, downtimeMilliseconds: Double, state: VMStateName) {
        self.name = name; self.oldPID = oldPID; self.newPID = newPID; self.vmm = vmm; self.memoryHandedOver = memoryHandedOver
        self.totalBytes = totalBytes; self.totalMilliseconds = totalMilliseconds; self.downtimeMilliseconds = downtimeMilliseconds; self.state = state
    }

    enum CodingKeys: String, CodingKey {
        case name, vmm, state
        case oldPID = "old_pid", newPID = "new_pid", memoryHandedOver = "memory_handed_over", totalBytes = "total_bytes"
        case totalMilliseconds = "total_ms", downtimeMilliseconds = "downtime_ms"
    }
}
