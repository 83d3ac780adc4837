import Memory

/// How a device talks back to the driver; implemented by the transport (MSI-X or INTx on PCI).
/// Safe to call from any thread (vCPU threads, a device's I/O thread).
public protocol VirtioInterrupt: Sendable {
    /// A used-buffer notification for queue `queue` (already filtered by `VirtQueue.shouldNotify`).
    func signalUsedQueue(_ queue: Int)
    /// The device configuration changed.
    func signalConfigChange()
    /// The device hit an error it cannot recover from (a malformed ring): set DEVICE_NEEDS_RESET
    /// and tell the driver. The device stops processing until the driver resets it.
    func deviceNeedsReset(reason: String)
}

/// What a device gets when the driver sets DRIVER_OK.
public struct VirtioActivation: Sendable {
    public let memory: GuestMemory
    /// The features both sides agreed on.
    public let features: UInt64
    /// The queues the driver enabled, validated; index = queue index (disabled ones: `ready == false`).
    public let queues: [VirtQueue]
    public let interrupt: any VirtioInterrupt

    public init(memory: GuestMemory, features: UInt64, queues: [VirtQueue], interrupt: any VirtioInterrupt) {
        self.memory = memory; self.features = features; self.queues = queues; self.interrupt = interrupt
    }
}

/// A virtio device model, independent of the transport that carries it.
public protocol VirtioDevice: AnyObject, Sendable {
    var deviceType: VirtioDeviceType { get }
    /// A short name for logs ("blk0: …").
    var name: String { get }
    /// Maximum size of each queue; the count is the number of queues.
    var queueMaxSizes: [UInt16] { get }
    /// Features offered, including transport-independent ring features and VERSION_1.
    var availableFeatures: UInt64 { get }
    /// Reads `size` bytes (1, 2, 4 or 8) of the device-specific configuration at `offset`.
    func readConfig(offset: Int, size: Int) -> UInt64
    func writeConfig(offset: Int, size: Int, value: UInt64)
    /// Starts the device (DRIVER_OK). Throws if it cannot run with this setup.
    func activate(_ activation: VirtioActivation) throws
    /// The driver notified queue `queue`. Runs on the vCPU thread that took the exit.
    func queueNotify(_ queue: Int)
    /// The driver reset the device: drop queues and in-flight state, stop I/O threads.
    func reset()

    // Snapshots: the VMM pauses every device, saves, and resumes (or, restoring, activates a
    // fresh device with the saved queues while paused, then resumes it).

    /// Stops touching guest memory and the queues: returns once no request is in flight and
    /// I/O threads are stopped; notifications meanwhile are served on `resume()`. A chain the
    /// device took but has not used is given back to the avail ring, so `queueStates()` is
    /// complete. Idempotent; fine on a device never activated. `activate` while paused sets the
    /// device up without starting its I/O.
    func pause()
    /// Undoes `pause()`: restarts I/O threads and serves notifications that came meanwhile.
    /// Nothing to do on a device that was not paused.
    func resume()
    /// The queues of an activated device as they are now, indices included (index = queue index),
    /// for a snapshot taken while paused; nil when the device is not activated.
    func queueStates() -> [VirtQueue]?
}

/// Little-endian byte image of a device's configuration structure, with bounded field access.
public struct VirtioConfigSpace: Sendable {
    public var bytes: [UInt8]
    public init(size: Int) { bytes = [UInt8](repeating: 0, count: size) }
    public init(bytes: [UInt8]) { self.bytes = bytes }

    public func read(offset: Int, size: Int) -> UInt64 {
        guard offset >= 0, size > 0, size <= 8, offset <= bytes.count - size else { return 0 }
        var v: UInt64 = 0
        for i in 0..<size { v |= UInt64(bytes[offset + i]) << (8 * UInt64(i)) }
        return v
    }

    public mutating func set<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        for i in 0..<MemoryLayout<T>.size {
            bytes[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * i))
        }
    }
}
