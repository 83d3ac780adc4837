import Devices
import Synchronization

/// An interrupt line that records every level change a device drives (DevicesTests, PCITests).
public final class RecordingLine: InterruptLine {
    private let calls = Mutex<[Bool]>([])
    public init() {}
    public func setLevel(_ high: Bool) { calls.withLock { $0.append(high) } }
    public var levels: [Bool] { calls.withLock { $0 } }
    /// Low-to-high transitions (edges), and the level now.
    public var rises: Int { zip([false] + levels, levels).filter { !$0 && $1 }.count }
    public var high: Bool { levels.last ?? false }
}
