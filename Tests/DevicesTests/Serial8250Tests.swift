import Testing
@testable import Devices
import TestSupport

/// Register offsets from the 0x3f8 base.
private enum Reg {
    static let rbr: UInt64 = 0, thr: UInt64 = 0, dll: UInt64 = 0
    static let ier: UInt64 = 1, dlm: UInt64 = 1
    static let iir: UInt64 = 2, fcr: UInt64 = 2
    static let lcr: UInt64 = 3, mcr: UInt64 = 4, lsr: UInt64 = 5, msr: UInt64 = 6, scr: UInt64 = 7
}

@Suite("Serial8250")
struct Serial8250Tests {
    let line = RecordingLine()
    let output = Recorder<UInt8>()
    let uart: Serial8250

    init() {
        let output = self.output
        uart = Serial8250(interrupt: line, output: { output.append($0) })
    }

    func rd(_ offset: UInt64) -> UInt8 { UInt8(uart.read(offset: offset, size: 1)) }
    func wr(_ offset: UInt64, _ value: UInt8) { uart.write(offset: offset, size: 1, value: UInt64(value)) }

    // MARK: Transmit

    @Test func transmittedBytesReachTheOutput() {
        for b in "Hi!\n".utf8 { wr(Reg.thr, b) }
        #expect(output.all == Array("Hi!\n".utf8))
        #expect(line.levels.isEmpty, "no interrupts without IER")
    }

    @Test func lineStatusAlwaysReportsTransmitterEmpty() {
        #expect(rd(Reg.lsr) == 0x60)
        wr(Reg.thr, 0x41)
        #expect(rd(Reg.lsr) == 0x60)
    }

    // MARK: Divisor latch

    @Test func dlabSwitchesRegistersZeroAndOneToTheDivisorLatch() {
        #expect(rd(Reg.ier) == 0)
        wr(Reg.lcr, 0x80)
        #expect(rd(Reg.lcr) == 0x80)
        #expect(rd(Reg.dll) == 0x0C, "9600 baud by default")
        #expect(rd(Reg.dlm) == 0x00)
        wr(Reg.dll, 0x01) // 115200 baud
        wr(Reg.dlm, 0x02)
        #expect(rd(Reg.dll) == 0x01)
        #expect(rd(Reg.dlm) == 0x02)
        #expect(output.all.isEmpty, "divisor writes are not transmitted")

        wr(Reg.lcr, 0x03) // 8N1, DLAB off
        #expect(rd(Reg.lcr) == 0x03)
        #expect(rd(Reg.ier) == 0, "the IER write went to DLM")
        #expect(rd(Reg.rbr) == 0, "RBR is empty")
        wr(Reg.thr, 0x5A)
        #expect(output.all == [0x5A])

        wr(Reg.lcr, 0x83)
        #expect(rd(Reg.dll) == 0x01 && rd(Reg.dlm) == 0x02, "the divisor survives")
    }

    // MARK: Receive

    @Test func inputIsReadInOrder() {
        #expect(uart.enqueueInput(Array("abc".utf8)) == 3)
        #expect(rd(Reg.lsr) == 0x61)
        #expect(rd(Reg.rbr) == UInt8(ascii: "a"))
        #expect(rd(Reg.rbr) == UInt8(ascii: "b"))
        #expect(rd(Reg.lsr) & 0x01 == 0x01)
        #expect(rd(Reg.rbr) == UInt8(ascii: "c"))
        #expect(rd(Reg.lsr) == 0x60)
        #expect(rd(Reg.rbr) == 0)
        // The queue keeps working after draining.
        uart.enqueueInput([1, 2])
        uart.enqueueInput([3])
        #expect([rd(Reg.rbr), rd(Reg.rbr), rd(Reg.rbr)] == [1, 2, 3])
    }

    @Test func overrunBeyondCapacityIsReportedOnce() {
        let full = [UInt8](repeating: 0x55, count: Serial8250.rxCapacity)
        #expect(uart.enqueueInput(full) == Serial8250.rxCapacity)
        #expect(rd(Reg.lsr) == 0x61, "full but no overrun yet")
        #expect(uart.enqueueInput([0x66, 0x67]) == 0)
        #expect(rd(Reg.lsr) == 0x63)
        #expect(rd(Reg.lsr) == 0x61, "reading LSR clears OE")
        // The first bytes are intact, the dropped ones never appear.
        var drained: [UInt8] = []
        while rd(Reg.lsr) & 1 != 0 { drained.append(rd(Reg.rbr)) }
        #expect(drained == full)
    }

    @Test func oversizedInputIsCutAtCapacity() {
        #expect(uart.enqueueInput([UInt8](repeating: 1, count: Serial8250.rxCapacity + 10)) == Serial8250.rxCapacity)
        #expect(rd(Reg.lsr) == 0x63)
    }

    @Test func fifoControlClearsReceiveQueueAndSetsFIFOBits() {
        uart.enqueueInput(Array("junk".utf8))
        wr(Reg.fcr, 0x07) // enable, clear RX, clear TX
        #expect(rd(Reg.lsr) == 0x60)
        #expect(rd(Reg.rbr) == 0)
        #expect(rd(Reg.iir) == 0xC1)
        wr(Reg.fcr, 0x01) // enable without clearing keeps data
        uart.enqueueInput([9])
        #expect(rd(Reg.lsr) == 0x61)
        wr(Reg.fcr, 0x00)
        #expect(rd(Reg.iir) == 0x01)
        #expect(rd(Reg.rbr) == 9)
    }

    // MARK: Interrupts

    @Test func noInterruptPendingByDefault() {
        #expect(rd(Reg.iir) == 0x01)
    }

