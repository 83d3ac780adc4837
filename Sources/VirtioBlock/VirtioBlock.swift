import Memory
import Posix
import Synchronization
import Virtio

/// virtio-blk request types, status codes and feature bits (virtio 1.x 5.2).
public enum VirtioBlockProtocol {
    public static let typeIn: UInt32 = 0
    public static let typeOut: UInt32 = 1
    public static let typeFlush: UInt32 = 4
    public static let typeGetID: UInt32 = 8
    public static let typeDiscard: UInt32 = 11
    public static let typeWriteZeroes: UInt32 = 13

    public static let statusOK: UInt8 = 0
    public static let statusIOError: UInt8 = 1
    public static let statusUnsupported: UInt8 = 2

    public static let featureSegMax: UInt64 = 1 << 2
    public static let featureReadOnly: UInt64 = 1 << 5
    public static let featureBlockSize: UInt64 = 1 << 6
    public static let featureFlush: UInt64 = 1 << 9
    public static let featureDiscard: UInt64 = 1 << 13
    public static let featureWriteZeroes: UInt64 = 1 << 14

    public static let idBytes = 20
    public static let headerSize = 16
    public static let discardSegmentSize = 16
}

/// What the device model needs to know about one disk.
public struct BlockDeviceSettings: Sendable {
    public var serial: String
    public var queueSize: UInt16
    public init(serial: String = "", queueSize: UInt16 = 256) { self.serial = serial; self.queueSize = queueSize }
}

/// Counters for logs and metrics.
public struct BlockStatistics: Sendable, Equatable {
    public var readRequests = 0, writeRequests = 0, flushes = 0, errors = 0
    /// fdatasync calls: one per FLUSH request, and one per write while the driver works write-through.
    public var syncs = 0
    public var bytesRead: UInt64 = 0, bytesWritten: UInt64 = 0
    /// Sum of the requests' service times (parsing, the image I/O, a sync), nanoseconds.
    public var serviceNanoseconds: UInt64 = 0
}

/// A virtio-blk device over a `BlockImage`. Requests are executed synchronously on the vCPU thread
/// that notified the queue: no I/O thread, no extra wake-up on this path.
public final class VirtioBlock: VirtioDevice {
    public let deviceType = VirtioDeviceType.block
    public let name: String
    public let image: BlockImage
    public let settings: BlockDeviceSettings
    public var queueMaxSizes: [UInt16] { [settings.queueSize] }
    public let availableFeatures: UInt64
    private let config: VirtioConfigSpace

    static let maxDiscardSectors: UInt32 = 1 << 22 // 2 GiB per segment
    static let maxDiscardSegments: UInt32 = 16

    /// The request queue while active; requests run under this lock, so taking it waits for the
    /// one in flight.
    private struct Requests {
        var queue: ActiveQueue?
        /// Paused for a snapshot: notifications are only noted, and served on resume.
        var paused = false
        var notifiedWhilePaused = false
    }
    private let state = Mutex(Requests())
    private let stats = Mutex(BlockStatistics())
    /// The driver did not negotiate VIRTIO_BLK_F_FLUSH: by the spec it may then assume every
    /// completed write is durable, so each write is synced before it completes (virtio 5.2.6.2).
    private let writeThrough = Atomic<Bool>(false)

