// The snapshot, restore and clone shapes of the control API (docs/api.yaml, docs/snapshot.md).
// snake_case on the wire, like the rest of APIModels.

/// `POST /v1/vms/{name}/snapshot`.
public struct SnapshotOptions: Codable, Sendable, Equatable {
    /// Where to write the snapshot: a directory that does not exist yet, in one that does
    /// (default: /var/lib/rtvisor/snapshots/NAME/<UTC timestamp>).
    public var to: String?
    /// Stop the VM once it is saved (the VMM exits with status 8; the VM is shown stopped and
    /// is not restarted).
    public var stop: Bool?
    public init(to: String? = nil, stop: Bool? = nil) { self.to = to; self.stop = stop }
}

/// One snapshot directory as `GET /v1/snapshots` lists it: what its state file's header says,
/// and what it takes on disk. A directory whose state file cannot be read has `error` and no
/// header fields.
public struct SnapshotInfo: Codable, Sendable, Equatable {
    public var directory: String
    public var vm: String?
    /// Seconds since the epoch.
    public var createdAt: Double?
    public var vcpus: Int?
    public var memoryMiB: Int?
    /// A digest of the VM definition as it was saved (equal digests: the same definition).
    public var definitionDigest: String?
    public var rtvisorVersion: String?
    public var formatVersion: Int?
    /// Bytes the files take on disk (allocated blocks: the memory file is sparse).
    public var bytesOnDisk: UInt64
    /// The files' sizes added up (what a copy without holes would take).
    public var apparentBytes: UInt64
    /// Why the directory is not a usable snapshot (unreadable or corrupt state file, a file missing).
    public var error: String?

    public init(directory: String, vm: String? = nil, createdAt: Double? = nil, vcpus: Int? = nil, memoryMiB: Int? = nil,
                definitionDigest: String? = nil, rtvisorVersion: String? = nil, formatVersion: Int? = nil,
                bytesOnDisk: UInt64 = 0, apparentBytes: UInt64 = 0, error: String? = nil) {
        self.directory = directory; self.vm = vm; self.createdAt = createdAt; self.vcpus = vcpus; self.memoryMiB = memoryMiB
        self.definitionDigest = definitionDigest; self.rtvisorVersion = rtvisorVersion; self.formatVersion = formatVersion
        self.bytesOnDisk = bytesOnDisk; self.apparentBytes = apparentBytes; self.error = error
    }

    enum CodingKeys: String, CodingKey {
        case directory, vm, vcpus, error
        case createdAt = "created_at", memoryMiB = "memory_mib", definitionDigest = "definition_digest"
        case rtvisorVersion = "rtvisor_version", formatVersion = "format_version"
        case bytesOnDisk = "bytes_on_disk", apparentBytes = "apparent_bytes"
    }
}

/// `GET /v1/snapshots[?vm=NAME]`: the snapshots under the daemon's snapshot directory, oldest first.
public struct SnapshotList: Codable, Sendable, Equatable {
    /// Where they were looked for (/var/lib/rtvisor/snapshots).
    public var root: String
    public var snapshots: [SnapshotInfo]
    public init(root: String, snapshots: [SnapshotInfo]) { self.root = root; self.snapshots = snapshots }
}

/// The answer to a snapshot: where it is and what the VMM saved.
public struct SnapshotResult: Codable, Sendable, Equatable {
    public var name: String
    public var snapshot: SnapshotInfo
    /// The state file's bytes.
    public var stateBytes: Int
    /// Guest memory bytes written (the rest of the memory file is holes: pages that were zero).
    public var memoryDataBytes: UInt64
    /// How long the vCPUs were stopped for it.
    public var pausedMilliseconds: Double
    /// The VM's state after it: running, or stopped (`stop`).
    public var state: VMStateName

    public init(name: String, snapshot: SnapshotInfo, stateBytes: Int, memoryDataBytes: UInt64, pausedMilliseconds: Double, state: VMStateName) {
        self.name = name; self.snapshot = snapshot; self.stateBytes = stateBytes; self.memoryDataBytes = memoryDataBytes
        self.pausedMilliseconds = pausedMilliseconds; self.state = state
    }

    enum CodingKeys: String, CodingKey {
        case name, snapshot, state
        case stateBytes = "state_bytes", memoryDataBytes = "memory_data_bytes", pausedMilliseconds = "paused_ms"
    }
}

/// `POST /v1/snapshots/restore`.
public struct RestoreRequest: Codable, Sendable, Equatable {
    /// The snapshot directory (absolute).
    public var directory: String
    /// The name of the restored VM (default: the snapshot's).
    public var name: String?
    public init(directory: String, name: String? = nil) { self.directory = directory; self.name = name }
}

/// A VM running from a snapshot: restored (`POST /v1/snapshots/restore`) or cloned.
public struct RestoredVM: Codable, Sendable, Equatable {
    public var name: String
    public var pid: Int32
    /// The definition installed for it in the definitions directory (its next start boots it).
    public var definitionFile: String
    /// The snapshot it resumed.
    public var directory: String
    public var message: String

    public init(name: String, pid: Int32, definitionFile: String, directory: String, message: String) {
        self.name = name; self.pid = pid; self.definitionFile = definitionFile; self.directory = directory; self.message = message
    }

    enum CodingKeys: String, CodingKey { case name, pid, directory, message, definitionFile = "definition_file" }
}

/// `POST /v1/vms/{name}/clone`.
public struct CloneRequest: Codable, Sendable, Equatable {
    /// How many clones (1…64).
    public var count: Int
    /// Clone i is named PREFIX + i (default: NAME-clone).
    public var prefix: String?
    /// Clone this snapshot directory instead of snapshotting the running VM first.
    public var from: String?
    public init(count: Int, prefix: String? = nil, from: String? = nil) { self.count = count; self.prefix = prefix; self.from = from }

    public static let countRange = 1...64
}

/// How a clone got one of its origin's disks.
public enum CloneDiskMode: String, Codable, Sendable, Equatable {
    /// FICLONE: the copy shares the origin's extents until either writes (copy on write).
    case reflink
    /// A full copy of the data (holes stay holes): the file system cannot reflink.
    case copy
    /// A read-only disk: the clone uses the origin's file.
    case shared
}

public struct CloneDisk: Codable, Sendable, Equatable {
    /// The origin's disk.
    public var source: String
    /// The clone's disk (the same path when shared).
    public var path: String
    public var mode: CloneDiskMode
    public init(source: String, path: String, mode: CloneDiskMode) { self.source = source; self.path = path; self.mode = mode }
}

public struct CloneNet: Codable, Sendable, Equatable {
    public var tap: String
    /// aa:bb:cc:dd:ee:ff
    public var mac: String
    public init(tap: String, mac: String) { self.tap = tap; self.mac = mac }
}

public struct ClonedVM: Codable, Sendable, Equatable {
    public var vm: RestoredVM
    public var disks: [CloneDisk]
    public var nets: [CloneNet]
    public init(vm: RestoredVM, disks: [CloneDisk], nets: [CloneNet]) { self.vm = vm; self.disks = disks; self.nets = nets }
}

public struct CloneResult: Codable, Sendable, Equatable {
    public var origin: String
    /// The snapshot the clones resumed (taken for them unless `from` named one); their memory is
    /// its memory file, mapped copy-on-write, so it must stay while they run.
    public var snapshot: String
    public var clones: [ClonedVM]
    public init(origin: String, snapshot: String, clones: [ClonedVM]) { self.origin = origin; self.snapshot = snapshot; self.clones = clones }
}
