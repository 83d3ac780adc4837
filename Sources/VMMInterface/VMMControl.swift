#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The per-VM control channel from rtvisord to its rtvisor-vmm: the typed, versioned requests
/// that snapshot/restore, migration and statistics (issues 18–20) add to. Frames are
/// `ControlFrame`s carrying JSON; the first request on a connection is `hello`, which settles the
/// protocol version both ends speak, so a daemon and a VMM of different releases (a VMM that
/// outlived a daemon upgrade) either agree on a version or refuse clearly.
public enum VMMControl {
    /// The versions this build speaks, oldest first. A change that an older peer would
    /// misunderstand adds a version; a request a version lacks is refused by `Request.minimumVersion`.
    public static let versions: ClosedRange<Int> = 1...7

    /// The highest version in both ranges, or nil: no common version.
    public static func negotiate(_ ours: ClosedRange<Int>, _ theirs: ClosedRange<Int>) -> Int? {
        let high = min(ours.upperBound, theirs.upperBound)
        return high >= max(ours.lowerBound, theirs.lowerBound) ? high : nil
    }

    public enum Request: Codable, Sendable, Equatable {
        /// The daemon's versions; answered by `Reply.hello`.
        case hello(minVersion: Int, maxVersion: Int)
        /// What the VMM runs (`Reply.description`).
        case describe
        /// Stop the vCPUs (after their current exit) and the devices' I/O; answered by `Reply.runState`.
        case pause
        case resume
        /// Save the VM (docs/snapshot.md) into the two files passed with this frame (SCM_RIGHTS:
        /// the state file, then the memory file; both empty, opened for writing by the daemon:
        /// the jailed VMM opens no path). The VM is paused for it, then `then` decides.
        case snapshot(SnapshotRequest)
        /// Move the VM live to the VMM at the other end of the stream socket passed with this
        /// frame (docs/migration.md); answered when the target runs it or the move failed.
        case migrate(MigrationRequest)
        /// The VMM's counters (`Reply.statistics`): exits per vCPU, disk and NIC traffic. Read
        /// from atomics and the devices' counters: it neither pauses nor slows the guest.
        case statistics
        /// The end of the console's backlog, at most `maxBytes` (`Reply.consoleTail`): what the
        /// guest printed last, for the dashboard; the console's clients are not disturbed.
        case consoleTail(maxBytes: Int)
        /// The descriptors rtvisord passed for channel `name` (its memory, then every doorbell),
        /// passed back with `Reply.channelDescriptors`: a restarted rtvisord takes the channel
        /// back from a running peer instead of making another.
        case channelDescriptors(name: String)

        /// The first version that has this request.
        public var minimumVersion: Int {
            switch self {
            case .hello, .describe: 1
            case .pause, .resume, .snapshot: 2
            case .migrate: 3
            case .statistics: 5
            case .consoleTail: 6
            case .channelDescriptors: 7
            }
        }

        /// How many descriptors travel with the request's frame.
        public var passedFiles: Int {
            switch self {
            case .snapshot: return 2
            case .migrate: return 1
            default: return 0
            }
        }
    }

    public enum Reply: Codable, Sendable, Equatable {
        /// The version chosen, and the VMM's own build.
        case hello(version: Int, vmmVersion: String)
        case description(VMMDescription)
        case runState(VMMRunState)
        case snapshotSaved(SnapshotSummary)
        case migrated(MigrationReport)
        /// The request was not carried out; the reason names what was wrong.
        case refused(String)
        /// How a migration goes, after each round: interim replies to `migrate` (version 4), the
        /// final reply follows.
        case migrationProgress(MigrationProgress)
        /// The answer to `statistics` (version 5).
        case statistics(VMMStatistics)
        /// The answer to `consoleTail` (version 6): raw console bytes, oldest first.
        case consoleTail([UInt8])
        /// The answer to `channelDescriptors` (version 7): `count` descriptors ride along.
        case channelDescriptors(count: Int)