    public init(name: String, image: BlockImage, settings: BlockDeviceSettings = BlockDeviceSettings()) {
        self.name = name
        self.image = image
        self.settings = settings
        var features = VirtioFeature.common
            | VirtioBlockProtocol.featureSegMax | VirtioBlockProtocol.featureBlockSize | VirtioBlockProtocol.featureFlush
        if image.readOnly { features |= VirtioBlockProtocol.featureReadOnly }
        else { features |= VirtioBlockProtocol.featureDiscard | VirtioBlockProtocol.featureWriteZeroes }
        availableFeatures = features

        // struct virtio_blk_config (5.2.4), 60 bytes.
        var c = VirtioConfigSpace(size: 60)
        c.set(image.sectors, at: 0)                         // capacity
        c.set(UInt32(settings.queueSize - 2), at: 12)       // seg_max: leave room for header and status
        c.set(UInt32(BlockImage.sectorSize), at: 20)        // blk_size
        c.set(UInt16(1), at: 34)                            // num_queues
        c.set(Self.maxDiscardSectors, at: 36)               // max_discard_sectors
        c.set(Self.maxDiscardSegments, at: 40)              // max_discard_seg
        c.set(UInt32(1), at: 44)                            // discard_sector_alignment
        c.set(Self.maxDiscardSectors, at: 48)               // max_write_zeroes_sectors
        c.set(Self.maxDiscardSegments, at: 52)              // max_write_zeroes_seg
        c.set(UInt8(1), at: 56)                             // write_zeroes_may_unmap
        config = c
    }

    public var statistics: BlockStatistics { stats.withLock { $0 } }

    public func readConfig(offset: Int, size: Int) -> UInt64 { config.read(offset: offset, size: size) }
    public func writeConfig(offset: Int, size: Int, value: UInt64) {} // all fields are read-only without CONFIG_WCE

    public func activate(_ a: VirtioActivation) throws {
        guard let q = a.queues.first, q.ready else { throw VirtQueueError.notReady }
        writeThrough.store(!image.readOnly && a.features & VirtioBlockProtocol.featureFlush == 0, ordering: .relaxed)
        state.withLock { $0.queue = ActiveQueue(memory: a.memory, queue: q, interrupt: a.interrupt) }
    }

    public func reset() {
        state.withLock { s in
            s.queue = nil
            s.notifiedWhilePaused = false
        }
    }

    public func queueNotify(_ queue: Int) {
        guard queue == 0 else { return }
        state.withLock { s in
            if s.paused { s.notifiedWhilePaused = true; return }
            serve(&s)
        }
    }

    private func serve(_ s: inout Requests) {
        s.queue?.serveAvailable(index: 0, device: name, role: "request") { chain, memory in execute(chain, memory: memory) }
    }

    /// Requests run synchronously on the notifying thread: once the lock is taken none is in
    /// flight, and later notifications wait for `resume()`.
    public func pause() { state.withLock { $0.paused = true } }

    public func resume() {
        state.withLock { s in
            guard s.paused else { return }
            s.paused = false
            if s.notifiedWhilePaused {
                s.notifiedWhilePaused = false
                serve(&s)
            }
        }
    }

    public func queueStates() -> [VirtQueue]? { state.withLock { s in s.queue.map { [$0.queue] } } }

    /// Executes one request; returns the byte count written into the chain's writable buffers.
    /// Malformed requests are answered with an error status when there is a status byte to write;
    /// they never reach the image.
    func execute(_ chain: DescriptorChain, memory: GuestMemory) -> UInt32 {
        // The status byte is the last writable byte; without one, nothing can be reported.
        guard let last = chain.writable.last, last.length > 0 else {
            stats.withLock { $0.errors += 1 }
            return 0
        }
        let statusAddress = GuestAddress(last.address.raw + UInt64(last.length) - 1)
        var dataOut = chain.writable
        dataOut[dataOut.count - 1].length -= 1
        if dataOut[dataOut.count - 1].length == 0 { dataOut.removeLast() }

        var reader = ChainReader(memory: memory, buffers: chain.readable)
        var writer = ChainWriter(memory: memory, buffers: dataOut)
        let status: UInt8
        // The vDSO clock: no syscall added to a request.
        let started = monotonicNanoseconds()
        do {
            status = try handle(reader: &reader, writer: &writer, memory: memory)
        } catch {
            status = VirtioBlockProtocol.statusIOError
        }
        let took = monotonicNanoseconds() &- started
        stats.withLock {
            $0.serviceNanoseconds &+= took
            if status != VirtioBlockProtocol.statusOK { $0.errors += 1 }
        }
        try? memory.writeInteger(status, at: statusAddress)
        return writer.written &+ 1
    }

