import Posix
import SystemPackage
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// The live-migration stream between the VMM that runs a VM (source) and the one that takes it
/// over (target), docs/migration.md. Framed: one byte of kind, a u32 LE length, the payload.
///
///     source                                   target
///     hello, config (definition, header)  →
///     [handover + descriptors]            →    (same-host upgrade only)
///                                          ←   accepted | refused(reason)
///     preview (a state, guest running)    →
///     pages/zero … (rounds of dirty pages) →
///     [console] state (paused)            →
///                                          ←   ready | failed(reason)
///     go                                  →
///                                          ←   running
///
/// A same-host upgrade (`MigrationConfig.handover`) passes guest RAM's memfds and the taps over
/// the Unix socket instead: no pages follow when the memory went over that way.
/// The target runs the guest only after `go`; the source ends only after `running`. Anything
/// else (a refusal, a failure, a broken stream) before `go` leaves the source running and the
/// target discarding what it got.
public enum MigrationMessage: Equatable, Sendable {
    case hello(version: Int, rtvisorVersion: String)
    case config(MigrationConfig)
    case accepted
    case refused(String)
    /// Whole pages of guest RAM at `offset` in its image (the regions one after another).
    case pages(offset: UInt64, bytes: [UInt8])
    /// `length` bytes of zero pages at `offset` (a page written back to all zeros).
    case zero(offset: UInt64, length: UInt64)
    /// The machine state (the VMM's `MachineState` as JSON), sent with the VM paused.
    case state([UInt8])
    case ready
    case failed(String)
    case go
    case running
    case abandon(String)
    /// Same host: descriptors (guest RAM's memfds, then the taps) ride along with this frame.
    case handover(MigrationHandover)
    /// The machine state taken at the start, while the guest runs on: the target decodes it only
    /// to have its decoder warm when the real `state` comes (it shortens the downtime).
    case preview([UInt8])
    /// The console's recent output (what `rtvisorctl console` shows first), sent paused before
    /// the state: the VM's console history moves with it. Optional.
    case console([UInt8])

    public static let version = 1
    /// The largest payload either end accepts: a round of pages is sent in 1 MiB frames.
    public static let maxPayload = 16 << 20
    public static let pagesPerFrame = 256

    var kind: UInt8 {
        switch self {
        case .hello: 1
        case .config: 2
        case .accepted: 3
        case .refused: 4
        case .pages: 5
        case .zero: 6
        case .state: 7
        case .ready: 8
        case .failed: 9
        case .go: 10
        case .running: 11
        case .abandon: 12
        case .handover: 13
        case .console: 14
        case .preview: 15
        }
    }

    public var name: String {
        ["", "hello", "config", "accepted", "refused", "pages", "zero", "state", "ready", "failed", "go", "running", "abandon", "handover", "console", "preview"][Int(kind)]
    }

    public func encoded() throws -> [UInt8] {
        var payload: [UInt8]
        switch self {
        case let .hello(v, r): payload = Array(try JSONEncoder().encode(Hello(version: v, rtvisorVersion: r)))
        case let .config(c): payload = Array(try JSONEncoder().encode(c))
        case .accepted, .ready, .go, .running: payload = []
        case let .refused(m), let .failed(m), let .abandon(m): payload = Array(m.utf8)
        case let .pages(offset, bytes): payload = Self.le(offset) + bytes
        case let .zero(offset, length): payload = Self.le(offset) + Self.le(length)
        case let .state(body), let .console(body), let .preview(body): payload = body
        case let .handover(h): payload = Array(try JSONEncoder().encode(h))
        }
        return [kind] + Self.le(UInt32(payload.count)) + payload
    }

    public static func decode(kind: UInt8, payload: [UInt8]) throws(MigrationStreamError) -> MigrationMessage {
        func json<T: Decodable>(_ t: T.Type) throws(MigrationStreamError) -> T {
            do { return try JSONDecoder().decode(T.self, from: Data(payload)) } catch { throw MigrationStreamError("a \(T.self) that cannot be read: \(error)") }
        }
        func text() -> String { String(decoding: payload, as: UTF8.self) }
        switch kind {
        case 1: let h = try json(Hello.self); return .hello(version: h.version, rtvisorVersion: h.rtvisorVersion)
        case 2: return .config(try json(MigrationConfig.self))
        case 3: return .accepted
        case 4: return .refused(text())
        case 5:
            guard payload.count >= 8, (payload.count - 8) % 4096 == 0 else { throw MigrationStreamError("a pages frame of \(payload.count) bytes") }
            return .pages(offset: load64(payload, 0), bytes: Array(payload[8...]))
        case 6:
            guard payload.count == 16 else { throw MigrationStreamError("a zero frame of \(payload.count) bytes") }
            return .zero(offset: load64(payload, 0), length: load64(payload, 8))
        case 7: return .state(payload)
        case 8: return .ready
        case 9: return .failed(text())
        case 10: return .go
        case 11: return .running
        case 12: return .abandon(text())
        case 13: return .handover(try json(MigrationHandover.self))
        case 14: return .console(payload)
        case 15: return .preview(payload)
        default: throw MigrationStreamError("unknown frame kind \(kind)")
        }
    }

    struct Hello: Codable { var version: Int; var rtvisorVersion: String }

