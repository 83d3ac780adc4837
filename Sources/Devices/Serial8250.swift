import Synchronization

/// A 16550A-compatible UART (the PC's COM1 at 0x3f8, IRQ 4). Transmission is instantaneous:
/// THR is always empty, so the guest never waits. Input arrives through `enqueueInput`.
public final class Serial8250: BusDevice {
    // Register offsets and bits (see the PC16550D data sheet).
    static let ierRxData: UInt8 = 0x01
    static let ierTHRE: UInt8 = 0x02
    static let iirNone: UInt8 = 0x01
    static let iirTHRE: UInt8 = 0x02
    static let iirRxData: UInt8 = 0x04
    static let iirFIFOs: UInt8 = 0xC0
    static let lcrDLAB: UInt8 = 0x80
    static let mcrLoop: UInt8 = 0x10
    static let lsrDataReady: UInt8 = 0x01
    static let lsrOverrun: UInt8 = 0x02
    static let lsrTHRE: UInt8 = 0x20
    static let lsrTEMT: UInt8 = 0x40
    /// Like a 16550A, input beyond this is dropped (and reported as an overrun).
    public static let rxCapacity = 4096

    struct State {
        var ier: UInt8 = 0
        var lcr: UInt8 = 0
        var mcr: UInt8 = 0x08 // OUT2
        var scr: UInt8 = 0
        var dll: UInt8 = 0x0C // 9600 baud
        var dlm: UInt8 = 0
        var fifoEnabled = false
        var threPending = false
        var overrun = false
        var rx: [UInt8] = []
        var rxHead = 0
        var lineHigh = false

        var rxCount: Int { rx.count - rxHead }

        mutating func pop() -> UInt8? {
            guard rxHead < rx.count else { return nil }
            let b = rx[rxHead]
            rxHead += 1
            if rxHead == rx.count { rx.removeAll(keepingCapacity: true); rxHead = 0 }
            return b
        }

        var interruptIdentification: UInt8 {
            let fifo = fifoEnabled ? Serial8250.iirFIFOs : 0
            if ier & Serial8250.ierRxData != 0 && rxCount > 0 { return Serial8250.iirRxData | fifo }
            if ier & Serial8250.ierTHRE != 0 && threPending { return Serial8250.iirTHRE | fifo }
            return Serial8250.iirNone | fifo
        }

        var interruptPending: Bool { interruptIdentification & Serial8250.iirNone == 0 }
    }

    private let state = Mutex(State())
    private let interrupt: any InterruptLine
    private let output: @Sendable (UInt8) -> Void

    public init(interrupt: any InterruptLine, output: @escaping @Sendable (UInt8) -> Void) {
        self.interrupt = interrupt
        self.output = output
    }

    /// Updates the IRQ line after a state change; only edges reach the interrupt controller.
    private func sync(_ s: inout State) -> Bool? {
        let high = s.interruptPending
        guard high != s.lineHigh else { return nil }
        s.lineHigh = high
        return high
    }

    public func read(offset: UInt64, size: Int) -> UInt64 {
        var edge: Bool? = nil
        let v: UInt8 = state.withLock { s in
            let v: UInt8
            switch offset {
            case 0:
                if s.lcr & Self.lcrDLAB != 0 { v = s.dll } else { v = s.pop() ?? 0 }
            case 1: v = s.lcr & Self.lcrDLAB != 0 ? s.dlm : s.ier
            case 2:
                v = s.interruptIdentification
                // Reading IIR acknowledges a THRE interrupt it reports.
                if v & 0x0F == Self.iirTHRE { s.threPending = false }
            case 3: v = s.lcr
            case 4: v = s.mcr
            case 5:
                var lsr = Self.lsrTHRE | Self.lsrTEMT
                if s.rxCount > 0 { lsr |= Self.lsrDataReady }
                if s.overrun { lsr |= Self.lsrOverrun; s.overrun = false }
                v = lsr
            case 6:
                if s.mcr & Self.mcrLoop != 0 {
                    // Loopback: DTR→DSR, RTS→CTS, OUT1→RI, OUT2→DCD (Linux's probe checks this).
                    let m = s.mcr
                    v = ((m & 0x01) << 5) | ((m & 0x02) << 3) | ((m & 0x04) << 4) | ((m & 0x08) << 4)
                } else {
                    v = 0xB0 // DCD | DSR | CTS
                }
            case 7: v = s.scr
            default: v = 0xFF
            }
            edge = sync(&s)
            return v
        }
        if let edge { interrupt.setLevel(edge) }
        return UInt64(v)
    }

