import CDaemonSupport
import Foundation
import Posix
import SystemPackage
import VMMInterface

/// rtvisord's end of a VM's control socket (`VMMControl`, served by every VMM it starts with
/// `--control-socket`). Blocking, with timeouts on every read and write so a VMM that stops
/// answering gives an error instead of a stuck call: run it off the cooperative pool
/// (`Processes.offThePool`).
public struct VMMControlClient {
    public struct ClientError: Error, CustomStringConvertible {
        public let description: String
    }

    public let connection: VMMControlConnection
    public let socketPath: String
    /// The control protocol version agreed by `hello` (0 before it).
    public var version = 0

    /// Connects and says hello. `timeoutSeconds` bounds each read and write from here on.
    public static func connect(_ socketPath: String, timeoutSeconds: Int) throws(ClientError) -> VMMControlClient {
        let fd = cdaemon_connect_unix(socketPath)
        guard fd >= 0 else {
            let e = errno
            let hint = e == ENOENT ? " (a VMM started before rtvisor served control sockets has none: restart the VM once)" : ""
            throw ClientError(description: "cannot connect to the VMM's control socket \(socketPath): \(errnoMessage(e))\(hint)")
        }
        var client = VMMControlClient(connection: VMMControlConnection(socket: FileDescriptor(rawValue: fd)), socketPath: socketPath)
        client.setTimeout(seconds: timeoutSeconds)
        do { client.version = try client.connection.hello() } catch { throw client.failure("hello", error) }
        return client
    }

    public func setTimeout(seconds: Int) {
        var tv = timeval(tv_sec: seconds, tv_usec: 0)
        for option in [SO_RCVTIMEO, SO_SNDTIMEO] {
            setsockopt(connection.socket.rawValue, SOL_SOCKET, option, &tv, socklen_t(MemoryLayout<timeval>.size))
        }
    }

    func failure(_ what: String, _ error: any Error) -> ClientError {
        if let e = error as? Errno, e == .resourceTemporarilyUnavailable {
            return ClientError(description: "the VMM did not answer \(what) on \(socketPath) in time")
        }
        return ClientError(description: "\(what) on \(socketPath): \(error)")
    }

    /// Saves the VM into `state` and `memory` (passed to the VMM with the request).
    public func snapshot(_ request: SnapshotRequest, state: FileDescriptor, memory: FileDescriptor) throws(ClientError) -> SnapshotSummary {
        let reply: VMMControl.Reply
        do { reply = try connection.call(.snapshot(request), files: [state, memory]) } catch { throw failure("snapshot", error) }
        switch reply {
        case let .snapshotSaved(summary): return summary
        case let .refused(reason): throw ClientError(description: reason)
        default: throw ClientError(description: "unexpected reply to snapshot: \(reply)")
        }
    }

    /// How a `migrate` request ended.
    public enum MigrationOutcome: Sendable {
        /// The target runs the VM; this VMM ends with status `migrated`.
        case moved(MigrationReport)
        /// Not moved; the VM runs here as before.
        case refused(String)
        /// The target may or may not run the VM: this VMM keeps it paused (docs/migration.md).
        case unknown(String)
    }

    /// Moves the VM over `stream` (a connected socket, passed to the VMM with the request).
    public func describe() throws(ClientError) -> VMMDescription {
        let reply: VMMControl.Reply
        do { reply = try connection.call(.describe) } catch { throw failure("describe", error) }
        guard case let .description(d) = reply else { throw ClientError(description: "unexpected reply to describe: \(reply)") }
        return d
    }

    /// `progress` hears of each pre-copy round (VMMs of control protocol 4).
    public func migrate(_ request: MigrationRequest, stream: FileDescriptor,
                        progress: ((MigrationProgress) -> Void)? = nil) throws(ClientError) -> MigrationOutcome {
        let reply: VMMControl.Reply
        do {
            reply = try connection.call(.migrate(request), files: [stream]) { interim in
                if case let .migrationProgress(p) = interim { progress?(p) }
            }
        } catch { throw failure("migrate", error) }
        switch reply {
        case let .migrated(report): return .moved(report)
        // The VMM's wording for "go was sent, running did not come back" (Machine.migrate).
        case let .refused(reason) where reason.contains("it may"): return .unknown(reason)
        case let .refused(reason): return .refused(reason)
        default: throw ClientError(description: "unexpected reply to migrate: \(reply)")
        }
    }