    static func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { (0..<MemoryLayout<T>.size).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
    static func load64(_ b: [UInt8], _ at: Int) -> UInt64 { (0..<8).reduce(UInt64(0)) { $0 | UInt64(b[at + $1]) << (8 * UInt64($1)) } }
}

/// What the target needs to know before any memory moves: the definition (paths must resolve
/// on the target) and what the guest saw (the snapshot header's fields: vCPUs, RAM, CPU template
/// and CPUID digest, disk sizes).
public struct MigrationConfig: Codable, Equatable, Sendable {
    public var definitionJSON: [UInt8]
    public var header: SnapshotHeader
    public var sourceHost: String
    /// A same-host upgrade: a `handover` frame follows this one (absent: false).
    public var handover: Bool?
    public init(definitionJSON: [UInt8], header: SnapshotHeader, sourceHost: String, handover: Bool? = nil) {
        self.definitionJSON = definitionJSON; self.header = header; self.sourceHost = sourceHost; self.handover = handover
    }
}

/// What a same-host upgrade's `handover` frame passes, in the order of its descriptors: one memfd
/// per guest RAM region when `memory` (else the pages follow as in any migration), then one
/// descriptor per tap, in the definition's order of NICs.
public struct MigrationHandover: Codable, Equatable, Sendable {
    public struct HandedTap: Codable, Equatable, Sendable {
        public var name: String
        public var supportsOffloads: Bool
        public init(name: String, supportsOffloads: Bool) { self.name = name; self.supportsOffloads = supportsOffloads }
    }
    public var memoryRegions: Int
    public var taps: [HandedTap]
    public init(memoryRegions: Int, taps: [HandedTap]) { self.memoryRegions = memoryRegions; self.taps = taps }
    public var descriptors: Int { memoryRegions + taps.count }
}

public struct MigrationStreamError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// One end of a migration stream (blocking; one thread).
public final class MigrationChannel {
    public let socket: FileDescriptor
    public private(set) var bytesSent: UInt64 = 0
    /// Descriptors that came with the last frame, until `takeFiles` or the next `receive`.
    private var receivedFiles: [FileDescriptor] = []

    public init(socket: FileDescriptor) { self.socket = socket }

    deinit { for f in receivedFiles { try? f.close() } }

    /// `files` ride along with the frame's first byte (a Unix socket: a `handover`).
    public func send(_ message: MigrationMessage, files: [FileDescriptor] = []) throws {
        let bytes = try message.encoded()
        do {
            if files.isEmpty { try writeAll(socket.rawValue, bytes) } else { try PassedFiles.send(socket, bytes, files: files) }
        } catch { throw MigrationStreamError("sending \(message.name): \(error)") }
        bytesSent += UInt64(bytes.count)
    }

    /// The descriptors that came with the frame `receive` returned last; the caller owns them.
    public func takeFiles() -> [FileDescriptor] {
        defer { receivedFiles = [] }
        return receivedFiles
    }

    /// The next message; a closed stream or a malformed frame throws. Descriptors passed with
    /// it wait for `takeFiles`; those nobody takes are closed by the next call.
    public func receive() throws -> MigrationMessage {
        for f in takeFiles() { try? f.close() }
        let head = try readHeader()
        let length = Int(UInt32(head[1]) | UInt32(head[2]) << 8 | UInt32(head[3]) << 16 | UInt32(head[4]) << 24)
        guard length <= MigrationMessage.maxPayload else { throw MigrationStreamError("a frame of \(length) bytes (at most \(MigrationMessage.maxPayload))") }
        return try MigrationMessage.decode(kind: head[0], payload: try read(length, "a frame"))
    }

    /// The 5-byte frame header, through recvmsg: descriptors travel with a frame's first byte.
    private func readHeader() throws -> [UInt8] {
        var head: [UInt8] = []
        while head.count < 5 {
            let got: (bytes: [UInt8], files: [FileDescriptor])
            do { got = try PassedFiles.receive(socket, maximum: 5 - head.count) } catch {
                throw MigrationStreamError("reading a frame header: \(error)")
            }
            receivedFiles += got.files
            guard !got.bytes.isEmpty else { throw MigrationStreamError("the stream ended inside a frame header (\(head.count) of 5 bytes)") }
            head += got.bytes
        }
        return head
    }

    private func read(_ n: Int, _ what: String) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: n)
        var got = 0
        while got < n {
            let r = try out.withUnsafeMutableBytes { raw in
                Result { () throws(Errno) in try retryInterrupted { Glibc.read(socket.rawValue, raw.baseAddress! + got, n - got) } }
            }.get()
            guard r > 0 else { throw MigrationStreamError("the stream ended inside \(what) (\(got) of \(n) bytes)") }
            got += r
        }
        return out
    }
}

/// Where a migration stream is: `unix:PATH`, `tcp:HOST:PORT` (`tcp:[v6]:PORT` for IPv6
/// literals), or `fd:N` (an inherited connected socket).
public enum MigrationAddress: Equatable, Sendable, CustomStringConvertible {
    case unix(String)
    case tcp(host: String, port: String)
    case fd(Int32)

    public init(parsing s: String) throws(MigrationStreamError) {
        if s.hasPrefix("unix:"), s.count > 5 { self = .unix(String(s.dropFirst(5))); return }
        if s.hasPrefix("fd:"), let n = Int32(s.dropFirst(3)), n >= 0 { self = .fd(n); return }
        if s.hasPrefix("tcp:") {
            let rest = s.dropFirst(4)
            if let colon = rest.lastIndex(of: ":"), let port = UInt16(rest[rest.index(after: colon)...]), port > 0 {
                var host = String(rest[..<colon])
                if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
                self = .tcp(host: host, port: String(port))
                return
            }
        }
        throw MigrationStreamError("\(s): not a migration address (unix:PATH, tcp:HOST:PORT or fd:N)")
    }

    public var description: String {
        switch self {
        case let .unix(p): "unix:\(p)"
        case let .tcp(h, p): h.contains(":") ? "tcp:[\(h)]:\(p)" : "tcp:\(h):\(p)"
        case let .fd(n): "fd:\(n)"
        }
    }
}
