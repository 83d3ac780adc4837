import Synchronization

/// An MSI message: the address/data pair a device writes to interrupt a CPU.
public struct MsiMessage: Equatable, Sendable {
    public var address: UInt64
    public var data: UInt32
    public init(address: UInt64, data: UInt32) { self.address = address; self.data = data }
}

/// Where a device's MSI-X vectors go. The VMM implements it with KVM GSI routes and irqfds; tests
/// record the calls. Both methods may be called from any thread.
public protocol MsiVectorSink: Sendable {
    /// The vector now delivers `message`; nil when it is masked or MSI-X is disabled.
    func route(vector: Int, message: MsiMessage?)
    /// Deliver the vector (it is routed and unmasked).
    func fire(vector: Int)
}

/// The MSI-X table and pending-bit array of one function (PCI 3.0 6.8.2), with the capability's
/// enable and function-mask bits. Masked vectors set their pending bit and fire on unmask.
public final class MsixTable: Sendable {
    public let vectorCount: Int
    private let sink: any MsiVectorSink

    /// One table entry as the guest wrote it.
    public struct Entry: Codable, Equatable, Sendable {
        public var addressLow: UInt32 = 0
        public var addressHigh: UInt32 = 0
        public var data: UInt32 = 0
        public var control: UInt32 = 1 // masked at reset
        public var masked: Bool { control & 1 != 0 }
        public var message: MsiMessage { MsiMessage(address: UInt64(addressHigh) << 32 | UInt64(addressLow), data: data) }

        public init(addressLow: UInt32 = 0, addressHigh: UInt32 = 0, data: UInt32 = 0, control: UInt32 = 1) {
            self.addressLow = addressLow; self.addressHigh = addressHigh; self.data = data; self.control = control
        }
    }
    struct State {
        var entries: [Entry]
        var pending: [Bool]
        var enabled = false
        var functionMasked = false
        /// What each vector is routed to now, so the sink only hears about changes.
        var routed: [MsiMessage?]
    }
    private let state: Mutex<State>

    public static let entrySize = 16
    /// MSI-X message control bits.
    public static let controlEnable: UInt16 = 1 << 15
    public static let controlFunctionMask: UInt16 = 1 << 14

    public init(vectorCount: Int, sink: any MsiVectorSink) {
        precondition(vectorCount >= 1 && vectorCount <= 2048)
        self.vectorCount = vectorCount
        self.sink = sink
        state = Mutex(State(entries: Array(repeating: Entry(), count: vectorCount),
                            pending: Array(repeating: false, count: vectorCount),
                            routed: Array(repeating: nil, count: vectorCount)))
    }

    public var tableSize: UInt64 { UInt64(vectorCount * Self.entrySize) }
    public var pbaSize: UInt64 { UInt64((vectorCount + 63) / 64 * 8) }

    /// The capability body after ID and next pointer: message control, table and PBA locations.
    public func capabilityBody(tableBar: Int, tableOffset: UInt32, pbaBar: Int, pbaOffset: UInt32) -> (body: [UInt8], writable: [UInt8]) {
        let control = UInt16(vectorCount - 1)
        let table = tableOffset | UInt32(tableBar)
        let pba = pbaOffset | UInt32(pbaBar)
        var body: [UInt8] = [UInt8(control & 0xFF), UInt8(control >> 8)]
        for v in [table, pba] { for i in 0..<4 { body.append(UInt8(truncatingIfNeeded: v >> (8 * UInt32(i)))) } }
        // Only enable and function mask are writable.
        return (body, [0, 0xC0, 0, 0, 0, 0, 0, 0, 0, 0])
    }

    public var isEnabled: Bool { state.withLock { $0.enabled } }

    /// The guest wrote the capability's message control.
    public func setControl(_ control: UInt16) {
        state.withLock { s in
            s.enabled = control & Self.controlEnable != 0
            s.functionMasked = control & Self.controlFunctionMask != 0
            update(&s)
        }
    }

    public func readTable(offset: UInt64, size: Int) -> UInt64 {
        guard size == 4 || size == 8, offset % UInt64(size) == 0, offset + UInt64(size) <= tableSize else { return 0 }
        return state.withLock { s in
            var v: UInt64 = 0
            for k in 0..<(size / 4) {
                let o = Int(offset) + 4 * k
                let e = s.entries[o / Self.entrySize]
                let word: UInt32 = switch (o % Self.entrySize) / 4 {
                case 0: e.addressLow
                case 1: e.addressHigh
                case 2: e.data
                default: e.control
                }
                v |= UInt64(word) << (32 * UInt64(k))
            }
            return v
        }
    }

