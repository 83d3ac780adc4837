import Testing
import Synchronization
import Glibc
@testable import Devices
import TestSupport

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

@Suite("ExitPort")
struct ExitPortTests {
    @Test(arguments: [
        (UInt64(0), GuestRequest.powerOff),
        (1, .reset),
        (2, .failure(code: 2)),
        (7, .failure(code: 7)),
        (255, .failure(code: 255)),
        (0x100, .powerOff), // a byte port: only the low byte counts
        (0x107, .failure(code: 7)),
    ])
    func valueSelectsTheRequest(value: UInt64, expected: GuestRequest) {
        let requests = Recorder<GuestRequest>()
        let port = ExitPort(onRequest: { requests.append($0) })
        port.write(offset: 0, size: 1, value: value)
        #expect(requests.all == [expected])
    }

    @Test func readsAllOnes() {
        #expect(ExitPort(onRequest: { _ in }).read(offset: 0, size: 1) == 0xFF)
    }
}

@Suite("BootMarker")
struct BootMarkerTests {
    @Test func onlyTheMagicAtOffsetZeroCounts() {
        let marks = Recorder<Int>()
        let marker = BootMarker(onMarker: { marks.append(1) })
        #expect(marker.count == 0)
        marker.write(offset: 0, size: 1, value: 122)
        marker.write(offset: 1, size: 1, value: 123)
        marker.write(offset: 0, size: 1, value: 0)
        #expect(marker.count == 0)
        #expect(marks.all.isEmpty)

        marker.write(offset: 0, size: 1, value: 123)
        #expect(marker.count == 1)
        #expect(marks.all.count == 1)
        marker.write(offset: 0, size: 4, value: 0x1234_567B) // low byte 123
        #expect(marker.count == 2)
        #expect(marks.all.count == 2)
        #expect(BootMarker.magic == 123)
        #expect(marker.read(offset: 0, size: 1) == 0)
    }
}

@Suite("CMOSClock")
struct CMOSClockTests {
    /// 2026-11-22 10:35:45 UTC, a Sunday.
    static let instant: time_t = {
        var tm = Glibc.tm()
        tm.tm_year = 2026 - 1900
        tm.tm_mon = 10
        tm.tm_mday = 22
        tm.tm_hour = 10
        tm.tm_min = 35
        tm.tm_sec = 45
        return timegm(&tm)
    }()

    private func read(_ clock: CMOSClock, _ register: UInt8) -> UInt8 {
        clock.write(offset: 0, size: 1, value: UInt64(register))
        return UInt8(clock.read(offset: 1, size: 1))
    }

    @Test func instantIsWhatWeThinkItIs() {
        #expect(Self.instant == 1_795_343_745)
    }

    @Test func timeAndDateRegistersAreBCD() {
        let t = Self.instant
        let clock = CMOSClock(now: { t })
        #expect(read(clock, 0x00) == 0x45) // seconds
        #expect(read(clock, 0x02) == 0x35) // minutes
        #expect(read(clock, 0x04) == 0x10) // hours, 24-hour mode
        #expect(read(clock, 0x06) == 0x01) // day of week: Sunday = 1
        #expect(read(clock, 0x07) == 0x22) // day of month
        #expect(read(clock, 0x08) == 0x11) // month
        #expect(read(clock, 0x09) == 0x26) // year
        #expect(read(clock, 0x32) == 0x20) // century
    }

    @Test func statusRegisters() {
        let t = Self.instant
        let clock = CMOSClock(now: { t })
        let a = read(clock, 0x0A)
        #expect(a & 0x80 == 0, "UIP clear: the guest never waits for an update")
        #expect(a == 0x26)
        #expect(read(clock, 0x0B) == 0x02, "24-hour, BCD (DM clear)")
        #expect(read(clock, 0x0B) & 0x04 == 0)
        #expect(read(clock, 0x0D) == 0x80, "valid RAM and time")
    }

    @Test func indexIgnoresTheNMIMaskBit() {
        let t = Self.instant
        let clock = CMOSClock(now: { t })
        #expect(read(clock, 0x80 | 0x04) == 0x10)
        #expect(read(clock, 0x80 | 0x00) == 0x45)
        #expect(read(clock, 0x80 | 0x32) == 0x20)
    }

    @Test func unknownRegistersAndTheIndexPortRead() {
        let t = Self.instant
        let clock = CMOSClock(now: { t })
        #expect(read(clock, 0x0E) == 0)
        #expect(read(clock, 0x10) == 0)
        #expect(clock.read(offset: 0, size: 1) == 0xFF)
        // Writing the data port does not change the index.
        clock.write(offset: 0, size: 1, value: 0x02)
        clock.write(offset: 1, size: 1, value: 0x59)
        #expect(clock.read(offset: 1, size: 1) == 0x35)
    }

    @Test func everyReadConsultsTheClock() {
        let now = Mutex<time_t>(Self.instant)
        let clock = CMOSClock(now: { now.withLock { $0 } })
        #expect(read(clock, 0x00) == 0x45)
        now.withLock { $0 += 14 }
        #expect(read(clock, 0x00) == 0x59)
        now.withLock { $0 += 1 }
        #expect(read(clock, 0x00) == 0x00)
        #expect(read(clock, 0x02) == 0x36)
    }

    @Test func centuryAndDayOfWeekAtOtherDates() {
        // 1999-12-31 23:59:59 UTC, a Friday.
        var tm = Glibc.tm()
        tm.tm_year = 99; tm.tm_mon = 11; tm.tm_mday = 31; tm.tm_hour = 23; tm.tm_min = 59; tm.tm_sec = 59
        let t = timegm(&tm)
        let clock = CMOSClock(now: { t })
        #expect(read(clock, 0x09) == 0x99)
        #expect(read(clock, 0x32) == 0x19)
        #expect(read(clock, 0x06) == 0x06)
        #expect(read(clock, 0x08) == 0x12)
        #expect(read(clock, 0x07) == 0x31)
        #expect(read(clock, 0x04) == 0x23)
    }
}
