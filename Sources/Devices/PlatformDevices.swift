import Synchronization

/// Just enough of the i8042 keyboard controller for the PC reset path: command 0xFE on port
/// 0x64 pulses the CPU reset line. Registered at 0x60 with length 5 (offset 0 = data, 4 = command).
public final class I8042: BusDevice {
    public static let resetCommand: UInt8 = 0xFE
    private let onRequest: @Sendable (GuestRequest) -> Void
    /// Scancodes waiting in the output buffer (injected by the VMM, e.g. Ctrl-Alt-Del).
    private let keyboardQueue = Mutex<[UInt8]>([])

    public init(onRequest: @escaping @Sendable (GuestRequest) -> Void) { self.onRequest = onRequest }

    /// Ctrl-Alt-Del in scancode set 1 (presses, then releases): what Firecracker's
    /// SendCtrlAltDel injects and how rtvisord asks a guest to shut down. The guest polls the
    /// status port (bit 0, output buffer full) and reads the codes from port 0x60; no IRQ 1 is
    /// raised (this controller model has no keyboard interrupt or command set).
    public static let ctrlAltDel: [UInt8] = [0x1D, 0x38, 0xE0, 0x53, 0xE0, 0xD3, 0xB8, 0x9D]

    public func injectScancodes(_ codes: [UInt8]) { keyboardQueue.withLock { $0.append(contentsOf: codes) } }

    public func read(offset: UInt64, size: Int) -> UInt64 {
        // Status (0x64): bit 0 when a scancode is waiting; data (0x60): the next one.
        switch offset {
        case 4: return keyboardQueue.withLock { $0.isEmpty ? 0 : 1 }
        case 0: return UInt64(keyboardQueue.withLock { $0.isEmpty ? 0 : $0.removeFirst() })
        default: return 0
        }
    }

    public func write(offset: UInt64, size: Int, value: UInt64) {
        if offset == 4, UInt8(truncatingIfNeeded: value) == Self.resetCommand { onRequest(.reset) }
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
