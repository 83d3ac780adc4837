import Posix
import Synchronization
import SystemPackage
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// The framing of rtvisor's control sockets (SOCK_STREAM): the API front's socketpair to rtvisord
/// (`ControlCall`s) and, next, the per-VM socket from rtvisord to its VMM (`VMMControl`): a 4-byte little-endian length,
/// then an 8-byte little-endian request id, then the payload. Calls carry `ControlCall` as JSON;
/// replies carry one outcome byte (0 result, 1 not found, 2 conflict, 3 failed) and then the
/// result as JSON or the error's UTF-8 message. Replies may come in any order.
public enum ControlFrame {
    /// Larger than any call (request bodies are limited to `APIRouter.maxBody`) or reply.
    public static let maxLength = 4 << 20

    public struct ProtocolError: Error, CustomStringConvertible {
        public let description: String
        public init(description: String) { self.description = description }
    }

    public static func encode(id: UInt64, payload: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(12 + payload.count)
        withUnsafeBytes(of: UInt32(8 + payload.count).littleEndian) { out += $0 }
        withUnsafeBytes(of: id.littleEndian) { out += $0 }
        return out + payload
    }

    /// Splits one frame's body (after the length) into id and payload.
    public static func decode(_ body: [UInt8]) throws(ProtocolError) -> (id: UInt64, payload: ArraySlice<UInt8>) {
        guard body.count >= 8 else { throw ProtocolError(description: "frame of \(body.count) bytes has no request id") }
        var id: UInt64 = 0
        for i in 0..<8 { id |= UInt64(body[i]) << (8 * UInt64(i)) }
        return (id, body[8...])
    }

    /// Blocking: the next frame body, or nil at end of stream.
    public static func read(from fd: FileDescriptor) throws -> [UInt8]? {
        guard let head = try readExactly(fd, 4, endOK: true) else { return nil }
        return try readExactly(fd, try bodyLength(head), endOK: false)
    }

    /// The body length a 4-byte header announces, checked before anything is allocated.
    public static func bodyLength(_ head: [UInt8]) throws(ProtocolError) -> Int {
        guard head.count == 4 else { throw ProtocolError(description: "frame header of \(head.count) bytes") }
        let length = Int(UInt32(head[0]) | UInt32(head[1]) << 8 | UInt32(head[2]) << 16 | UInt32(head[3]) << 24)
        guard length >= 8, length <= maxLength else { throw ProtocolError(description: "frame length \(length) outside 8…\(maxLength)") }
        return length
    }

    static func readExactly(_ fd: FileDescriptor, _ n: Int, endOK: Bool) throws -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: n)
        var got = 0
        while got < n {
            let r = try out.withUnsafeMutableBytes { try fd.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[got...]), retryOnInterrupt: true) }
            if r == 0 {
                if got == 0 && endOK { return nil }
                throw ProtocolError(description: "control socket closed inside a frame")
            }
            got += r
        }
        return out
    }

    /// send(MSG_NOSIGNAL): a peer gone is an error here, not a SIGPIPE for the whole process.
    public static func write(_ frame: [UInt8], to fd: FileDescriptor) throws {
        var sent = 0
        while sent < frame.count {
            sent += try retryInterrupted { frame.withUnsafeBytes { send(fd.rawValue, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) } }
        }
    }

    /// invalidDefinition: the body is the API's error JSON (message and problems).
    public enum Outcome: UInt8, Sendable { case result = 0, notFound = 1, conflict = 2, failed = 3, invalidDefinition = 4 }

    /// Whole frames from several threads, one at a time. The first failed send (peer gone, or
    /// SO_SNDTIMEO: a peer that stopped reading) shuts the socket down: a frame cut short must
    /// not be followed by another, and nothing is written to it after that.
    public final class Writer: Sendable {
        let fd: FileDescriptor
        let broken = Mutex(false)
        public init(_ fd: FileDescriptor) { self.fd = fd }
        public var isBroken: Bool { broken.withLock { $0 } }
        public func send(_ frame: [UInt8]) -> Bool {
            broken.withLock { broken in
                guard !broken else { return false }
                if (try? ControlFrame.write(frame, to: fd)) != nil { return true }
                broken = true
                _ = shutdown(fd.rawValue, Int32(SHUT_RDWR))
                return false
            }
        }
    }

    public static let encoder = JSONEncoder()
}

