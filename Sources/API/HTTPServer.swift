import CDaemonSupport
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Posix
#if canImport(Glibc)
import Glibc
#endif

/// HTTP/1.1 on a unix socket (SwiftNIO's parser), one request at a time per connection,
/// answered by `APIRouter`. Access control: the socket file's mode and group (0660, group
/// `rtvisor`), and each connection's peer credentials (SO_PEERCRED, `PeerAccess`): a peer that is
/// not root, the daemon's uid or in the group gets 403 to every request.
/// A local client must not be able to lock others out (issue 16): connections are capped
/// (`Limits`, `ConnectionLimiter`) and one that does not finish a request in time is closed
/// (`RequestDeadlineHandler`).
public final class HTTPServer: Sendable {
    let router: any RequestHandling
    let logger: Logger
    let group: MultiThreadedEventLoopGroup
    let limits: Limits
    let followers: FollowerSlots

    /// How many connections, and for how long without a request.
    public struct Limits: Sendable {
        /// Connections open at once, all peers together (the front's RLIMIT_NOFILE is 1024).
        public var maxConnections = 512
        /// Of those, kept for root and the daemon's uid: a flood from the group cannot lock them out.
        public var reservedForRoot = 32
        /// Connections of one other uid at once (group members, and peers that are only refused).
        public var perUser = 64
        /// A connection must deliver a complete request (head and body) within this time of
        /// connecting, or of its request head once it was idle.
        public var requestTimeout: Duration = .seconds(10)
        /// Between a response and the next request's head.
        public var idleTimeout: Duration = .seconds(30)
        /// Event followers (`GET /v1/events?follow=1`) at once, all peers together. Each keeps a
        /// long poll to the daemon in flight, and the daemon answers at most
        /// `ControlServer.maxCallsInFlight` (32) calls of the front at a time: half of them stay
        /// free for everything else.
        public var maxFollowers = 16
        public init() {}
        public init(maxConnections: Int, reservedForRoot: Int, perUser: Int, requestTimeout: Duration, idleTimeout: Duration) {
            self.maxConnections = maxConnections; self.reservedForRoot = reservedForRoot; self.perUser = perUser
            self.requestTimeout = requestTimeout; self.idleTimeout = idleTimeout
        }
    }

    public init(router: any RequestHandling, logger: Logger, limits: Limits = Limits()) {
        self.router = router; self.logger = logger; self.limits = limits
        followers = FollowerSlots(limit: limits.maxFollowers)
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    }

    /// Binds (replacing a stale socket file), sets mode and group, then serves until cancelled.
    public func run(socketPath: String, groupName: String?) async throws {
        let fd = try Self.bindListeningSocket(socketPath, groupName: groupName, logger: logger)
        try await run(listeningSocket: fd, access: PeerAccess(groupName: groupName))
    }

    /// Serves a listening unix socket (rtvisord's API front gets it bound, from the daemon) until
    /// cancelled. `requestHook` sees every request first (test builds: the seccomp test hook).
    /// `everyoneAllowed`: no peer is refused (metrics.sock and the metrics TCP listener, whose
    /// router answers only read-only routes); `access` still tells root's reserve of connections.
    public func run(listeningSocket fd: Int32, access: PeerAccess, everyoneAllowed: Bool = false,
                    requestHook: (@Sendable (APIRequest) -> Void)? = nil) async throws {
        let limits = limits, logger = logger
        let limiter = ConnectionLimiter(limits: limits, access: access)
        let server = try await ServerBootstrap(group: group)
            .bind(fd) { channel in
                Self.peer(of: channel).flatMapThrowing { peer in
                    // Counted before anything is read; released when the connection closes.
                    let admitted = limiter.admit(peer)
                    if admitted {
                        channel.closeFuture.whenComplete { _ in limiter.release(peer) }
                        try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                        try channel.pipeline.syncOperations.addHandler(RequestDeadlineHandler(requestTimeout: TimeAmount(limits.requestTimeout), idleTimeout: TimeAmount(limits.idleTimeout)))
                    } else {
                        // Only the encoder, for its one 503 answer: it is sent without a request
                        // (the pipelining handler would refuse a response before one).
                        try channel.pipeline.syncOperations.configureHTTPServerPipeline(withPipeliningAssistance: false, withErrorHandling: false)
                    }
                    return (try NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>(wrappingChannelSynchronously: channel), peer, admitted)
                }
            }
        try await withThrowingDiscardingTaskGroup { tasks in
            try await server.executeThenClose { connections in
                for try await (connection, peer, admitted) in connections {
                    guard admitted else {
                        // Over the cap: answered 503 unread and closed (logged once per episode, not
                        // per connection), so a client learns why rather than guessing.
                        if limiter.shouldLogRefusal() {
                            logger.warning("API connection limit reached (uid \(peer.map { String($0.uid) } ?? "?")): connections closed at once until some end")
                        }
                        try? await connection.executeThenClose { _, outbound in
                            let headers: HTTPHeaders = ["Content-Length": "0", "Connection": "close", "Retry-After": "1"]
                            try await outbound.write(.head(HTTPResponseHead(version: .http1_1, status: .serviceUnavailable, headers: headers)))
                            try await outbound.write(.end(nil))
                        }
                        continue
                    }
                    let refusal: String? = everyoneAllowed ? nil
                        : peer.map { access.allows($0) ? nil : access.refusal($0) } ?? "peer credentials unavailable"
                    if let refusal { logger.warning("API connection refused: \(refusal)") }
                    tasks.addTask { await self.serve(connection, refusal: refusal, requestHook: requestHook) }
                }
            }
        }
    }

