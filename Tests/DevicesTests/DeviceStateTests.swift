import Foundation
import Testing
@testable import Devices
import TestSupport

/// What a snapshot file does to a saved state: JSON out and back in.
func jsonRoundTrip<T: Codable>(_ value: T) throws -> T {
    try JSONDecoder().decode(T.self, from: JSONEncoder().encode(value))
}

/// Issue 18: the legacy devices' state survives save → JSON → restore into a fresh device.
@Suite("device snapshots")
struct DeviceStateTests {
    @Test func serialRegistersInputAndInterruptLineSurviveARestore() throws {
        let line = RecordingLine()
        let uart = Serial8250(interrupt: line, output: { _ in })
        func wr(_ o: UInt64, _ v: UInt8) { uart.write(offset: o, size: 1, value: UInt64(v)) }
        wr(3, 0x80); wr(0, 0x01); wr(1, 0x02)   // divisor 0x0201 (DLAB)
        wr(3, 0x1B)                              // 8E1, DLAB off
        wr(4, 0x0B)                              // DTR, RTS, OUT2
        wr(7, 0x5C)                              // scratch
        wr(2, 0x01)                              // FIFOs on
        wr(1, 0x01)                              // RX data interrupt
        uart.enqueueInput(Array("hello".utf8))
        #expect(uart.read(offset: 0, size: 1) == UInt64(UInt8(ascii: "h")))   // one byte consumed
        #expect(line.high)

        let saved = try jsonRoundTrip(uart.saveState())
        #expect(saved.rx == Array("ello".utf8))
        #expect(saved.lineHigh)

        let restoredLine = RecordingLine()
        let restored = Serial8250(interrupt: restoredLine, output: { _ in })
        restored.restoreState(saved)
        #expect(restoredLine.levels == [true], "the line is driven to the saved level")
        #expect(restored.saveState() == saved)
        // Every register reads the same on both (reads of RBR consume: compare the sequences).
        for offset: UInt64 in [1, 2, 3, 4, 5, 6, 7] {
            #expect(restored.read(offset: offset, size: 1) == uart.read(offset: offset, size: 1), "offset \(offset)")
        }
        var original: [UInt64] = [], copy: [UInt64] = []
        for _ in 0..<5 { original.append(uart.read(offset: 0, size: 1)); copy.append(restored.read(offset: 0, size: 1)) }
        #expect(copy == original)
        #expect(copy.prefix(4) == Array("ello".utf8).map(UInt64.init)[...])
        #expect(!restoredLine.high, "reading the input empty lowers the line as on the original")
        restored.write(offset: 3, size: 1, value: 0x9B)  // DLAB on again: the divisor came along
        #expect(restored.read(offset: 0, size: 1) == 0x01 && restored.read(offset: 1, size: 1) == 0x02)
    }

    @Test func serialRestoreTrimsWhatNoGuestCouldHaveWritten() {
        let uart = Serial8250(interrupt: RecordingLine(), output: { _ in })
        uart.restoreState(.init(ier: 0xFF, mcr: 0xFF, rx: [UInt8](repeating: 1, count: Serial8250.rxCapacity + 10)))
        let s = uart.saveState()
        #expect(s.ier == 0x0F && s.mcr == 0x1F && s.rx.count == Serial8250.rxCapacity)
    }

    @Test func keyboardControllerStateSurvivesARestore() throws {
        let kbd = I8042(onRequest: { _ in })
        func command(_ c: UInt8) { kbd.write(offset: 4, size: 1, value: UInt64(c)) }
        func data(_ d: UInt8) { kbd.write(offset: 0, size: 1, value: UInt64(d)) }
        command(0x60); data(0x47)                 // configuration byte: IRQ 1 on, no translation
        data(0xF0); data(3)                       // scan-code set 3 (ACK, ACK queued)
        data(0xF0)                                // a keyboard command waiting for its parameter
        kbd.injectScancodes([0x1C, 0xF0, 0x1C])
        command(0xD1)                             // a controller command waiting for its data

        let saved = try jsonRoundTrip(kbd.saveState())
        #expect(saved.config == 0x47 && saved.scanCodeSet == 3 && saved.keyboardCommand == 0xF0 && saved.controllerCommand == 0xD1)
        let requests = Recorder<GuestRequest>()
        let restored = I8042(onRequest: { requests.append($0) })
        restored.restoreState(saved)
        #expect(restored.saveState() == saved)
        #expect(restored.read(offset: 4, size: 1) == kbd.read(offset: 4, size: 1))
        // The pending 0xD1 takes its data byte: bit 0 clear pulses reset.
        restored.write(offset: 0, size: 1, value: 0xFE)
        #expect(requests.all == [.reset])
        kbd.write(offset: 0, size: 1, value: 0xFE)
        // Then the queue reads the same, and the parameter of 0xF0 (0 = query) answers set 3.
        for k in [kbd, restored] { k.write(offset: 0, size: 1, value: 0) }
        var a: [UInt64] = [], b: [UInt64] = []
        while kbd.read(offset: 4, size: 1) & 1 == 1 { a.append(kbd.read(offset: 0, size: 1)) }
        while restored.read(offset: 4, size: 1) & 1 == 1 { b.append(restored.read(offset: 0, size: 1)) }
        #expect(b == a)
        #expect(b == [0xFA, 0xFA, 0xFA, 0x1C, 0xF0, 0x1C, 0xFA, 0x03])
        restored.write(offset: 4, size: 1, value: 0x20)
        #expect(restored.read(offset: 0, size: 1) == 0x47)
    }

    @Test func cmosIndexSurvivesARestore() throws {
        let clock = CMOSClock(now: { 1_700_000_000 })
        clock.write(offset: 0, size: 1, value: 0x80 | 0x09)  // NMI masked, register 9 (year)
        let saved = try jsonRoundTrip(clock.saveState())
        #expect(saved.index == 0x09)
        let restored = CMOSClock(now: { 1_700_000_000 })
        #expect(restored.read(offset: 1, size: 1) != clock.read(offset: 1, size: 1), "a fresh clock reads seconds")
        restored.restoreState(saved)
        #expect(restored.read(offset: 1, size: 1) == 0x23)   // 2023, BCD
        #expect(restored.read(offset: 1, size: 1) == clock.read(offset: 1, size: 1))
    }
}
