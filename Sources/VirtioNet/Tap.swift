import CLinux
import Posix
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

public struct TapError: Error, Equatable, CustomStringConvertible {
    public let name: String
    public let reason: String
    public var description: String { "tap \(name.isEmpty ? "(new)" : name): \(reason)" }
}

/// A TAP interface opened through /dev/net/tun, with a virtio-net header on every frame
/// (IFF_VNET_HDR), so the guest's header (checksum/GSO metadata) passes through unchanged.
public final class Tap: Sendable {
    public let fd: FileDescriptor
    /// The interface name (the kernel's choice when none was given).
    public let name: String
    /// Whether the tap accepts checksum and TSO offloads (TUNSETOFFLOAD).
    public let supportsOffloads: Bool

    /// virtio_net_hdr_v1: 12 bytes for VERSION_1 devices, num_buffers included.
    public static let headerSize: Int32 = 12
    public static let offloadChecksum: UInt = 0x01  // TUN_F_CSUM
    public static let offloadTSO4: UInt = 0x02      // TUN_F_TSO4
    public static let offloadTSO6: UInt = 0x04      // TUN_F_TSO6

    /// Creates the interface `name` or attaches to an existing one (a persistent tap set up by an
    /// administrator, e.g. with `ip tuntap add NAME mode tap user rtvisor`).
    public init(name: String, path: String = "/dev/net/tun") throws {
        guard name.utf8.count < 16 else { throw TapError(name: name, reason: "interface names are at most 15 bytes") }
        let raw = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC)
        guard raw >= 0 else { throw TapError(name: name, reason: "cannot open \(path): \(errnoMessage())") }
        let fd = FileDescriptor(rawValue: raw)
        do {
            var out = [CChar](repeating: 0, count: 16)
            guard clinux_tun_attach(raw, name, &out) == 0 else {
                let e = errno
                let hint = e == EBUSY ? " (another process has it open)" : e == EPERM ? " (needs CAP_NET_ADMIN, or a persistent tap owned by this user)" : ""
                throw TapError(name: name, reason: "TUNSETIFF: \(errnoMessage(e))\(hint)")
            }
            var size = Self.headerSize
            guard clinux_ioctl_ptr(raw, CLINUX_TUNSETVNETHDRSZ, &size) == 0 else {
                throw TapError(name: name, reason: "TUNSETVNETHDRSZ: \(errnoMessage())")
            }
            let all = Self.offloadChecksum | Self.offloadTSO4 | Self.offloadTSO6
            supportsOffloads = clinux_ioctl_val(raw, CLINUX_TUNSETOFFLOAD, all) == 0
            _ = clinux_ioctl_val(raw, CLINUX_TUNSETOFFLOAD, 0)
            self.name = out.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
            self.fd = fd
        } catch {
            try? fd.close()
            throw error
        }
    }

    /// A tap another process opened and set up (a same-host upgrade hands it over, docs/migration.md),
    /// or a stand-in on any datagram descriptor (the fuzz target's socketpair): no ioctls here, so
    /// the interface keeps running for its first owner. Takes ownership of `fd`.
    public init(adopting fd: FileDescriptor, name: String, supportsOffloads: Bool = false) {
        self.fd = fd
        self.name = name
        self.supportsOffloads = supportsOffloads
    }

    deinit { try? fd.close() }

    /// Tells the tap which offloads the guest can receive (frames without full checksums, TSO).
    public func setOffloads(_ flags: UInt) throws {
        guard clinux_ioctl_val(fd.rawValue, CLINUX_TUNSETOFFLOAD, flags) == 0 else {
            throw TapError(name: name, reason: "TUNSETOFFLOAD: \(errnoMessage())")
        }
    }

    /// One frame (with its virtio-net header) to the host; false if the tap's queue is full.
    public func send(_ frame: UnsafeRawBufferPointer) throws(Errno) -> Bool {
        try nonBlocking { Glibc.write(fd.rawValue, frame.baseAddress, frame.count) } != nil
    }

    /// One frame (with header) from the host; nil when none is queued.
    public func receive(into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int? {
        try nonBlocking { Glibc.read(fd.rawValue, buffer.baseAddress, buffer.count) }
    }

    /// One frame (with header) from the host straight into `vectors` (guest buffers); nil when
    /// none is queued. A frame longer than the vectors is truncated by the tap.
    public func receive(vectors: UnsafeBufferPointer<iovec>) throws(Errno) -> Int? {
        try nonBlocking { readv(fd.rawValue, vectors.baseAddress, Int32(vectors.count)) }
    }

    /// Runs a read/write on the non-blocking tap: retries EINTR, nil for EAGAIN.
    private func nonBlocking(_ call: () -> Int) throws(Errno) -> Int? {
        do { return try retryInterrupted(call) } catch .resourceTemporarilyUnavailable { return nil }
    }
}
