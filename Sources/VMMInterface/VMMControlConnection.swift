import Posix
import SystemPackage

/// One end of a connected VMM control socket: `VMMControl` frames, with the descriptors a
/// request carries (`Request.passedFiles`) riding along. Both rtvisord (the client) and the VMM
/// (the server) use it, so the two cannot frame differently. Blocking; one thread per end.
public final class VMMControlConnection {
    public let socket: FileDescriptor
    private var buffer: [UInt8] = []
    private var files: [FileDescriptor] = []
    private var nextID: UInt64 = 1

    public init(socket: FileDescriptor) { self.socket = socket }

    deinit {
        for f in files { try? f.close() }
        try? socket.close()
    }

    /// The next frame's body and every descriptor received since the last frame was taken;
    /// nil when the peer closed the connection between frames.
    public func receiveFrame() throws -> (body: [UInt8], files: [FileDescriptor])? {
        while true {
            if buffer.count >= 4 {
                let length = try ControlFrame.bodyLength(Array(buffer[0..<4]))
                if buffer.count >= 4 + length {
                    let body = Array(buffer[4..<(4 + length)])
                    buffer.removeFirst(4 + length)
                    defer { files = [] }
                    return (body, files)
                }
            }
            let (bytes, passed) = try PassedFiles.receive(socket)
            files += passed
            if bytes.isEmpty {
                guard buffer.isEmpty else { throw ControlFrame.ProtocolError(description: "control socket closed inside a frame") }
                return nil
            }
            buffer += bytes
        }
    }

    // MARK: client

    /// Sends `request` (with its files) and waits for its reply. The first call of a connection
    /// should be `hello`.
    /// `progress` gets the interim replies of a long request (`Reply.isInterim`, control protocol 4).
    public func call(_ request: VMMControl.Request, files passing: [FileDescriptor] = [],
                     progress: ((VMMControl.Reply) -> Void)? = nil) throws -> VMMControl.Reply {
        let (reply, received) = try exchange(request, files: passing, progress: progress)
        for f in received { try? f.close() }
        return reply
    }

    /// `call`, keeping the descriptors that came with the reply (the caller closes them).
    public func exchange(_ request: VMMControl.Request, files passing: [FileDescriptor] = [],
                         progress: ((VMMControl.Reply) -> Void)? = nil) throws -> (VMMControl.Reply, [FileDescriptor]) {
        guard passing.count == request.passedFiles else {
            throw ControlFrame.ProtocolError(description: "\(request) passes \(request.passedFiles) files, \(passing.count) given")
        }
        let id = nextID
        nextID += 1
        try PassedFiles.send(socket, try VMMControl.frame(request, id: id), files: passing)
        while true {
            guard let (body, received) = try receiveFrame() else { throw ControlFrame.ProtocolError(description: "the VMM closed the control socket") }
            let (replyID, reply) = try VMMControl.reply(from: body)
            guard replyID == id, !reply.isInterim else {
                for f in received { try? f.close() }
                guard replyID == id else { throw ControlFrame.ProtocolError(description: "reply \(replyID) to request \(id)") }
                progress?(reply)
                continue
            }
            return (reply, received)
        }
    }

    /// `hello` with this build's versions; returns the version agreed on.
    public func hello() throws -> Int {
        let v = VMMControl.versions
        switch try call(.hello(minVersion: v.lowerBound, maxVersion: v.upperBound)) {
        case let .hello(version, _): return version
        case let .refused(reason): throw ControlFrame.ProtocolError(description: reason)
        case let other: throw ControlFrame.ProtocolError(description: "unexpected reply to hello: \(other)")
        }
    }

    // MARK: server

    public func reply(_ reply: VMMControl.Reply, to id: UInt64, passing: [FileDescriptor] = []) throws {
        try PassedFiles.send(socket, try VMMControl.frame(reply, id: id), files: passing)
    }
}
