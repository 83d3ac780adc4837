import Synchronization

/// The i8042 keyboard controller with a PS/2 keyboard behind it, enough for an OS driver to find
/// both (Linux's `i8042` and `atkbd`) and for the VMM to type into the guest: controller
/// commands on port 0x64 (configuration byte, self-tests, port enable/disable, output port,
/// 0xFE pulses the CPU reset line), keyboard commands through port 0x60 (reset, identify,
/// LEDs, typematic, scan-code set, enable/disable, each acknowledged with 0xFA), an output
/// queue read through port 0x60 with status bit 0, and IRQ 1 when the configuration byte
/// enables it. There is no auxiliary (mouse) port: its self-test reports a stuck clock line.
/// Registered at 0x60 with length 5 (offset 0 = data, 4 = status/command).
public final class I8042: BusDevice {
    public static let resetCommand: UInt8 = 0xFE
    private let onRequest: @Sendable (GuestRequest) -> Void
    private let irq: (any InterruptLine)?

    /// Ctrl-Alt-Del in scancode set 1 (presses, then releases): what Firecracker's
    /// SendCtrlAltDel injects and how rtvisord asks a guest to shut down. Set 1 is what a guest
    /// sees with the controller's translation on (the default configuration byte).
    public static let ctrlAltDel: [UInt8] = [0x1D, 0x38, 0xE0, 0x53, 0xE0, 0xD3, 0xB8, 0x9D]

    /// Configuration ("command") byte bits.
    public static let configKeyboardInterrupt: UInt8 = 0x01
    public static let configSystemFlag: UInt8 = 0x04
    public static let configKeyboardDisabled: UInt8 = 0x10
    public static let configAuxDisabled: UInt8 = 0x20
    public static let configTranslate: UInt8 = 0x40
    /// Status bits.
    public static let statusOutputFull: UInt8 = 0x01
    public static let statusSystemFlag: UInt8 = 0x04
    public static let statusCommand: UInt8 = 0x08
    public static let statusUnlocked: UInt8 = 0x10

    struct State {
        var output: [UInt8] = []
        /// System flag, translation, AUX disabled, and the keyboard interrupt *off* until a driver
        /// turns it on: a guest that never programmed its PIC (test guests, early boot) would
        /// otherwise take IRQ 1 on a garbage vector when the VMM types Ctrl-Alt-Del. Such guests
        /// poll status bit 0 instead; Linux's i8042 driver sets the bit when it opens the port.
        var config: UInt8 = I8042.configSystemFlag | I8042.configAuxDisabled | I8042.configTranslate
        var lastWriteWasCommand = false
        /// A controller command waiting for its data byte (0x60, 0xD1–0xD4).
        var controllerCommand: UInt8? = nil
        /// A keyboard command waiting for its parameter (0xED, 0xF0, 0xF3).
        var keyboardCommand: UInt8? = nil
        var scanCodeSet: UInt8 = 2
    }
    private let state = Mutex(State())

    public init(irq: (any InterruptLine)? = nil, onRequest: @escaping @Sendable (GuestRequest) -> Void) {
        self.irq = irq
        self.onRequest = onRequest
    }

    /// Types `codes` as if from the keyboard (they are already in the set the guest reads).
    public func injectScancodes(_ codes: [UInt8]) {
        let raise = state.withLock { s in enqueue(&s, codes) }
        if raise { pulseIRQ() }
    }

    public func read(offset: UInt64, size: Int) -> UInt64 {
        switch offset {
        case 4:
            return UInt64(state.withLock { s in
                (s.output.isEmpty ? 0 : Self.statusOutputFull) | (s.config & Self.configSystemFlag)
                    | (s.lastWriteWasCommand ? Self.statusCommand : 0) | Self.statusUnlocked
            })
        case 0:
            let (byte, more, interrupts) = state.withLock { s -> (UInt8, Bool, Bool) in
                guard !s.output.isEmpty else { return (0, false, false) }
                let b = s.output.removeFirst()
                return (b, !s.output.isEmpty, s.config & Self.configKeyboardInterrupt != 0)
            }
            // The next byte raises the interrupt again, as the controller refills its buffer.
            if more && interrupts { pulseIRQ() }
            return UInt64(byte)
        default:
            return 0
        }
    }

