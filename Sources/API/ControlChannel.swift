import APIModels
import Daemon
import Dispatch
import Foundation
import Posix
import Synchronization
import VMMInterface
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// One `VMControl` call, as it crosses from the API front process (HTTP, routing and request
/// bodies, confined) to rtvisord (docs/sandbox.md). Names are validated again by the daemon
/// (the Supervisor looks them up); bodies arrive decoded into their types.
public enum ControlCall: Codable, Sendable, Equatable {
    case list, info, reload, shutdownGuests, startGuests
    case inspect(name: String), start(name: String), reboot(name: String), reset(name: String), pause(name: String), resume(name: String)
    case stop(name: String, force: Bool)
    case validate(ValidateRequest)
    case realtimeCheck(name: String?)
    case latency(name: String)
    case snapshot(name: String, options: SnapshotOptions)
    case snapshots(vm: String?)
    case restore(RestoreRequest)
    case clone(name: String, request: CloneRequest)
    case migrate(name: String, request: MigrateRequest)
    case upgrade(name: String)
    case migrationStatus(name: String)
    case receiveMigration(IncomingRequest)
    case incomingMigrations
    case incomingMigration(id: String)
    /// A long poll (`VMControl.events`): the front repeats it to follow the event stream.
    case events(after: UInt64?, vm: String?, waitSeconds: Int)
    case channels
    /// `VMControl.stats`: one VM's statistics, or every VM's (name nil).
    case stats(name: String?)
    /// `VMControl.consoleTail`: what a running VM's guest printed last.
    case consoleTail(name: String, lines: Int)
}

/// rtvisord's end: answers the front's calls with the real `VMControl` (the Supervisor). One
/// reader thread; each call runs as its own task, so a slow stop does not hold up a list.
public enum ControlServer {
    /// Calls of one front being answered at a time; the reader stops reading beyond that.
    public static let maxCallsInFlight = 32

    /// Serves `fd` until the front closes it (or sends a malformed frame: then the socket is shut
    /// down, which ends the front, and rtvisord starts a new one). Returns why it ended.
    public static func serve(_ fd: FileDescriptor, control: any VMControl) async -> String {
        let writer = ControlFrame.Writer(fd)
        let inFlight = DispatchSemaphore(value: maxCallsInFlight)
        return await withCheckedContinuation { (done: CheckedContinuation<String, Never>) in
            // PosixThread: its name reaches the kernel (ps, /proc, seccomp reports).
            let started = Result { try PosixThread(name: "api-control") {
                let reason: String
                do {
                    while let frame = try ControlFrame.read(from: fd) {
                        let (id, call) = try decodeCall(frame)
                        // A flood of calls waits in the socket, not as tasks in the daemon.
                        inFlight.wait()
                        // A front that died meanwhile gets nothing run on its behalf.
                        guard !writer.isBroken else { inFlight.signal(); break }
                        Task {
                            let frame = await reply(id: id, to: call, on: control)
                            // A blocking send, off the cooperative pool (a front that stops
                            // reading must not hold the daemon's few pool threads).
                            _ = await Processes.offThePool { writer.send(frame) }
                            inFlight.signal()
                        }
                    }
                    reason = writer.isBroken ? "the control socket broke (the front died or stopped reading)" : "the API front closed the control socket"
                } catch {
                    reason = "control socket: \(error)"
                    _ = shutdown(fd.rawValue, Int32(SHUT_RDWR))
                }
                // Every call answered (or its reply dropped) before the caller may close the
                // descriptor: a late send must not reach a reused descriptor number.
                for _ in 0..<maxCallsInFlight { inFlight.wait() }
                for _ in 0..<maxCallsInFlight { inFlight.signal() }
                done.resume(returning: reason)
            } }
            switch started {
            case let .success(thread): thread.detach()
            case let .failure(error): done.resume(returning: "\(error)")
            }
        }
    }