    private func handle(reader: inout ChainReader, writer: inout ChainWriter, memory: GuestMemory) throws -> UInt8 {
        typealias P = VirtioBlockProtocol
        guard let type = try reader.readInteger(UInt32.self), try reader.readInteger(UInt32.self) != nil,
              let sector = try reader.readInteger(UInt64.self) else {
            return P.statusIOError // header shorter than 16 bytes
        }
        switch type {
        case P.typeIn:
            let count = writer.remaining
            guard let offset = range(sector: sector, bytes: count) else { return P.statusIOError }
            var segments: [(address: GuestAddress, length: Int)] = []
            try writer.forEachSegment(Int(count)) { segments.append(($0, $1)) }
            try image.read(into: memory, segments: segments, offset: offset)
            stats.withLock { $0.readRequests += 1; $0.bytesRead += count }
            return P.statusOK
        case P.typeOut:
            guard !image.readOnly else { return P.statusIOError }
            let count = reader.remaining
            guard let offset = range(sector: sector, bytes: count) else { return P.statusIOError }
            var segments: [(address: GuestAddress, length: Int)] = []
            try reader.forEachSegment(Int(count)) { segments.append(($0, $1)) }
            try image.write(from: memory, segments: segments, offset: offset)
            try syncIfWriteThrough()
            stats.withLock { $0.writeRequests += 1; $0.bytesWritten += count }
            return P.statusOK
        case P.typeFlush:
            // Acknowledged only once fdatasync returned: every earlier write is then durable.
            if !image.readOnly { try image.flush(); stats.withLock { $0.syncs += 1 } }
            stats.withLock { $0.flushes += 1 }
            return P.statusOK
        case P.typeGetID:
            var id = Array(settings.serial.utf8.prefix(P.idBytes))
            id += [UInt8](repeating: 0, count: P.idBytes - id.count)
            let n = min(Int(writer.remaining), P.idBytes)
            guard n > 0, try writer.write(Array(id.prefix(n))) else { return P.statusIOError }
            return P.statusOK
        case P.typeDiscard, P.typeWriteZeroes:
            guard !image.readOnly else { return P.statusIOError }
            let segments = reader.remaining / UInt64(P.discardSegmentSize)
            guard segments > 0, reader.remaining % UInt64(P.discardSegmentSize) == 0,
                  segments <= UInt64(Self.maxDiscardSegments) else { return P.statusIOError }
            for _ in 0..<segments {
                guard let start = try reader.readInteger(UInt64.self), let count = try reader.readInteger(UInt32.self),
                      let flags = try reader.readInteger(UInt32.self) else { return P.statusIOError }
                guard count <= Self.maxDiscardSectors,
                      let offset = range(sector: start, bytes: UInt64(count) * BlockImage.sectorSize) else { return P.statusIOError }
                if type == P.typeDiscard {
                    guard flags == 0 else { return P.statusUnsupported }
                    try image.discard(offset: offset, length: UInt64(count) * BlockImage.sectorSize)
                } else {
                    guard flags & ~1 == 0 else { return P.statusUnsupported }
                    try image.writeZeroes(offset: offset, length: UInt64(count) * BlockImage.sectorSize, mayUnmap: flags & 1 != 0)
                }
            }
            try syncIfWriteThrough()
            return P.statusOK
        default:
            return P.statusUnsupported
        }
    }

    private func syncIfWriteThrough() throws {
        guard writeThrough.load(ordering: .relaxed) else { return }
        try image.flush()
        stats.withLock { $0.syncs += 1 }
    }

    /// The byte offset of a transfer, if it is whole sectors and lies inside the disk.
    private func range(sector: UInt64, bytes: UInt64) -> UInt64? {
        guard bytes % BlockImage.sectorSize == 0 else { return nil }
        let (offset, o1) = sector.multipliedReportingOverflow(by: BlockImage.sectorSize)
        let (end, o2) = offset.addingReportingOverflow(bytes)
        guard !o1, !o2, end <= image.size else { return nil }
        return offset
    }
}
