#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif
import Posix

/// What a VMM tells rtvisord unasked, the moment it happens, on the notice socket rtvisord
/// hands it at spawn (`VMMLaunch.noticeDescriptor`, `--notice-fd N`): a SOCK_SEQPACKET socket
/// pair, one JSON message per notice. The control socket cannot carry these: it answers one
/// request at a time and rtvisord only connects to ask.
public enum VMMNotice: Codable, Sendable, Equatable {
    /// vCPU 0 entered the guest: the VM is past its set-up, which is where a start can still fail.
    case guestStarted
    /// The guest wrote the boot marker (`GuestLayout.bootMarker`): it is up.
    case guestReady(millisecondsAfterVMCreation: Double)
    /// The VM's real-time partition is in force: its vCPUs run on `cpus` at SCHED_FIFO `priority`.
    case realtimeApplied(cpus: [Int], priority: Int, summary: String)
    /// The VMM undid its real-time partition as its VM stopped (`how`: by itself or its janitor).
    case realtimeReleased(how: String)

    /// A notice is at most this big; a longer datagram is not one of ours.
    public static let maximumSize = 4096

    public var encoded: [UInt8] { (try? Array(JSONEncoder().encode(self))) ?? [] }

    /// nil for bytes that are not a notice (a newer VMM's kind, or garbage).
    public init?(decoding bytes: [UInt8]) {
        guard let notice = try? JSONDecoder().decode(VMMNotice.self, from: Data(bytes)) else { return nil }
        self = notice
    }
}

/// The VMM's end of the notice socket. Sending never blocks and never raises SIGPIPE: a
/// notice is sent from a vCPU thread, and a daemon that is gone (restarting) just misses it;
/// `describe` tells the next one what it needs.
public struct VMMNoticeSender: Sendable {
    public let descriptor: Int32
    public init(descriptor: Int32) { self.descriptor = descriptor }

    @discardableResult
    public func send(_ notice: VMMNotice) -> Bool {
        let bytes = notice.encoded
        let sent = try? retryInterrupted { bytes.withUnsafeBytes { Glibc.send(descriptor, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) } }
        return sent == bytes.count
    }
}