    /// A call frame's body (after the length) from the front, which rtvisord does not trust.
    public static func decodeCall(_ frame: [UInt8]) throws(ControlFrame.ProtocolError) -> (UInt64, ControlCall) {
        let (id, payload) = try ControlFrame.decode(frame)
        do { return (id, try JSONDecoder().decode(ControlCall.self, from: Data(payload))) } catch {
            throw ControlFrame.ProtocolError(description: "call \(id) is not a ControlCall: \(error)")
        }
    }

    /// The whole reply frame to one call; a result larger than a frame may carry is refused.
    public static func reply(id: UInt64, to call: ControlCall, on control: any VMControl) async -> [UInt8] {
        var (outcome, body) = await perform(call, on: control)
        if body.count > ControlFrame.maxLength - 9 {
            (outcome, body) = (.failed, Array("the result (\(body.count) bytes) is larger than the control socket's \(ControlFrame.maxLength)-byte frames".utf8))
        }
        return ControlFrame.encode(id: id, payload: [outcome.rawValue] + body)
    }

    /// Runs one call; the outcome byte and the JSON result or error message.
    public static func perform(_ call: ControlCall, on control: any VMControl) async -> (ControlFrame.Outcome, [UInt8]) {
        func encoded(_ value: some Encodable) -> (ControlFrame.Outcome, [UInt8]) {
            do { return (.result, Array(try ControlFrame.encoder.encode(value))) } catch {
                return (.failed, Array("cannot encode the result: \(error)".utf8))
            }
        }
        do {
            switch call {
            case .list: return encoded(try await control.list())
            case .info: return encoded(try await control.info())
            case .reload: return encoded(try await control.reload())
            case let .validate(request): return encoded(try await control.validate(request))
            case let .inspect(name): return encoded(try await control.inspect(name))
            case let .start(name): return encoded(try await control.start(name))
            case let .stop(name, force): return encoded(try await control.stop(name, force: force))
            case let .reboot(name): return encoded(try await control.reboot(name))
            case let .reset(name): return encoded(try await control.reset(name))
            case let .pause(name): return encoded(try await control.pause(name))
            case let .resume(name): return encoded(try await control.resume(name))
            case let .realtimeCheck(name): return encoded(try await control.realtimeCheck(name))
            case let .latency(name): return encoded(try await control.latency(name))
            case .shutdownGuests: return encoded(try await control.shutdownGuests())
            case .startGuests: return encoded(try await control.startGuests())
            case let .snapshot(name, options): return encoded(try await control.snapshot(name, options))
            case let .snapshots(vm): return encoded(try await control.snapshots(vm: vm))
            case let .restore(request): return encoded(try await control.restore(request))
            case let .clone(name, request): return encoded(try await control.clone(name, request))
            case let .migrate(name, request): return encoded(try await control.migrate(name, request))
            case let .upgrade(name): return encoded(try await control.upgrade(name))
            case let .migrationStatus(name): return encoded(try await control.migrationStatus(name))
            case let .receiveMigration(request): return encoded(try await control.receiveMigration(request))
            case .incomingMigrations: return encoded(try await control.incomingMigrations())
            case let .incomingMigration(id): return encoded(try await control.incomingMigration(id))
            case let .events(after, vm, wait): return encoded(try await control.events(after: after, vm: vm, waitSeconds: wait))
            case .channels: return encoded(try await control.channels())
            case let .stats(name): return encoded(try await control.stats(name))
            case let .consoleTail(name, lines): return encoded(try await control.consoleTail(name, lines: lines))
            }
        } catch {
            switch error {
            case let .notFound(m): return (.notFound, Array(m.utf8))
            case let .conflict(m): return (.conflict, Array(m.utf8))
            case let .failed(m): return (.failed, Array(m.utf8))
            case let .invalidDefinition(m, problems):
                let body = (try? ControlFrame.encoder.encode(APIErrorBody(error: m, code: .invalidDefinition, problems: problems))).map { Array($0) }
                return (.invalidDefinition, body ?? Array(m.utf8))
            }
        }
    }
}

