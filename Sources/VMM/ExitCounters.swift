import KVM
import Synchronization
import VMMInterface

/// One vCPU's KVM exits by kind (`VMExitKind`), for rtvisord's statistics. Only the vCPU's own
/// thread counts, with a relaxed load and store: a plain `mov` on x86, no locked instruction and
/// no syscall on the exit path. The control thread reads relaxed at any time; a total it reads
/// may be a few exits behind, never torn. Built with `-DRTVISOR_NO_EXIT_COUNTERS`, the vCPU loop
/// does not count at all (scripts/bench-exits.sh measures the difference).
public final class ExitCounters: Sendable {
    static let kinds = VMExitKind.allCases
    private let counts: InlineArray<9, Atomic<UInt64>>

    public init() {
        precondition(Self.kinds.count == 9, "one counter per VMExitKind")
        counts = InlineArray { _ in Atomic<UInt64>(0) }
    }

    /// Counts one exit; call only from the vCPU's own thread.
    @inline(__always)
    public func count(_ exit: VCPUExit) {
        let slot = Self.slot(exit)
        counts[slot].store(counts[slot].load(ordering: .relaxed) &+ 1, ordering: .relaxed)
    }

    /// `VMExitKind.allCases`' position of the exit's kind.
    @inline(__always)
    static func slot(_ exit: VCPUExit) -> Int {
        switch exit {
        case .portIO: 0
        case .mmio: 1
        case .interrupted: 2
        case .halt: 3
        case .shutdown: 4
        case .systemEvent: 5
        case .internalError: 6
        case .failEntry: 7
        case .other: 8
        }
    }

    /// The kinds seen so far (never-seen kinds left out), keyed by `VMExitKind` raw value.
    public var snapshot: [String: UInt64] {
        var out: [String: UInt64] = [:]
        for (i, kind) in Self.kinds.enumerated() {
            let n = counts[i].load(ordering: .relaxed)
            if n > 0 { out[kind.rawValue] = n }
        }
        return out
    }
}