    @Test func enablingTHREInterruptsAtOnceAndReadingIIRAcknowledges() {
        wr(Reg.ier, 0x02)
        #expect(rd(Reg.ier) == 0x02)
        #expect(line.levels == [true])
        #expect(rd(Reg.iir) == 0x02)
        #expect(line.levels == [true, false])
        #expect(rd(Reg.iir) == 0x01)
        #expect(line.levels == [true, false])

        // Each transmitted byte empties THR again.
        wr(Reg.thr, 0x41)
        #expect(line.levels == [true, false, true])
        #expect(rd(Reg.iir) == 0x02)
        #expect(line.levels == [true, false, true, false])

        // Re-writing IER with THRE still set is not a new enable.
        wr(Reg.ier, 0x02)
        #expect(rd(Reg.iir) == 0x01)
        #expect(line.levels == [true, false, true, false])
    }

    @Test func receiveInterruptTakesPriorityOverTHRE() {
        wr(Reg.ier, 0x03)
        #expect(line.levels == [true])
        uart.enqueueInput([0x31, 0x32])
        #expect(line.levels == [true], "the line is already high: no new edge")
        #expect(rd(Reg.iir) == 0x04)
        #expect(rd(Reg.iir) == 0x04, "reading IIR does not acknowledge RX data")
        _ = rd(Reg.rbr)
        #expect(rd(Reg.iir) == 0x04)
        _ = rd(Reg.rbr)
        // Data gone: THRE is what is left, and reading IIR acknowledges it.
        #expect(rd(Reg.iir) == 0x02)
        #expect(rd(Reg.iir) == 0x01)
        #expect(line.levels == [true, false])
    }

    @Test func receiveInterruptEdgesFollowTheQueue() {
        wr(Reg.ier, 0x01)
        #expect(line.levels.isEmpty)
        uart.enqueueInput([1, 2])
        #expect(line.levels == [true])
        uart.enqueueInput([3])
        #expect(line.levels == [true])
        _ = rd(Reg.rbr); _ = rd(Reg.rbr)
        #expect(line.levels == [true])
        _ = rd(Reg.rbr)
        #expect(line.levels == [true, false])
        uart.enqueueInput([4])
        #expect(line.levels == [true, false, true])
        wr(Reg.ier, 0x00) // masking drops the line
        #expect(line.levels == [true, false, true, false])
        #expect(rd(Reg.iir) == 0x01)
    }

    @Test func ierKeepsOnlyTheFourDefinedBits() {
        wr(Reg.ier, 0xF0)
        #expect(rd(Reg.ier) == 0x00)
        #expect(line.levels.isEmpty)
    }

    // MARK: Modem control and loopback

    @Test func modemStatusOutsideLoopback() {
        #expect(rd(Reg.mcr) == 0x08, "OUT2 set at reset")
        #expect(rd(Reg.msr) == 0xB0)
        wr(Reg.mcr, 0xFF)
        #expect(rd(Reg.mcr) == 0x1F)
    }

    @Test func loopbackReflectsMCRInMSRAsLinuxProbes() {
        // serial8250 autoconfig: MCR = LOOP | 0x0A, then expects MSR & 0xF0 == 0x90.
        wr(Reg.mcr, 0x1A)
        #expect(rd(Reg.msr) & 0xF0 == 0x90)
        wr(Reg.mcr, 0x10)
        #expect(rd(Reg.msr) & 0xF0 == 0x00)
        wr(Reg.mcr, 0x1F)
        #expect(rd(Reg.msr) & 0xF0 == 0xF0)
        wr(Reg.mcr, 0x11) // DTR → DSR
        #expect(rd(Reg.msr) & 0xF0 == 0x20)
        wr(Reg.mcr, 0x12) // RTS → CTS
        #expect(rd(Reg.msr) & 0xF0 == 0x10)
        wr(Reg.mcr, 0x14) // OUT1 → RI
        #expect(rd(Reg.msr) & 0xF0 == 0x40)
        wr(Reg.mcr, 0x18) // OUT2 → DCD
        #expect(rd(Reg.msr) & 0xF0 == 0x80)
        wr(Reg.mcr, 0x08)
        #expect(rd(Reg.msr) == 0xB0, "leaving loopback restores the fixed status")
    }

    @Test func loopbackSendsTransmittedBytesToTheReceiver() {
        wr(Reg.mcr, 0x18)
        wr(Reg.thr, 0xA5)
        wr(Reg.thr, 0x5A)
        #expect(output.all.isEmpty)
        #expect(rd(Reg.lsr) == 0x61)
        #expect(rd(Reg.rbr) == 0xA5)
        #expect(rd(Reg.rbr) == 0x5A)
        #expect(rd(Reg.lsr) == 0x60)
        wr(Reg.mcr, 0x08)
        wr(Reg.thr, 0x42)
        #expect(output.all == [0x42])
        #expect(rd(Reg.lsr) == 0x60)
    }

    @Test func loopbackReceiveRaisesTheRXInterrupt() {
        wr(Reg.ier, 0x01)
        wr(Reg.mcr, 0x18)
        wr(Reg.thr, 0x33)
        #expect(rd(Reg.iir) == 0x04)
        #expect(line.levels == [true])
        _ = rd(Reg.rbr)
        #expect(line.levels == [true, false])
    }

    @Test func scratchRegisterRoundTrips() {
        wr(Reg.scr, 0xA5)
        #expect(rd(Reg.scr) == 0xA5)
        wr(Reg.scr, 0x5A)
        #expect(rd(Reg.scr) == 0x5A)
    }

    @Test func offsetsPastTheUARTReadAllOnes() {
        #expect(uart.read(offset: 8, size: 1) == 0xFF)
    }
}
