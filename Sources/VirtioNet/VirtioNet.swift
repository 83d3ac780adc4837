import Memory
import Posix
import Synchronization
import SystemPackage
import Virtio

/// virtio-net feature bits (virtio 1.x 5.1.3).
public enum VirtioNetFeature {
    public static let checksum: UInt64 = 1 << 0        // device handles partial checksums (TX)
    public static let guestChecksum: UInt64 = 1 << 1   // driver handles partial checksums (RX)
    public static let mtu: UInt64 = 1 << 3             // config space carries the host side's MTU
    public static let mac: UInt64 = 1 << 5
    public static let guestTSO4: UInt64 = 1 << 7
    public static let guestTSO6: UInt64 = 1 << 8
    public static let hostTSO4: UInt64 = 1 << 11
    public static let hostTSO6: UInt64 = 1 << 12
    public static let status: UInt64 = 1 << 16
}

public struct NetStatistics: Sendable, Equatable {
    public var txFrames = 0, rxFrames = 0, txDropped = 0, rxDropped = 0
    public var txBytes: UInt64 = 0, rxBytes: UInt64 = 0
}

/// A virtio-net device on a TAP interface. TX runs on the vCPU thread that notifies the transmit
/// queue. RX needs a thread of its own, since frames arrive whenever the host sends them: it waits
/// in epoll for the tap and for "new receive buffers" kicks, fills the receive queue and
/// interrupts the guest (through irqfd on PCI/MSI-X, without returning to a vCPU).
public final class VirtioNet: VirtioDevice {
    public let deviceType = VirtioDeviceType.net
    public let name: String
    public let tap: Tap
    public let mac: [UInt8]
    public let queueMaxSizes: [UInt16]
    public let availableFeatures: UInt64
    private let config: VirtioConfigSpace

    static let rxQueue = 0
    static let txQueue = 1
    /// Largest frame with header: 64 KiB TSO super-frame + Ethernet header + virtio-net header.
    static let maxFrame = 65562

    private struct Transmit {
        var queue: ActiveQueue
        /// One frame gathered from the chain's buffers.
        var scratch: [UInt8] = []
    }
    /// The transmit side; frames are sent under this lock, so taking it waits for the one in flight.
    private struct TransmitState {
        var active: Transmit?
        /// Paused for a snapshot: notifications are only noted, and served on resume.
        var paused = false
        var notifiedWhilePaused = false
    }
    private struct Receive {
        var queue: ActiveQueue
        /// A chain the RX thread popped while the tap was empty, kept for the next frame (the
        /// driver does not see it until it is used).
        var pending: DescriptorChain? = nil
    }
    /// The receive thread, and whether it is held stopped for a snapshot.
    private struct ReceiveControl {
        var worker: RxWorker?
        var paused = false
    }
    private let rx = Mutex<Receive?>(nil)
    private let tx = Mutex(TransmitState())
    private let stats = Mutex(NetStatistics())
    private let rxThread = Mutex(ReceiveControl())
    /// Receive threads running (tests: one while active, none after reset).
    fileprivate let rxThreadsRunning = ThreadCount()
    /// Host-side errors the guest did not cause (a failing tap), for the VMM's log.
    private let onHostError: @Sendable (String) -> Void

    /// `mtu`: offered to the guest (VIRTIO_NET_F_MTU) as the largest it should send.
    public init(name: String, tap: Tap, mac: [UInt8], mtu: UInt16? = nil, queueSize: UInt16 = 256,
                onHostError: @escaping @Sendable (String) -> Void = { _ in }) {
        precondition(mac.count == 6)
        self.name = name
        self.onHostError = onHostError
        self.tap = tap
        self.mac = mac
        self.queueMaxSizes = [queueSize, queueSize]
        var features = VirtioFeature.common | VirtioNetFeature.mac | VirtioNetFeature.status
        if tap.supportsOffloads {
            features |= VirtioNetFeature.checksum | VirtioNetFeature.guestChecksum
                | VirtioNetFeature.hostTSO4 | VirtioNetFeature.hostTSO6
                | VirtioNetFeature.guestTSO4 | VirtioNetFeature.guestTSO6
        }
        if mtu != nil { features |= VirtioNetFeature.mtu }
        availableFeatures = features
        // struct virtio_net_config: mac[6], status, max_virtqueue_pairs, mtu (5.1.4).
        var c = VirtioConfigSpace(size: mtu == nil ? 10 : 12)
        for (i, b) in mac.enumerated() { c.set(b, at: i) }
        c.set(UInt16(1), at: 6)   // VIRTIO_NET_S_LINK_UP
        c.set(UInt16(1), at: 8)
        if let mtu { c.set(mtu, at: 10) }
        config = c
    }