    public func writeTable(offset: UInt64, size: Int, value: UInt64) {
        guard size == 4 || size == 8, offset % UInt64(size) == 0, offset + UInt64(size) <= tableSize else { return }
        state.withLock { s in
            for k in 0..<(size / 4) {
                let o = Int(offset) + 4 * k
                let word = UInt32(truncatingIfNeeded: value >> (32 * UInt64(k)))
                let i = o / Self.entrySize
                switch (o % Self.entrySize) / 4 {
                case 0: s.entries[i].addressLow = word & ~3
                case 1: s.entries[i].addressHigh = word
                case 2: s.entries[i].data = word
                default: s.entries[i].control = word & 1
                }
            }
            update(&s)
        }
    }

    public func readPBA(offset: UInt64, size: Int) -> UInt64 {
        guard size == 4 || size == 8, offset % UInt64(size) == 0, offset + UInt64(size) <= pbaSize else { return 0 }
        return state.withLock { s in
            var v: UInt64 = 0
            for bit in 0..<(size * 8) {
                let vector = Int(offset) * 8 + bit
                if vector < vectorCount && s.pending[vector] { v |= 1 << UInt64(bit) }
            }
            return v
        }
    }

    /// The device raises `vector`: delivered now, or left pending while masked.
    /// Returns false when MSI-X is disabled (the caller falls back to INTx).
    @discardableResult
    public func signal(vector: Int) -> Bool {
        guard vector >= 0 && vector < vectorCount else { return false }
        return state.withLock { s in
            guard s.enabled else { return false }
            if s.functionMasked || s.entries[vector].masked { s.pending[vector] = true }
            else { sink.fire(vector: vector) }
            return true
        }
    }

    /// Back to power-on state (device reset by the guest or the VMM).
    public func reset() {
        state.withLock { s in
            s.entries = Array(repeating: Entry(), count: vectorCount)
            s.pending = Array(repeating: false, count: vectorCount)
            s.enabled = false
            s.functionMasked = false
            update(&s)
        }
    }

    // MARK: snapshot

    /// The table, the pending bits and the capability's two control bits, for a snapshot.
    public struct SavedState: Codable, Sendable, Equatable {
        public var entries: [Entry]
        public var pending: [Bool]
        public var enabled: Bool
        public var functionMasked: Bool

        public init(entries: [Entry], pending: [Bool], enabled: Bool, functionMasked: Bool) {
            self.entries = entries; self.pending = pending; self.enabled = enabled; self.functionMasked = functionMasked
        }
    }

    /// A saved table that does not fit this function.
    public struct RestoreError: Error, Equatable, CustomStringConvertible {
        public let reason: String
        public var description: String { reason }
    }

    public func saveState() -> SavedState {
        state.withLock { SavedState(entries: $0.entries, pending: $0.pending, enabled: $0.enabled, functionMasked: $0.functionMasked) }
    }

    /// Takes over a saved table and tells the sink where every vector goes now (its message when
    /// MSI-X is enabled and neither the function nor the vector is masked, else nil), so the
    /// VMM rebuilds its routes from the table. Fires nothing: an interrupt in flight at the
    /// snapshot is in the restored interrupt controller, and a pending bit stays pending.
    public func restoreState(_ saved: SavedState) throws(RestoreError) {
        guard saved.entries.count == vectorCount, saved.pending.count == vectorCount else {
            throw RestoreError(reason: "MSI-X table of \(saved.entries.count) entries and \(saved.pending.count) pending bits, expected \(vectorCount)")
        }
        state.withLock { s in
            // Reserved bits as the table's writes leave them.
            s.entries = saved.entries.map { e in
                Entry(addressLow: e.addressLow & ~3, addressHigh: e.addressHigh, data: e.data, control: e.control & 1)
            }
            s.pending = saved.pending
            s.enabled = saved.enabled
            s.functionMasked = saved.functionMasked
            for v in 0..<vectorCount {
                let live = s.enabled && !s.functionMasked && !s.entries[v].masked
                s.routed[v] = live ? s.entries[v].message : nil
                sink.route(vector: v, message: s.routed[v])
            }
        }
    }

    /// Re-routes vectors whose effective message changed and fires newly unmasked pending ones.
    private func update(_ s: inout State) {
        for v in 0..<vectorCount {
            let live = s.enabled && !s.functionMasked && !s.entries[v].masked
            let message: MsiMessage? = live ? s.entries[v].message : nil
            if message != s.routed[v] {
                sink.route(vector: v, message: message)
                s.routed[v] = message
            }
            if live && s.pending[v] {
                s.pending[v] = false
                sink.fire(vector: v)
            }
        }
    }
}