    /// The VMM's counters; nil from a VMM older than control protocol 5, which has none to give.
    public func statistics() throws(ClientError) -> VMMStatistics? {
        guard version >= VMMControl.Request.statistics.minimumVersion else { return nil }
        let reply: VMMControl.Reply
        do { reply = try connection.call(.statistics) } catch { throw failure("statistics", error) }
        switch reply {
        case let .statistics(s): return s
        case let .refused(reason): throw ClientError(description: "statistics refused: \(reason)")
        default: throw ClientError(description: "unexpected reply to statistics: \(reply)")
        }
    }

    /// Channel `name`'s descriptors as the VMM holds them (memory, then doorbells), owned by the
    /// caller; nil from a VMM older than version 7.
    public func channelDescriptors(_ name: String) throws(ClientError) -> [FileDescriptor]? {
        guard version >= VMMControl.Request.channelDescriptors(name: name).minimumVersion else { return nil }
        let reply: VMMControl.Reply, files: [FileDescriptor]
        do { (reply, files) = try connection.exchange(.channelDescriptors(name: name)) } catch { throw failure("channelDescriptors", error) }
        switch reply {
        case let .channelDescriptors(count) where count == files.count: return files
        default:
            for f in files { try? f.close() }
            if case let .refused(reason) = reply { throw ClientError(description: "channelDescriptors refused: \(reason)") }
            throw ClientError(description: "unexpected reply to channelDescriptors (\(files.count) descriptors): \(reply)")
        }
    }

    /// The last `maxBytes` of the console's backlog; nil from a VMM older than version 6.
    public func consoleTail(maxBytes: Int) throws(ClientError) -> [UInt8]? {
        guard version >= VMMControl.Request.consoleTail(maxBytes: 0).minimumVersion else { return nil }
        let reply: VMMControl.Reply
        do { reply = try connection.call(.consoleTail(maxBytes: maxBytes)) } catch { throw failure("consoleTail", error) }
        switch reply {
        case let .consoleTail(bytes): return bytes
        case let .refused(reason): throw ClientError(description: "consoleTail refused: \(reason)")
        default: throw ClientError(description: "unexpected reply to consoleTail: \(reply)")
        }
    }

    public func resume() throws(ClientError) {
        let reply: VMMControl.Reply
        do { reply = try connection.call(.resume) } catch { throw failure("resume", error) }
        switch reply {
        case .runState(.running): return
        case let .refused(reason): throw ClientError(description: "resume refused: \(reason)")
        default: throw ClientError(description: "unexpected reply to resume: \(reply)")
        }
    }

    /// Waits until a VMM just started answers on its control socket, which it does once its
    /// machine is built (for a restore: the snapshot is in place) and it runs. nil then; else why
    /// not: it ended first (`alive` said so, or the socket closed), or the time ran out.
    public static func waitUntilServing(_ socketPath: String, timeoutSeconds: Double, alive: () -> Bool) -> String? {
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        while Date() < deadline {
            guard alive() else { return "the VMM ended before it served its control socket" }
            let fd = cdaemon_connect_unix(socketPath)
            guard fd >= 0 else {
                // Not listening yet (ENOENT) or a stale file (ECONNREFUSED): the VMM is still starting.
                usleep(5_000)
                continue
            }
            let client = VMMControlClient(connection: VMMControlConnection(socket: FileDescriptor(rawValue: fd)), socketPath: socketPath)
            // The VMM answers once its machine is built; until then hello waits in the socket.
            client.setTimeout(seconds: max(1, Int(deadline.timeIntervalSinceNow.rounded(.up))))
            do { _ = try client.connection.hello(); return nil } catch {
                return alive() ? client.failure("hello", error).description : "the VMM ended before it served its control socket"
            }
        }
        return "the VMM did not answer on \(socketPath) within \(Int(timeoutSeconds)) s"
    }
}