    public var statistics: NetStatistics { stats.withLock { $0 } }
    package var receiveThreadsRunning: Int { rxThreadsRunning.value.load(ordering: .acquiring) }
    package var isActive: Bool { rx.withLock { $0 != nil } }

    public func readConfig(offset: Int, size: Int) -> UInt64 { config.read(offset: offset, size: size) }
    public func writeConfig(offset: Int, size: Int, value: UInt64) {}

    public func activate(_ a: VirtioActivation) throws {
        guard a.queues.count == 2, a.queues[0].ready, a.queues[1].ready else { throw VirtQueueError.notReady }
        // Offloads the guest can receive: only what it acknowledged.
        var offloads: UInt = 0
        if a.features & VirtioNetFeature.guestChecksum != 0 {
            offloads |= Tap.offloadChecksum
            if a.features & VirtioNetFeature.guestTSO4 != 0 { offloads |= Tap.offloadTSO4 }
            if a.features & VirtioNetFeature.guestTSO6 != 0 { offloads |= Tap.offloadTSO6 }
        }
        // Activation and reset hold the worker's lock throughout, so they never interleave: an
        // active device has exactly one receive thread, a reset one none. (The RX thread never
        // takes this lock, so stopping it under the lock cannot deadlock.)
        try rxThread.withLock { control in
            // Started again without a reset: the old thread goes first.
            control.worker?.stop()
            control.worker = nil
            if tap.supportsOffloads { try tap.setOffloads(offloads) }
            rx.withLock { $0 = Receive(queue: ActiveQueue(memory: a.memory, queue: a.queues[0], interrupt: a.interrupt)) }
            tx.withLock { $0.active = Transmit(queue: ActiveQueue(memory: a.memory, queue: a.queues[1], interrupt: a.interrupt)) }
            // Paused (a restore): the thread starts on resume.
            guard !control.paused else { return }
            do { control.worker = try RxWorker(device: self) } catch {
                rx.withLock { $0 = nil }
                tx.withLock { $0.active = nil }
                throw error
            }
        }
    }

    public func reset() {
        rxThread.withLock { control in
            control.worker?.stop()
            control.worker = nil
            rx.withLock { $0 = nil }
            tx.withLock { $0.active = nil; $0.notifiedWhilePaused = false }
        }
        let failed = transmitErrors.withLock { e in defer { e = TransmitErrors() }; return e.total }
        if failed > 0 { onHostError("\(name): transmit: \(failed) frames dropped on tap write errors since the driver started") }
    }

    public func queueNotify(_ queue: Int) {
        switch queue {
        // Paused, there is no thread to kick; the one resume starts begins with a pass.
        case Self.rxQueue: rxThread.withLock { $0.worker?.kick.signal() }
        case Self.txQueue: transmit()
        default: break
        }
    }

    // MARK: pause and resume (snapshots)

    public func pause() {
        rxThread.withLock { control in
            control.paused = true
            control.worker?.stop()
            control.worker = nil
            // The chain the thread held for the next frame goes back to the avail ring (popped
            // again after resume or restore), else the snapshot would lose that buffer. It is
            // always the last one popped, and its avail slot cannot have been reused: see
            // `VirtQueue.rewindLastPop()`.
            rx.withLock { r in
                if r?.pending != nil {
                    r?.queue.queue.rewindLastPop()
                    r?.pending = nil
                }
            }
        }
        // Waits for a transmission in flight on a vCPU thread.
        tx.withLock { $0.paused = true }
    }