    public func write(offset: UInt64, size: Int, value: UInt64) {
        let b = UInt8(truncatingIfNeeded: value)
        var edge: Bool? = nil
        var transmit: UInt8? = nil
        state.withLock { s in
            switch offset {
            case 0:
                if s.lcr & Self.lcrDLAB != 0 { s.dll = b; break }
                if s.mcr & Self.mcrLoop != 0 {
                    if s.rxCount < Self.rxCapacity { s.rx.append(b) } else { s.overrun = true }
                } else {
                    transmit = b
                }
                s.threPending = true
            case 1:
                if s.lcr & Self.lcrDLAB != 0 { s.dlm = b; break }
                let enablingTHRE = (b & Self.ierTHRE != 0) && (s.ier & Self.ierTHRE == 0)
                s.ier = b & 0x0F
                if enablingTHRE { s.threPending = true } // THR is empty, so that interrupts at once
            case 2:
                s.fifoEnabled = b & 0x01 != 0
                if b & 0x02 != 0 { s.rx.removeAll(); s.rxHead = 0 }
            case 3: s.lcr = b
            case 4: s.mcr = b & 0x1F
            case 7: s.scr = b
            default: break
            }
            edge = sync(&s)
        }
        if let transmit { output(transmit) }
        if let edge { interrupt.setLevel(edge) }
    }

    /// Bytes typed on the console; returns how many were accepted.
    @discardableResult
    public func enqueueInput(_ bytes: some Sequence<UInt8>) -> Int {
        var edge: Bool? = nil
        let accepted: Int = state.withLock { s in
            var n = 0
            for b in bytes {
                if s.rxCount >= Self.rxCapacity { s.overrun = true; break }
                s.rx.append(b); n += 1
            }
            edge = sync(&s)
            return n
        }
        if let edge { interrupt.setLevel(edge) }
        return accepted
    }

    // MARK: snapshot

    /// The UART's registers and unread input, for a snapshot of the VM.
    public struct SavedState: Codable, Sendable, Equatable {
        public var ier: UInt8
        public var lcr: UInt8
        public var mcr: UInt8
        public var scr: UInt8
        public var dll: UInt8
        public var dlm: UInt8
        public var fifoEnabled: Bool
        public var threPending: Bool
        public var overrun: Bool
        /// Received bytes the guest has not read yet, oldest first.
        public var rx: [UInt8]
        /// The level the UART drives its interrupt line to.
        public var lineHigh: Bool

        public init(ier: UInt8 = 0, lcr: UInt8 = 0, mcr: UInt8 = 0x08, scr: UInt8 = 0, dll: UInt8 = 0x0C, dlm: UInt8 = 0,
                    fifoEnabled: Bool = false, threPending: Bool = false, overrun: Bool = false, rx: [UInt8] = [],
                    lineHigh: Bool = false) {
            self.ier = ier; self.lcr = lcr; self.mcr = mcr; self.scr = scr; self.dll = dll; self.dlm = dlm
            self.fifoEnabled = fifoEnabled; self.threPending = threPending; self.overrun = overrun
            self.rx = rx; self.lineHigh = lineHigh
        }
    }

    public func saveState() -> SavedState {
        state.withLock { s in
            SavedState(ier: s.ier, lcr: s.lcr, mcr: s.mcr, scr: s.scr, dll: s.dll, dlm: s.dlm,
                       fifoEnabled: s.fifoEnabled, threPending: s.threPending, overrun: s.overrun,
                       rx: Array(s.rx[s.rxHead...]), lineHigh: s.lineHigh)
        }
    }

    /// Takes over a saved UART and drives the interrupt line to its saved level, so the device
    /// and the interrupt controller (restored on its own) agree. Values a guest could not have
    /// written are trimmed as the registers trim them (a snapshot file may be corrupt).
    public func restoreState(_ saved: SavedState) {
        let level: Bool = state.withLock { s in
            s = State(ier: saved.ier & 0x0F, lcr: saved.lcr, mcr: saved.mcr & 0x1F, scr: saved.scr, dll: saved.dll,
                      dlm: saved.dlm, fifoEnabled: saved.fifoEnabled, threPending: saved.threPending,
                      overrun: saved.overrun, rx: Array(saved.rx.prefix(Self.rxCapacity)), rxHead: 0,
                      lineHigh: saved.lineHigh)
            return s.lineHigh
        }
        interrupt.setLevel(level)
    }
}
