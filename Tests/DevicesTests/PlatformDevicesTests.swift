import Testing
import Synchronization
import Glibc
@testable import Devices

@Suite("I8042")
struct I8042Tests {
    @Test func resetCommandOnTheCommandPortRequestsReset() {
        let requests = Recorder<GuestRequest>()
        let kbd = I8042(onRequest: { requests.append($0) })
        kbd.write(offset: 4, size: 1, value: 0xFE)
        #expect(requests.all == [.reset])
    }

    @Test func otherWritesDoNothing() {
        let requests = Recorder<GuestRequest>()
        let kbd = I8042(onRequest: { requests.append($0) })
        kbd.write(offset: 0, size: 1, value: 0xFE)   // data port
        kbd.write(offset: 4, size: 1, value: 0xFF)
        kbd.write(offset: 4, size: 1, value: 0xAD)   // disable keyboard
        kbd.write(offset: 4, size: 1, value: 0x60)   // write command byte
        kbd.write(offset: 1, size: 1, value: 0xFE)
        #expect(requests.all.isEmpty)
    }

    @Test func statusAndDataReadAsEmpty() {
        let kbd = I8042(onRequest: { _ in })
        let status = kbd.read(offset: 4, size: 1)
        #expect(status & 0x02 == 0, "input buffer empty: the reset write is accepted")
        #expect(status & 0x01 == 0, "output buffer empty")
        #expect(status & 0x04 != 0, "system flag, as after a BIOS self-test")
        #expect(kbd.read(offset: 0, size: 1) == 0)
    }

    /// What Linux's i8042 driver does at probe time, and what atkbd sends the keyboard.
    @Test func controllerAndKeyboardProtocol() {
        let line = RecordingLine()
        let kbd = I8042(irq: line, onRequest: { _ in })
        func command(_ c: UInt8) { kbd.write(offset: 4, size: 1, value: UInt64(c)) }
        func data(_ d: UInt8) { kbd.write(offset: 0, size: 1, value: UInt64(d)) }
        func drain() -> [UInt8] {
            var out: [UInt8] = []
            while kbd.read(offset: 4, size: 1) & 1 == 1 && out.count < 100 { out.append(UInt8(kbd.read(offset: 0, size: 1))) }
            return out
        }
        command(0xAA); #expect(drain() == [0x55])                      // controller self-test
        command(0x20); let config = drain()                             // read configuration byte
        #expect(config == [0x64])                                       // sys, AUX off, translate; IRQ 1 off
        command(0x60); data(0x74)                                       // write it (interrupts off, kbd off)
        command(0x20); #expect(drain() == [0x74])
        #expect(kbd.read(offset: 4, size: 1) & 0x08 != 0, "last write was a command")
        command(0xA9); #expect(drain() == [0x01])                       // no AUX port
        command(0xAB); #expect(drain() == [0x00])                       // keyboard interface test
        command(0xD3); data(0x5A); #expect(drain().isEmpty)             // AUX loopback: nothing there
        command(0xAE)                                                   // enable keyboard
        command(0x60); data(0x65)                                       // interrupts back on
        let pulsesBefore = line.rises
        data(0xF2); #expect(drain() == [0xFA, 0xAB, 0x83])              // identify
        #expect(line.rises >= pulsesBefore + 3, "IRQ 1 for each byte")
        data(0xED); data(0x07); #expect(drain() == [0xFA, 0xFA])        // LEDs + parameter
        data(0xF0); data(0x00); #expect(drain() == [0xFA, 0xFA, 0x02])  // get scan-code set
        data(0xF4); #expect(drain() == [0xFA])                          // enable scanning
        data(0xFF); #expect(drain() == [0xFA, 0xAA])                    // keyboard reset
        data(0xEE); #expect(drain() == [0xEE])                          // echo
        command(0xD2); data(0x1C); #expect(drain() == [0x1C])           // write keyboard output buffer
        kbd.injectScancodes(I8042.ctrlAltDel)
        #expect(drain() == I8042.ctrlAltDel)
        #expect(!line.high, "edge: the line ends low")
    }

    @Test func injectedCodesRaiseIRQ1OnlyWhenEnabled() {
        let line = RecordingLine()
        let kbd = I8042(irq: line, onRequest: { _ in })
        kbd.write(offset: 4, size: 1, value: 0x60); kbd.write(offset: 0, size: 1, value: 0x64) // IRQ off
        kbd.injectScancodes([0x1D])
        #expect(line.rises == 0)
        #expect(kbd.read(offset: 0, size: 1) == 0x1D)                   // still readable by polling
        kbd.write(offset: 4, size: 1, value: 0x60); kbd.write(offset: 0, size: 1, value: 0x65)
        kbd.injectScancodes([0x1D, 0x9D])
        #expect(line.rises == 1)
        _ = kbd.read(offset: 0, size: 1)
        #expect(line.rises == 2, "the second byte interrupts again")
    }

    @Test func outputPortAndPulseResetTheMachine() {
        for (cmd, value) in [(UInt8(0xFE), nil), (0xF0, nil), (0xD1, UInt8(0xFE))] as [(UInt8, UInt8?)] {
            let requests = Recorder<GuestRequest>()
            let kbd = I8042(onRequest: { requests.append($0) })
            kbd.write(offset: 4, size: 1, value: UInt64(cmd))
            if let value { kbd.write(offset: 0, size: 1, value: UInt64(value)) }
            #expect(requests.all == [.reset], "command \(cmd)")
        }
    }
}