    /// socket, bind (a stale socket file is replaced; anything else at the path is left alone
    /// and refused), mode 0660 (0666 for metrics.sock, which any local user may read) and the
    /// access group, listen.
    public static func bindListeningSocket(_ path: String, groupName: String?, mode: UInt32 = 0o660, logger: Logger) throws -> Int32 {
        var st = stat()
        if lstat(path, &st) == 0 && (st.st_mode & S_IFMT) != S_IFSOCK {
            throw IOError(errnoCode: EEXIST, reason: "API socket path \(path) is taken by something other than a socket")
        }
        let fd = cdaemon_listen_unix(path, 64, mode)
        guard fd >= 0 else { throw IOError(errnoCode: errno, reason: "bind/listen on \(path)") }
        restrict(path, groupName: groupName, logger: logger)
        return fd
    }

    /// SO_PEERCRED and SO_PEERGROUPS of an accepted unix connection; nil if the kernel gave no
    /// credentials (groups it cannot give count as none).
    static func peer(of channel: Channel) -> EventLoopFuture<PeerAccess.Peer?> {
        guard let provider = channel as? SocketOptionProvider else { return channel.eventLoop.makeSucceededFuture(nil) }
        // struct ucred (pid, uid, gid); glibc shows it to C only with _GNU_SOURCE.
        struct UCred { var pid: Int32 = 0; var uid: UInt32 = 0; var gid: UInt32 = 0 }
        let level = NIOBSDSocket.OptionLevel(rawValue: SOL_SOCKET), peerGroups = NIOBSDSocket.Option(rawValue: SO_PEERGROUPS)
        let credentials: EventLoopFuture<UCred> = provider.unsafeGetSocketOption(level: level, name: .init(rawValue: SO_PEERCRED))
        let empty: EventLoopFuture<PeerAccess.NoGroups> = provider.unsafeGetSocketOption(level: level, name: peerGroups)
        let nonEmpty = empty.map { _ in false }.recover { _ in true }
        let groups = nonEmpty.flatMap { nonEmpty -> EventLoopFuture<[gid_t]> in
            guard nonEmpty else { return channel.eventLoop.makeSucceededFuture([]) }
            let buffer: EventLoopFuture<PeerAccess.GroupBuffer> = provider.unsafeGetSocketOption(level: level, name: peerGroups)
            return buffer.map { PeerAccess.groups(in: $0, nonEmpty: true) }.recover { _ in [] }
        }
        return credentials.and(groups).map { c, g -> PeerAccess.Peer? in PeerAccess.Peer(pid: c.pid, uid: c.uid, gid: c.gid, groups: g) }
            .recover { _ -> PeerAccess.Peer? in nil }
    }

    public func shutdown() async { try? await group.shutdownGracefully() }