/// The front's `VMControl`: every call goes to rtvisord over the control socket. When rtvisord
/// closes it, `onClose` runs (the front exits: it has nothing to serve without the daemon).
public final class RemoteVMControl: VMControl, Sendable {
    struct Pending: Sendable {
        var nextID: UInt64 = 1
        var waiting: [UInt64: CheckedContinuation<(ControlFrame.Outcome, [UInt8]), Never>] = [:]
        var closed: String?
    }
    final class PendingCalls: Sendable {
        let state = Mutex(Pending())
        func withLock<R>(_ body: (inout Pending) -> R) -> R { state.withLock { body(&$0) } }
    }
    let pending = PendingCalls()
    let writer: ControlFrame.Writer

    public init(fd: FileDescriptor, onClose: @escaping @Sendable (String) -> Void) {
        writer = ControlFrame.Writer(fd)
        let reader = { @Sendable [pending] in
            let reason: String
            do {
                while let frame = try ControlFrame.read(from: fd) {
                    let (id, payload) = try ControlFrame.decode(frame)
                    guard let first = payload.first, let outcome = ControlFrame.Outcome(rawValue: first) else {
                        throw ControlFrame.ProtocolError(description: "reply \(id) has no valid outcome byte")
                    }
                    let waiter = pending.withLock { $0.waiting.removeValue(forKey: id) }
                    waiter?.resume(returning: (outcome, Array(payload.dropFirst())))
                }
                reason = "rtvisord closed the control socket"
            } catch {
                reason = "control socket: \(error)"
            }
            let waiters = pending.withLock { p in
                p.closed = reason
                defer { p.waiting = [:] }
                return Array(p.waiting.values)
            }
            for w in waiters { w.resume(returning: (.failed, Array("rtvisord is not answering: \(reason)".utf8))) }
            onClose(reason)
        }
        do { try PosixThread(name: "api-control", reader).detach() } catch {
            pending.withLock { $0.closed = "\(error)" }
            onClose("\(error)")
        }
    }

    func call<T: Decodable>(_ call: ControlCall, as type: T.Type) async throws(ControlError) -> T {
        let payload: [UInt8]
        do { payload = Array(try ControlFrame.encoder.encode(call)) } catch { throw .failed("cannot encode \(call): \(error)") }
        let (outcome, body) = await withCheckedContinuation { (c: CheckedContinuation<(ControlFrame.Outcome, [UInt8]), Never>) in
            let id: UInt64? = pending.withLock { p in
                if p.closed != nil { return nil }
                let id = p.nextID
                p.nextID += 1
                p.waiting[id] = c
                return id
            }
            guard let id else { return c.resume(returning: (.failed, Array("rtvisord is not answering".utf8))) }
            let frame = ControlFrame.encode(id: id, payload: payload)
            if !writer.send(frame), let w = pending.withLock({ $0.waiting.removeValue(forKey: id) }) {
                w.resume(returning: (.failed, Array("cannot reach rtvisord over the control socket".utf8)))
            }
        }
        let message = String(decoding: body, as: UTF8.self)
        switch outcome {
        case .result:
            do { return try JSONDecoder().decode(T.self, from: Data(body)) } catch { throw .failed("rtvisord's reply to \(call) is not a \(T.self): \(error)") }
        case .notFound: throw .notFound(message)
        case .conflict: throw .conflict(message)
        case .failed: throw .failed(message)
        case .invalidDefinition:
            guard let e = try? JSONDecoder().decode(APIErrorBody.self, from: Data(body)) else { throw .conflict(message) }
            throw .invalidDefinition(e.error, e.problems ?? [])
        }
    }

