#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// A read-only MC146818 real-time clock (ports 0x70/0x71) reporting host UTC in BCD, so guests
/// read a sane wall clock instead of all-ones. No alarms, no periodic interrupts, no NVRAM writes.
public final class CMOSClock: BusDevice {
    private let index = Mutex<UInt8>(0)
    private let now: @Sendable () -> time_t

    public init(now: @escaping @Sendable () -> time_t = { time(nil) }) { self.now = now }

    static func bcd(_ v: Int32) -> UInt8 { UInt8((v / 10) << 4 | (v % 10)) }

    public func register(_ r: UInt8) -> UInt8 {
        var t = now()
        var tm = Glibc.tm()
        gmtime_r(&t, &tm)
        switch r {
        case 0x00: return Self.bcd(tm.tm_sec)
        case 0x02: return Self.bcd(tm.tm_min)
        case 0x04: return Self.bcd(tm.tm_hour)
        case 0x06: return Self.bcd(tm.tm_wday + 1)
        case 0x07: return Self.bcd(tm.tm_mday)
        case 0x08: return Self.bcd(tm.tm_mon + 1)
        case 0x09: return Self.bcd(tm.tm_year % 100)
        case 0x32: return Self.bcd(19 + tm.tm_year / 100)
        case 0x0A: return 0x26 // 32.768 kHz time base, no update in progress
        case 0x0B: return 0x02 // 24-hour mode, BCD
        case 0x0D: return 0x80 // valid RAM and time
        default: return 0
        }
    }

    public func read(offset: UInt64, size: Int) -> UInt64 {
        guard offset == 1 else { return 0xFF }
        return UInt64(register(index.withLock { $0 }))
    }

    public func write(offset: UInt64, size: Int, value: UInt64) {
        // Bit 7 of the index port is the NMI mask; only the register number matters here.
        if offset == 0 { index.withLock { $0 = UInt8(truncatingIfNeeded: value) & 0x7F } }
    }

    // MARK: snapshot

    /// The index register: all the clock keeps (the time is the host's, read live; NVRAM writes
    /// are ignored).
    public struct SavedState: Codable, Sendable, Equatable {
        public var index: UInt8
        public init(index: UInt8) { self.index = index }
    }

    public func saveState() -> SavedState { SavedState(index: index.withLock { $0 }) }

    public func restoreState(_ saved: SavedState) { index.withLock { $0 = saved.index & 0x7F } }
}