    public func resume() {
        rxThread.withLock { control in
            guard control.paused else { return }
            control.paused = false
            guard rx.withLock({ $0 != nil }), control.worker == nil else { return }
            do { control.worker = try RxWorker(device: self) } catch {
                // No thread, no receive: the driver resets the device, which starts one again.
                onHostError("\(name): receive: cannot restart the receive thread: \(error)")
                rx.withLock { $0?.queue.fail(device: name, role: "receive", error) }
            }
        }
        let notified = tx.withLock { t in
            defer { t.paused = false; t.notifiedWhilePaused = false }
            return t.paused && t.notifiedWhilePaused
        }
        if notified { transmit() }
    }

    public func queueStates() -> [VirtQueue]? {
        rxThread.withLock { _ in
            guard let receive = rx.withLock({ $0?.queue.queue }), let transmit = tx.withLock({ $0.active?.queue.queue }) else { return nil }
            return [receive, transmit]
        }
    }

    // MARK: transmit (vCPU thread)

    private func transmit() {
        tx.withLock { state in
            if state.paused { state.notifiedWhilePaused = true; return }
            // Taken out of the lock's storage (and put back), so the scratch frame has one owner.
            guard var t = state.active.take() else { return }
            defer { state.active = t }
            guard !t.queue.failed else { return }
            if t.scratch.isEmpty { t.scratch = [UInt8](repeating: 0, count: Self.maxFrame) }
            var frame = t.scratch
            t.scratch = []
            defer { t.scratch = frame }
            t.queue.serveAvailable(index: Self.txQueue, device: name, role: "transmit") { chain, memory in
                let length = chain.readableLength
                if length > UInt64(Self.maxFrame) || length < UInt64(Tap.headerSize) {
                    stats.withLock { $0.txDropped += 1 }
                    return 0
                }
                var reader = ChainReader(memory: memory, buffers: chain.readable)
                var position = 0
                try frame.withUnsafeMutableBytes { dst in
                    try reader.forEachSegment(Int(length)) { address, n in
                        try memory.read(into: UnsafeMutableRawBufferPointer(rebasing: dst[position..<position + n]), at: address)
                        position += n
                    }
                }
                // A tap that cannot take the frame (full, or failing: EIO, ENOBUFS, the interface
                // down) drops it, as a NIC drops what it cannot send; the chain still completes.
                let sent: Bool
                do { sent = try frame.withUnsafeBytes { try tap.send(UnsafeRawBufferPointer(rebasing: $0[0..<Int(length)])) } }
                catch { transmitFailed(error); sent = false }
                stats.withLock {
                    if sent { $0.txFrames += 1; $0.txBytes += length - UInt64(Tap.headerSize) } else { $0.txDropped += 1 }
                }
                return 0
            }
        }
    }

    /// Tap write errors: how many, and when the last was logged (at most one line per
    /// `errorLogInterval`, the first at once).
    private struct TransmitErrors {
        var total = 0, sinceLogged = 0
        var lastLogged: UInt64? = nil
    }
    private let transmitErrors = Mutex(TransmitErrors())
    static let errorLogInterval: UInt64 = 10_000_000_000

    private func transmitFailed(_ error: any Error) {
        let now = monotonicNanoseconds()
        let line = transmitErrors.withLock { e -> String? in
            e.total += 1
            e.sinceLogged += 1
            if let last = e.lastLogged, now - last < Self.errorLogInterval { return nil }
            defer { e.lastLogged = now; e.sinceLogged = 0 }
            return "\(name): transmit: tap write failed: \(error) (\(e.sinceLogged) frame\(e.sinceLogged == 1 ? "" : "s") dropped since the last report)"
        }
        if let line { onHostError(line) }
    }

    // MARK: receive (RX thread)