    public func write(offset: UInt64, size: Int, value: UInt64) {
        let byte = UInt8(truncatingIfNeeded: value)
        var reset = false
        let raise: Bool = state.withLock { s in
            switch offset {
            case 4:
                s.lastWriteWasCommand = true
                s.controllerCommand = nil
                return controllerCommand(&s, byte, reset: &reset)
            case 0:
                s.lastWriteWasCommand = false
                if let command = s.controllerCommand {
                    s.controllerCommand = nil
                    return controllerData(&s, command, byte, reset: &reset)
                }
                return keyboardByte(&s, byte)
            default:
                return false
            }
        }
        if reset { onRequest(.reset) }
        if raise { pulseIRQ() }
    }

    /// Returns whether the output buffer went from empty to full with interrupts on.
    private func enqueue(_ s: inout State, _ bytes: [UInt8]) -> Bool {
        guard !bytes.isEmpty else { return false }
        let wasEmpty = s.output.isEmpty
        s.output.append(contentsOf: bytes)
        if s.output.count > 64 { s.output.removeFirst(s.output.count - 64) } // a real buffer is tiny
        return wasEmpty && s.config & Self.configKeyboardInterrupt != 0
    }

    private func controllerCommand(_ s: inout State, _ command: UInt8, reset: inout Bool) -> Bool {
        switch command {
        case 0x20: return enqueue(&s, [s.config])                 // read configuration byte
        case 0x60, 0xD1, 0xD2, 0xD3, 0xD4: s.controllerCommand = command; return false
        case 0xA7: s.config |= Self.configAuxDisabled; return false
        case 0xA8: s.config &= ~Self.configAuxDisabled; return false
        case 0xA9: return enqueue(&s, [0x01])                     // AUX test: clock line stuck low (no mouse)
        case 0xAA: s.config |= Self.configSystemFlag; return enqueue(&s, [0x55]) // self-test passed
        case 0xAB: return enqueue(&s, [0x00])                     // keyboard interface test passed
        case 0xAD: s.config |= Self.configKeyboardDisabled; return false
        case 0xAE: s.config &= ~Self.configKeyboardDisabled; return false
        case 0xC0: return enqueue(&s, [0x00])                     // input port
        case 0xD0: return enqueue(&s, [0x01 | 0x02])              // output port: reset high, A20 on
        case 0xF0...0xFF:
            // Pulse output lines; bit 0 low pulses reset (0xFE is the usual one).
            if command & 1 == 0 { reset = true }
            return false
        default: return false
        }
    }

    private func controllerData(_ s: inout State, _ command: UInt8, _ byte: UInt8, reset: inout Bool) -> Bool {
        switch command {
        case 0x60: s.config = byte; return false
        case 0xD1: if byte & 1 == 0 { reset = true }; return false  // output port, bit 0 = reset line
        case 0xD2: return enqueue(&s, [byte])                        // as if the keyboard sent it
        default: return false                                        // 0xD3/0xD4: no AUX device
        }
    }

    /// A byte for the keyboard: a command, or the parameter of the previous one.
    private func keyboardByte(_ s: inout State, _ byte: UInt8) -> Bool {
        let ack: UInt8 = 0xFA
        if let command = s.keyboardCommand {
            s.keyboardCommand = nil
            if command == 0xF0 {
                if byte == 0 { return enqueue(&s, [ack, s.scanCodeSet]) }
                if (1...3).contains(byte) { s.scanCodeSet = byte }
            }
            return enqueue(&s, [ack])
        }
        switch byte {
        case 0xED, 0xF0, 0xF3: s.keyboardCommand = byte; return enqueue(&s, [ack])
        case 0xEE: return enqueue(&s, [0xEE])                        // echo
        case 0xF2: return enqueue(&s, [ack, 0xAB, 0x83])             // identify: MF2 keyboard
        case 0xFF: s.scanCodeSet = 2; return enqueue(&s, [ack, 0xAA]) // reset, self-test passed
        default: return enqueue(&s, [ack])                           // F4 enable, F5 disable, F6 defaults, …
        }
    }