    /// The socket file's group (its mode, 0660, is set when it is bound).
    static func restrict(_ path: String, groupName: String?, logger: Logger) {
        guard let groupName else { return }
        if let g = getgrnam(groupName) {
            if chown(path, 0, g.pointee.gr_gid) != 0 && chown(path, getuid(), g.pointee.gr_gid) != 0 {
                logger.warning("cannot give \(path) to group \(groupName): \(errnoMessage())")
            }
        } else {
            logger.warning("group \(groupName) does not exist: \(path) is usable by root only (scripts/install.sh creates the group)")
        }
    }

    func serve(_ connection: NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>, refusal: String? = nil,
               requestHook: (@Sendable (APIRequest) -> Void)? = nil) async {
        do {
            try await connection.executeThenClose { inbound, outbound in
                var head: HTTPRequestHead?
                var body: [UInt8] = []
                var tooLarge = false
                for try await part in inbound {
                    switch part {
                    case let .head(h):
                        head = h; body = []; tooLarge = false
                    case var .body(buf):
                        if body.count + buf.readableBytes > APIRouter.maxBody { tooLarge = true } else { body += buf.readBytes(length: buf.readableBytes) ?? [] }
                    case .end:
                        guard let h = head else { continue }
                        let response = if let refusal { APIRouter.error(403, refusal) }
                            else if tooLarge { APIRouter.error(413, "request body over \(APIRouter.maxBody) bytes") }
                            else { await handle(APIRequest(method: h.method.rawValue, target: h.uri, body: body,
                                                           authorization: h.headers.first(name: "Authorization")), hook: requestHook) }
                        if let stream = response.stream {
                            try await follow(stream, response, h, connection.channel, outbound)
                            return
                        }
                        var headers = HTTPHeaders(response.headers)
                        headers.add(name: "Content-Length", value: String(response.body.count))
                        let keepAlive = h.isKeepAlive
                        headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
                        let status = HTTPResponseStatus(statusCode: response.status)
                        try await outbound.write(.head(HTTPResponseHead(version: h.version, status: status, headers: headers)))
                        try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: response.body))))
                        try await outbound.write(.end(nil))
                        logger.debug("\(h.method.rawValue) \(h.uri) → \(response.status)")
                        if !keepAlive { return }
                        head = nil
                    }
                }
            }
        } catch {
            logger.debug("API connection ended: \(error)")
        }
    }

    /// A streamed answer: the head and the first part at once, then each part as it comes, until
    /// the stream ends or the client goes away (the channel closes: the stream is cancelled, and
    /// its long poll, which cannot be, ends by its own deadline). No Content-Length, so HTTP/1.1
    /// clients get it chunked; then the connection closes.
    func follow(_ stream: ResponseStream, _ response: APIResponse, _ h: HTTPRequestHead, _ channel: Channel,
                _ outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>) async throws {
        guard followers.acquire() else {
            let refusal = APIRouter.error(503, "too many event followers (\(limits.maxFollowers)); try again later")
            let headers: HTTPHeaders = ["Content-Type": "application/json", "Content-Length": String(refusal.body.count), "Connection": "close", "Retry-After": "1"]
            try await outbound.write(.head(HTTPResponseHead(version: h.version, status: .serviceUnavailable, headers: headers)))
            try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: refusal.body))))
            try await outbound.write(.end(nil))
            return
        }
        defer { followers.release() }
        var headers = HTTPHeaders(response.headers)
        headers.add(name: "Connection", value: "close")
        headers.add(name: "Cache-Control", value: "no-cache")
        try await outbound.write(.head(HTTPResponseHead(version: h.version, status: HTTPResponseStatus(statusCode: response.status), headers: headers)))
        if !response.body.isEmpty { try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: response.body)))) }
        logger.debug("\(h.method.rawValue) \(h.uri) → \(response.status), following")
        // The client going away, as a wait that can be cancelled (a future's cannot): once the
        // stream has ended, nothing waits for the client to close (the connection is closed as
        // after any answer).
        let (closed, closing) = AsyncStream<Void>.makeStream()
        channel.closeFuture.whenComplete { _ in closing.finish() }
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask {
                while let part = await stream.next() {
                    try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: part))))
                }
                try await outbound.write(.end(nil))
            }
            tasks.addTask { for await _ in closed {} }
            _ = try await tasks.next()
            tasks.cancelAll()
        }
    }

    func handle(_ request: APIRequest, hook: (@Sendable (APIRequest) -> Void)?) async -> APIResponse {
        hook?(request)
        return await router.handle(request)
    }
}