    /// Moves frames from the tap into receive buffers until the tap is empty or the guest has no
    /// buffers. Returns false if the guest ran out of buffers (wait for a kick). Frames are read
    /// with one readv straight into the chain's buffers; a chain popped while the tap was empty is
    /// kept in `pending` for the next frame.
    fileprivate func receive() -> Bool {
        rx.withLock { state in
            guard var r = state, !r.queue.failed else { return false }
            defer { state = r }
            var s = r.queue
            defer { r.queue = s }
            var pending = r.pending
            defer { r.pending = pending }
            var completed = 0
            var haveBuffers = true
            do {
                while true {
                    if pending == nil {
                        guard let chain = try s.queue.pop(memory: s.memory) else { haveBuffers = false; break }
                        pending = chain
                    }
                    let chain = pending!
                    // Too small for a header and a minimal frame: return it unused rather than
                    // let a zero-length read swallow a frame.
                    if chain.writableLength < UInt64(Tap.headerSize) + 60 {
                        pending = nil
                        stats.withLock { $0.rxDropped += 1 }
                        try s.queue.addUsed(memory: s.memory, head: chain.head, length: 0)
                        completed += 1
                        continue
                    }
                    // readv takes at most IOV_MAX vectors: a longer chain (an indirect table may
                    // hold thousands) is filled through its first ones, like any chain shorter
                    // than the frame, instead of failing with EINVAL on every attempt.
                    let segments = chain.writable.prefix(GuestMemory.maxIOVectors).map { (address: $0.address, length: Int($0.length)) }
                    let memory = s.memory
                    guard let n = try memory.withIOVectors(segments, { try tap.receive(vectors: $0) }) else { break }
                    pending = nil
                    if n < Int(Tap.headerSize) {
                        stats.withLock { $0.rxDropped += 1 }
                        try s.queue.addUsed(memory: s.memory, head: chain.head, length: 0)
                    } else {
                        // num_buffers (header bytes 10–11): always 1 without VIRTIO_NET_F_MRG_RXBUF;
                        // the tap leaves those bytes alone.
                        var writer = ChainWriter(memory: s.memory, buffers: chain.writable)
                        try writer.forEachSegment(10) { _, _ in }
                        _ = try writer.write([1, 0])
                        try s.queue.addUsed(memory: s.memory, head: chain.head, length: UInt32(n))
                        stats.withLock { $0.rxFrames += 1; $0.rxBytes += UInt64(n) - UInt64(Tap.headerSize) }
                    }
                    completed += 1
                }
                if completed > 0, try s.queue.shouldNotify(memory: s.memory) { s.interrupt.signalUsedQueue(Self.rxQueue) }
            } catch is Errno {
                // A tap read error (e.g. the interface went away): count it, keep the queue usable.
                stats.withLock { $0.rxDropped += 1 }
            } catch {
                s.fail(device: name, role: "receive", error)
                return false
            }
            return haveBuffers
        }
    }
}

/// The RX thread: epoll on the tap (edge-triggered), a kick eventfd (the guest added receive
/// buffers) and a stop eventfd.
private final class RxWorker: Sendable {
    let kick: EventFD
    let stopEvent: EventFD
    let thread: PosixThread
    /// The device's count of receive threads started and not yet stopped.
    let running: ThreadCount

    enum Token: UInt64 { case tap = 1, kick, stop }

    init(device: VirtioNet) throws {
        let kick = try EventFD()
        let stopEvent = try EventFD()
        let epoll = try Epoll()
        try epoll.add(device.tap.fd, events: [.readable, .edgeTriggered], token: Token.tap.rawValue)
        try epoll.add(kick.fd, events: .readable, token: Token.kick.rawValue)
        try epoll.add(stopEvent.fd, events: .readable, token: Token.stop.rawValue)
        self.kick = kick
        self.stopEvent = stopEvent
        running = device.rxThreadsRunning
        thread = try PosixThread(name: "\(device.name)-rx") { [weak device] in
            // Frames may already be queued, and the guest already has buffers: start with a pass.
            _ = device?.receive()
            while true {
                guard let events = try? epoll.wait() else { return }
                for (token, _) in events {
                    switch Token(rawValue: token) {
                    case .stop: return
                    case .kick: kick.drain()
                    default: break
                    }
                }
                guard let device else { return }
                _ = device.receive()
            }
        }
        running.value.add(1, ordering: .acquiringAndReleasing)
    }

    func stop() {
        stopEvent.signal()
        thread.join()
        running.value.subtract(1, ordering: .acquiringAndReleasing)
    }
}

/// How many receive threads a device has running (started and not yet stopped).
fileprivate final class ThreadCount: Sendable {
    let value = Atomic<Int>(0)
}
