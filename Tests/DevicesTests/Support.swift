import Synchronization
@testable import Devices

/// Collects values a device hands to a closure.
final class Recorder<T: Sendable>: Sendable {
    private let items = Mutex<[T]>([])
    func append(_ item: T) { items.withLock { $0.append(item) } }
    var all: [T] { items.withLock { $0 } }
}

/// A device that answers reads with a tag and the offset, and records what reached it.
final class ProbeDevice: BusDevice {
    let tag: UInt64
    private let log = Mutex<[(write: Bool, offset: UInt64, size: Int, value: UInt64)]>([])

    init(tag: UInt64) { self.tag = tag }

    func read(offset: UInt64, size: Int) -> UInt64 {
        log.withLock { $0.append((false, offset, size, 0)) }
        return tag << 32 | offset
    }

    func write(offset: UInt64, size: Int, value: UInt64) {
        log.withLock { $0.append((true, offset, size, value)) }
    }

    var accesses: [(write: Bool, offset: UInt64, size: Int, value: UInt64)] { log.withLock { $0 } }
}
