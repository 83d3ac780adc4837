import NIOCore
import NIOHTTP1
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The API's connection cap (issue 16): a local client that opens connections and sends nothing
/// must not use up the front's descriptors and lock out root. Every uid other than root and the
/// daemon's may hold `perUser` connections, and all of them together `maxConnections -
/// reservedForRoot`; root and the daemon's uid may use the whole `maxConnections`. A connection
/// over its cap is closed before anything is read from it.
final class ConnectionLimiter: Sendable {
    let limits: HTTPServer.Limits
    let access: PeerAccess
    struct State {
        var total = 0
        var perUser: [uid_t: Int] = [:]
        var lastRefusalLog: ContinuousClock.Instant?
    }
    let state = Mutex(State())

    init(limits: HTTPServer.Limits, access: PeerAccess) { self.limits = limits; self.access = access }

    /// Root and the daemon's own uid: the reserve is theirs.
    func isPrivileged(_ peer: PeerAccess.Peer?) -> Bool { peer.map { $0.uid == 0 || $0.uid == access.daemonUID } ?? false }

    /// A peer without credentials is counted as one unknown uid.
    static func key(_ peer: PeerAccess.Peer?) -> uid_t { peer?.uid ?? uid_t.max }

    /// Counts the connection in when it fits; every admitted connection is `release`d once.
    func admit(_ peer: PeerAccess.Peer?) -> Bool {
        let privileged = isPrivileged(peer), key = Self.key(peer)
        return state.withLock { s in
            if privileged {
                guard s.total < limits.maxConnections else { return false }
            } else {
                guard s.total < limits.maxConnections - limits.reservedForRoot, s.perUser[key, default: 0] < limits.perUser else { return false }
            }
            s.total += 1
            s.perUser[key, default: 0] += 1
            return true
        }
    }

    func release(_ peer: PeerAccess.Peer?) {
        let key = Self.key(peer)
        state.withLock { s in
            s.total -= 1
            let n = s.perUser[key, default: 1] - 1
            s.perUser[key] = n > 0 ? n : nil
        }
    }

    var openConnections: Int { state.withLock { $0.total } }

    /// At most one log line per 10 s about refused connections (a flood must not flood the journal).
    func shouldLogRefusal() -> Bool {
        state.withLock { s in
            let now = ContinuousClock.now
            if let last = s.lastRefusalLog, now - last < .seconds(10) { return false }
            s.lastRefusalLog = now
            return true
        }
    }
}

/// Closes a connection that is slow to send its request: a request (head and body) must arrive
/// within `requestTimeout` of connecting, or of its head; a kept-alive connection may sit idle
/// for `idleTimeout` after a response. While a request is being handled no timer runs (an answer
/// may wait for a VM). A byte-by-byte trickle does not reset anything, unlike a read-idle timer
/// (NIO's `IdleStateHandler`), which is why this is not one.
final class RequestDeadlineHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    let requestTimeout: TimeAmount, idleTimeout: TimeAmount
    enum Phase { case receiving, handling, idle }
    var phase = Phase.receiving
    var deadline: Scheduled<Void>?

    init(requestTimeout: TimeAmount, idleTimeout: TimeAmount) { self.requestTimeout = requestTimeout; self.idleTimeout = idleTimeout }

    func arm(_ context: ChannelHandlerContext, _ timeout: TimeAmount) {
        deadline?.cancel()
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        deadline = context.eventLoop.scheduleTask(in: timeout) { loopBound.value.close(promise: nil) }
    }

    func handlerAdded(context: ChannelHandlerContext) {
        // Added to an active, accepted connection: its first request's clock starts now.
        if context.channel.isActive { arm(context, requestTimeout) }
    }

    func channelActive(context: ChannelHandlerContext) {
        if deadline == nil { arm(context, requestTimeout) }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head where phase == .idle:
            phase = .receiving
            arm(context, requestTimeout)
        case .end:
            phase = .handling
            deadline?.cancel(); deadline = nil
        default: break
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = unwrapOutboundIn(data), phase == .handling {
            phase = .idle
            arm(context, idleTimeout)
        }
        context.write(data, promise: promise)
    }

    func channelInactive(context: ChannelHandlerContext) {
        deadline?.cancel(); deadline = nil
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) { deadline?.cancel(); deadline = nil }
}

/// The event followers being served (`HTTPServer.Limits.maxFollowers`).
final class FollowerSlots: Sendable {
    let limit: Int
    let inUse = Mutex(0)
    init(limit: Int) { self.limit = limit }
    func acquire() -> Bool {
        inUse.withLock { n in
            guard n < limit else { return false }
            n += 1
            return true
        }
    }
    func release() { inUse.withLock { $0 -= 1 } }
}
