import Synchronization

/// Lets racing threads start together (VirtioTests, PCITests): each calls `wait()` and spins
/// until all `parties` have arrived, so their next steps overlap as much as the CPUs allow.
public final class StartLine: Sendable {
    private let arrived = Atomic<Int>(0)
    private let parties: Int
    public init(parties: Int = 2) { self.parties = parties }
    public func wait() {
        arrived.add(1, ordering: .acquiringAndReleasing)
        while arrived.load(ordering: .acquiring) < parties {}
    }
}

/// Lines a component logged, collected from any thread.
public final class RecordedLines: Sendable {
    private let lines = Mutex<[String]>([])
    public init() {}
    public func append(_ line: String) { lines.withLock { $0.append(line) } }
    public var all: [String] { lines.withLock { $0 } }
}
