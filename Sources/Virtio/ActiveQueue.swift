import Memory

/// A queue of a running device as its model keeps it (behind the device's lock): the guest memory
/// and ring the driver activated, the transport's interrupt, and whether the device gave up on it.
/// A failed queue is left alone until the driver resets the device.
public struct ActiveQueue: Sendable {
    public var memory: GuestMemory
    public var queue: VirtQueue
    public var interrupt: any VirtioInterrupt
    public var failed = false

    public init(memory: GuestMemory, queue: VirtQueue, interrupt: any VirtioInterrupt) {
        self.memory = memory; self.queue = queue; self.interrupt = interrupt
    }

    /// Serves every chain the driver has made available, on the caller's thread: `serve` handles one
    /// and returns how many bytes it wrote into the chain's buffers, the chain goes on the used ring,
    /// and at the end queue `index` is signalled if the driver wants it. An error of the ring or of
    /// `serve` fails the queue (`fail(device:role:_:)`). Inlinable: `serve` is specialised in.
    @inlinable
    public mutating func serveAvailable(index: Int, device: String, role: String,
                                        _ serve: (DescriptorChain, GuestMemory) throws -> UInt32) {
        guard !failed else { return }
        do {
            var completed = 0
            while let chain = try queue.pop(memory: memory) {
                let used = try serve(chain, memory)
                try queue.addUsed(memory: memory, head: chain.head, length: used)
                completed += 1
            }
            if completed > 0, try queue.shouldNotify(memory: memory) { interrupt.signalUsedQueue(index) }
        } catch {
            fail(device: device, role: role, error)
        }
    }

    /// Gives up on the queue: DEVICE_NEEDS_RESET, reason `"DEVICE: ROLE queue: ERROR"`.
    public mutating func fail(device: String, role: String, _ error: any Error) {
        failed = true
        interrupt.deviceNeedsReset(reason: "\(device): \(role) queue: \(error)")
    }
}
