import Synchronization

/// A device model reachable through port I/O or MMIO. Devices never see KVM: the VMM turns exits
/// into these calls, and devices talk back through `InterruptLine` and closures.
public protocol BusDevice: AnyObject, Sendable {
    /// `offset` is relative to the range the device was registered at; `size` is 1, 2, 4 or 8.
    func read(offset: UInt64, size: Int) -> UInt64
    func write(offset: UInt64, size: Int, value: UInt64)
}

/// An interrupt input of the guest's interrupt controller.
public protocol InterruptLine: Sendable {
    func setLevel(_ high: Bool)
}

/// What a guest asked the machine to do through a platform device.
public enum GuestRequest: Equatable, Sendable {
    case powerOff
    case reset
    /// The guest reported a failure code (test inmates do, through the exit port).
    case failure(code: UInt8)
}

public enum BusError: Error, Equatable, CustomStringConvertible {
    case overlap(name: String, base: UInt64, length: UInt64, existing: String)
    case emptyRange(name: String)

    public var description: String {
        switch self {
        case let .overlap(n, b, l, e): "\(n) at 0x\(String(b, radix: 16))+0x\(String(l, radix: 16)) overlaps \(e)"
        case let .emptyRange(n): "\(n) has an empty address range"
        }
    }
}

/// Maps address ranges to devices: one instance for port I/O, one for MMIO. Immutable once built,
/// so vCPU threads look up without locking; each device serialises itself.
public final class Bus: Sendable {
    public struct Range: Sendable {
        public let base: UInt64
        public let length: UInt64
        public let name: String
        public let device: any BusDevice
        public init(base: UInt64, length: UInt64, name: String, device: any BusDevice) {
            self.base = base; self.length = length; self.name = name; self.device = device
        }
    }

    public let name: String
    private let ranges: [Range]
    /// Accesses no device claimed, per address: answered with all-ones, never a crash.
    public let unhandled = UnhandledAccesses()

    public init(name: String, ranges: [Range]) throws {
        let sorted = ranges.sorted { $0.base < $1.base }
        for r in sorted where r.length == 0 { throw BusError.emptyRange(name: r.name) }
        for r in sorted where r.base > UInt64.max - r.length {
            throw BusError.overlap(name: r.name, base: r.base, length: r.length, existing: "the end of the address space")
        }
        for (a, b) in zip(sorted, sorted.dropFirst()) where a.base + a.length > b.base {
            throw BusError.overlap(name: b.name, base: b.base, length: b.length, existing: a.name)
        }
        self.name = name
        self.ranges = sorted
    }

    /// The range containing `address`, by binary search.
    public func lookup(_ address: UInt64) -> Range? {
        var lo = 0, hi = ranges.count
        while lo < hi {
            let mid = (lo + hi) / 2
            let r = ranges[mid]
            if address < r.base { hi = mid }
            else if address >= r.base + r.length { lo = mid + 1 }
            else { return r }
        }
        return nil
    }

    public func read(_ address: UInt64, size: Int) -> UInt64 {
        if let r = lookup(address) { return r.device.read(offset: address - r.base, size: size) }
        unhandled.record(address, write: false)
        return size >= 8 ? UInt64.max : (UInt64(1) << (UInt64(size) * 8)) - 1
    }

    public func write(_ address: UInt64, size: Int, value: UInt64) {
        if let r = lookup(address) { r.device.write(offset: address - r.base, size: size, value: value); return }
        unhandled.record(address, write: true)
    }
}

/// Counts accesses to addresses with no device, for the exit summary and debugging. The guest
/// chooses the addresses: only the first `maxAddresses` distinct ones are counted one by one,
/// accesses elsewhere only in `overflow`, so a guest writing to ever-new addresses cannot grow
/// the VMM's memory.
public final class UnhandledAccesses: Sendable {
    public struct Count: Equatable, Sendable { public var reads = 0; public var writes = 0 }
    public static let maxAddresses = 256
    private struct State { var perAddress: [UInt64: Count] = [:]; var total = 0; var overflow = 0 }
    private let state = Mutex(State())

    public init() {}

    func record(_ address: UInt64, write: Bool) {
        state.withLock { s in
            s.total += 1
            guard s.perAddress[address] != nil || s.perAddress.count < Self.maxAddresses else { s.overflow += 1; return }
            if write { s.perAddress[address, default: Count()].writes += 1 } else { s.perAddress[address, default: Count()].reads += 1 }
        }
    }

    /// Per address, for the first `maxAddresses` distinct addresses.
    public var snapshot: [UInt64: Count] { state.withLock { $0.perAddress } }
    /// Every unhandled access, counted or not.
    public var total: Int { state.withLock { $0.total } }
    /// Accesses at addresses beyond the first `maxAddresses`.
    public var overflow: Int { state.withLock { $0.overflow } }
}