    /// IRQ 1 is edge-triggered on the ISA bus.
    private func pulseIRQ() {
        irq?.setLevel(true)
        irq?.setLevel(false)
    }

    // MARK: snapshot

    /// The controller and keyboard state, for a snapshot of the VM.
    public struct SavedState: Codable, Sendable, Equatable {
        /// Bytes waiting to be read through port 0x60, oldest first.
        public var output: [UInt8]
        /// The configuration ("command") byte.
        public var config: UInt8
        public var lastWriteWasCommand: Bool
        /// A controller command waiting for its data byte.
        public var controllerCommand: UInt8?
        /// A keyboard command waiting for its parameter.
        public var keyboardCommand: UInt8?
        public var scanCodeSet: UInt8

        public init(output: [UInt8], config: UInt8, lastWriteWasCommand: Bool, controllerCommand: UInt8?,
                    keyboardCommand: UInt8?, scanCodeSet: UInt8) {
            self.output = output; self.config = config; self.lastWriteWasCommand = lastWriteWasCommand
            self.controllerCommand = controllerCommand; self.keyboardCommand = keyboardCommand; self.scanCodeSet = scanCodeSet
        }
    }

    public func saveState() -> SavedState {
        state.withLock { s in
            SavedState(output: s.output, config: s.config, lastWriteWasCommand: s.lastWriteWasCommand,
                       controllerCommand: s.controllerCommand, keyboardCommand: s.keyboardCommand, scanCodeSet: s.scanCodeSet)
        }
    }

    /// Takes over a saved controller. IRQ 1 is an edge, already delivered or pending in the
    /// interrupt controller (restored on its own), so nothing is raised here. The output queue
    /// is trimmed to the controller's 64 bytes (a snapshot file may be corrupt).
    public func restoreState(_ saved: SavedState) {
        state.withLock { s in
            s = State(output: Array(saved.output.suffix(64)), config: saved.config,
                      lastWriteWasCommand: saved.lastWriteWasCommand, controllerCommand: saved.controllerCommand,
                      keyboardCommand: saved.keyboardCommand, scanCodeSet: saved.scanCodeSet)
        }
    }
}

/// The exit port (0xf4 by default, QEMU's isa-debug-exit convention): a byte written there ends
/// the VM. 0 = power off, 1 = reset, n ≥ 2 = the guest reports failure n. Guests without ACPI
/// (the test inmates, and the minimal Linux with `emukvm.exit_port=`) power off this way.
public final class ExitPort: BusDevice {
    private let onRequest: @Sendable (GuestRequest) -> Void

    public init(onRequest: @escaping @Sendable (GuestRequest) -> Void) { self.onRequest = onRequest }

    public func read(offset: UInt64, size: Int) -> UInt64 { 0xFF }

    public func write(offset: UInt64, size: Int, value: UInt64) {
        switch UInt8(truncatingIfNeeded: value) {
        case 0: onRequest(.powerOff)
        case 1: onRequest(.reset)
        case let code: onRequest(.failure(code: code))
        }
    }
}

/// The boot-time marker (like Firecracker's boot timer): the guest's init writes `magic` here
/// when it is up, and the VMM records the time since the VM was created.
public final class BootMarker: BusDevice {
    public static let magic: UInt8 = 123
    private let onMarker: @Sendable () -> Void
    private let seen = Mutex(0)

    public init(onMarker: @escaping @Sendable () -> Void) { self.onMarker = onMarker }

    public var count: Int { seen.withLock { $0 } }

    public func read(offset: UInt64, size: Int) -> UInt64 { 0 }

    public func write(offset: UInt64, size: Int, value: UInt64) {
        guard offset == 0, UInt8(truncatingIfNeeded: value) == Self.magic else { return }
        seen.withLock { $0 += 1 }
        onMarker()
    }
}