    public func list() async throws(ControlError) -> VMList { try await call(.list, as: VMList.self) }
    public func info() async throws(ControlError) -> DaemonInfo { try await call(.info, as: DaemonInfo.self) }
    public func reload() async throws(ControlError) -> ReloadResult { try await call(.reload, as: ReloadResult.self) }
    public func validate(_ request: ValidateRequest) async throws(ControlError) -> ValidateResult { try await call(.validate(request), as: ValidateResult.self) }
    public func inspect(_ name: String) async throws(ControlError) -> VMDetail { try await call(.inspect(name: name), as: VMDetail.self) }
    public func start(_ name: String) async throws(ControlError) -> ActionResult { try await call(.start(name: name), as: ActionResult.self) }
    public func stop(_ name: String, force: Bool) async throws(ControlError) -> ActionResult { try await call(.stop(name: name, force: force), as: ActionResult.self) }
    public func reboot(_ name: String) async throws(ControlError) -> ActionResult { try await call(.reboot(name: name), as: ActionResult.self) }
    public func reset(_ name: String) async throws(ControlError) -> ActionResult { try await call(.reset(name: name), as: ActionResult.self) }
    public func pause(_ name: String) async throws(ControlError) -> ActionResult { try await call(.pause(name: name), as: ActionResult.self) }
    public func resume(_ name: String) async throws(ControlError) -> ActionResult { try await call(.resume(name: name), as: ActionResult.self) }
    public func realtimeCheck(_ name: String?) async throws(ControlError) -> [RealtimeCheck] { try await call(.realtimeCheck(name: name), as: [RealtimeCheck].self) }
    public func latency(_ name: String) async throws(ControlError) -> LatencySnapshot { try await call(.latency(name: name), as: LatencySnapshot.self) }
    public func shutdownGuests() async throws(ControlError) -> GuestsResult { try await call(.shutdownGuests, as: GuestsResult.self) }
    public func startGuests() async throws(ControlError) -> GuestsResult { try await call(.startGuests, as: GuestsResult.self) }
    public func snapshot(_ name: String, _ options: SnapshotOptions) async throws(ControlError) -> SnapshotResult {
        try await call(.snapshot(name: name, options: options), as: SnapshotResult.self)
    }
    public func snapshots(vm: String?) async throws(ControlError) -> SnapshotList { try await call(.snapshots(vm: vm), as: SnapshotList.self) }
    public func channels() async throws(ControlError) -> ChannelList { try await call(.channels, as: ChannelList.self) }
    public func restore(_ request: RestoreRequest) async throws(ControlError) -> RestoredVM { try await call(.restore(request), as: RestoredVM.self) }
    public func clone(_ name: String, _ request: CloneRequest) async throws(ControlError) -> CloneResult {
        try await call(.clone(name: name, request: request), as: CloneResult.self)
    }
    public func migrate(_ name: String, _ request: MigrateRequest) async throws(ControlError) -> MigrateResult {
        try await call(.migrate(name: name, request: request), as: MigrateResult.self)
    }
    public func upgrade(_ name: String) async throws(ControlError) -> UpgradeResult { try await call(.upgrade(name: name), as: UpgradeResult.self) }
    public func migrationStatus(_ name: String) async throws(ControlError) -> MigrationStatus {
        try await call(.migrationStatus(name: name), as: MigrationStatus.self)
    }
    public func receiveMigration(_ request: IncomingRequest) async throws(ControlError) -> IncomingMigration {
        try await call(.receiveMigration(request), as: IncomingMigration.self)
    }
    public func incomingMigrations() async throws(ControlError) -> IncomingList { try await call(.incomingMigrations, as: IncomingList.self) }
    public func incomingMigration(_ id: String) async throws(ControlError) -> IncomingMigration {
        try await call(.incomingMigration(id: id), as: IncomingMigration.self)
    }
    public func events(after: UInt64?, vm: String?, waitSeconds: Int) async throws(ControlError) -> EventBatch {
        try await call(.events(after: after, vm: vm, waitSeconds: waitSeconds), as: EventBatch.self)
    }
    public func stats(_ name: String?) async throws(ControlError) -> StatsList { try await call(.stats(name: name), as: StatsList.self) }
    public func consoleTail(_ name: String, lines: Int) async throws(ControlError) -> ConsoleTail {
        try await call(.consoleTail(name: name, lines: lines), as: ConsoleTail.self)
    }
}