        /// An interim reply: more replies to the same request follow.
        public var isInterim: Bool { if case .migrationProgress = self { true } else { false } }
    }

    /// The VMM's answer to `hello` (a pure function, so both ends and the tests agree).
    public static func answerHello(minVersion: Int, maxVersion: Int, vmmVersion: String) -> Reply {
        guard minVersion <= maxVersion else { return .refused("hello: empty version range \(minVersion)…\(maxVersion)") }
        guard let v = negotiate(versions, minVersion...maxVersion) else {
            return .refused("hello: this VMM speaks control protocol \(versions.lowerBound)…\(versions.upperBound), the daemon \(minVersion)…\(maxVersion)")
        }
        return .hello(version: v, vmmVersion: vmmVersion)
    }

    /// A request as JSON, framed with its id.
    public static func frame(_ request: Request, id: UInt64) throws -> [UInt8] {
        ControlFrame.encode(id: id, payload: Array(try JSONEncoder().encode(request)))
    }

    public static func frame(_ reply: Reply, id: UInt64) throws -> [UInt8] {
        ControlFrame.encode(id: id, payload: Array(try JSONEncoder().encode(reply)))
    }

    /// A frame body (after the length) as a request; a body that is not one throws `ProtocolError`.
    public static func request(from body: [UInt8]) throws(ControlFrame.ProtocolError) -> (id: UInt64, request: Request) {
        let (id, payload) = try ControlFrame.decode(body)
        do { return (id, try JSONDecoder().decode(Request.self, from: Data(payload))) } catch {
            throw ControlFrame.ProtocolError(description: "request \(id) is not a VMM control request: \(error)")
        }
    }

    public static func reply(from body: [UInt8]) throws(ControlFrame.ProtocolError) -> (id: UInt64, reply: Reply) {
        let (id, payload) = try ControlFrame.decode(body)
        do { return (id, try JSONDecoder().decode(Reply.self, from: Data(payload))) } catch {
            throw ControlFrame.ProtocolError(description: "reply \(id) is not a VMM control reply: \(error)")
        }
    }
}

/// What a VMM runs, as it reports it over the control channel.
public struct VMMDescription: Codable, Sendable, Equatable {
    public var vm: String
    public var pid: Int32
    public var vcpus: Int
    public var memoryMiB: Int
    /// Whether the VMM holds the guest paused (a migration of unknown outcome); nil from older VMMs.
    public var runState: VMMRunState?
    public init(vm: String, pid: Int32, vcpus: Int, memoryMiB: Int, runState: VMMRunState? = nil) {
        self.vm = vm; self.pid = pid; self.vcpus = vcpus; self.memoryMiB = memoryMiB; self.runState = runState
    }
}

public enum VMMRunState: String, Codable, Sendable, Equatable {
    case running, paused
}

public struct SnapshotRequest: Codable, Sendable, Equatable {
    public enum After: String, Codable, Sendable, Equatable {
        /// The VM goes on where it was (the default).
        case resume
        /// The VMM ends with `VMMExitStatus.savedAndStopped`.
        case stop
        /// The VM stays paused (a `resume` request continues it).
        case stayPaused
    }
    public var then: After
    /// The definition as the daemon has it (JSON), for the header's digest.
    public var definitionJSON: [UInt8]
    public init(then: After = .resume, definitionJSON: [UInt8]) { self.then = then; self.definitionJSON = definitionJSON }
}

public struct SnapshotSummary: Codable, Sendable, Equatable {
    public var header: SnapshotHeader
    public var stateBytes: Int
    /// Guest memory bytes written (the rest of the memory file is holes: pages that were zero).
    public var memoryDataBytes: UInt64
    /// How long the vCPUs were stopped for it.
    public var pausedMilliseconds: Double
    public init(header: SnapshotHeader, stateBytes: Int, memoryDataBytes: UInt64, pausedMilliseconds: Double) {
        self.header = header; self.stateBytes = stateBytes; self.memoryDataBytes = memoryDataBytes; self.pausedMilliseconds = pausedMilliseconds
    }
}

public struct MigrationRequest: Codable, Sendable, Equatable {
    /// The longest the guest may be paused for the last round (the estimate that ends pre-copy).
    public var downtimeMilliseconds: Int
    /// Pre-copy rounds at most; then the last round goes whatever its size (`force`) or the
    /// migration is given up and the VM keeps running here.
    public var maxRounds: Int
    public var force: Bool
    /// The definition as the daemon has it (JSON); it travels to the target.
    public var definitionJSON: [UInt8]
    /// A same-host upgrade: guest RAM (when it is memfd-backed) and the taps are passed to the
    /// target as descriptors over the Unix stream socket, nothing copied (absent: false).
    public var handover: Bool?
    /// Give up (the VM runs on here) if the last round has not begun within this many seconds.
    public var timeoutSeconds: Int?
    /// Pages are sent at this rate at most (MiB/s; nil: as fast as the stream takes them).
    public var maxBandwidthMiBps: Int?
    public init(downtimeMilliseconds: Int = 300, maxRounds: Int = 30, force: Bool = true, definitionJSON: [UInt8], handover: Bool = false,
                timeoutSeconds: Int? = nil, maxBandwidthMiBps: Int? = nil) {
        self.maxBandwidthMiBps = maxBandwidthMiBps
        self.downtimeMilliseconds = downtimeMilliseconds; self.maxRounds = maxRounds; self.force = force; self.definitionJSON = definitionJSON
        self.handover = handover ? true : nil
        self.timeoutSeconds = timeoutSeconds
    }
}

/// A migration under way, after a round of pages (`Reply.migrationProgress`).
public struct MigrationProgress: Codable, Sendable, Equatable {
    /// Rounds sent so far (round 0 is the first full pass).
    public var round: Int
    /// Pages written since the last round was collected: the next round's size.
    public var dirtyPages: Int
    public var bytesSent: UInt64
    /// Of the last round, MiB/s.
    public var mebibytesPerSecond: Double
    /// The pause the dirty pages would take to send at that rate.
    public var expectedDowntimeMilliseconds: Double
    public var elapsedMilliseconds: Double
    public init(round: Int, dirtyPages: Int, bytesSent: UInt64, mebibytesPerSecond: Double, expectedDowntimeMilliseconds: Double,
                elapsedMilliseconds: Double) {
        self.round = round; self.dirtyPages = dirtyPages; self.bytesSent = bytesSent; self.mebibytesPerSecond = mebibytesPerSecond
        self.expectedDowntimeMilliseconds = expectedDowntimeMilliseconds; self.elapsedMilliseconds = elapsedMilliseconds
    }
}

public struct MigrationReport: Codable, Sendable, Equatable {
    public struct Round: Codable, Sendable, Equatable {
        public var pages: Int
        public var bytes: UInt64
        public var milliseconds: Double
        public init(pages: Int, bytes: UInt64, milliseconds: Double) { self.pages = pages; self.bytes = bytes; self.milliseconds = milliseconds }
    }
    public var rounds: [Round]
    /// Guest RAM went over as descriptors (a same-host upgrade): no rounds of pages.
    public var memoryHandedOver: Bool?
    public var totalBytes: UInt64
    public var totalMilliseconds: Double
    /// From the pause to the target's `running`.
    public var downtimeMilliseconds: Double
    public init(rounds: [Round], memoryHandedOver: Bool = false, totalBytes: UInt64, totalMilliseconds: Double, downtimeMilliseconds: Double) {
        self.rounds = rounds; self.memoryHandedOver = memoryHandedOver ? true : nil; self.totalBytes = totalBytes; self.totalMilliseconds = totalMilliseconds; self.downtimeMilliseconds = downtimeMilliseconds
    }
}
