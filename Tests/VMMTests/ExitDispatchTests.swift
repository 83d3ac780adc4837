import Arch
import CKVM
import Devices
import KVM
import Memory
import Synchronization
import Testing
@testable import VMM

/// The vCPU loop's exit dispatch, without /dev/kvm: exits are simulated, devices recorded.
@Suite struct ExitDispatchTests {
    /// A device that answers reads with a fixed value and records writes.
    final class Register: BusDevice {
        let value: UInt64
        let writes = Mutex<[(offset: UInt64, size: Int, value: UInt64)]>([])
        init(value: UInt64) { self.value = value }
        func read(offset: UInt64, size: Int) -> UInt64 { value >> (8 * offset) }
        func write(offset: UInt64, size: Int, value: UInt64) { writes.withLock { $0.append((offset, size, value)) } }
        var written: [UInt64] { writes.withLock { $0.map(\.value) } }
    }

    struct StoppedVCPU: ExitingVCPU {
        var id = 1
        var rip: UInt64? = 0x1000
        /// Identity-mapped like the inmates' code.
        func instructionPointer() -> UInt64? { rip }
        func physicalAddress(of linear: UInt64) -> UInt64? { linear }
    }

    let port = Register(value: 0xA5)
    let mmioDevice = Register(value: 0x1122_3344_5566_7788)
    let dispatch: ExitDispatch
    let memory: GuestMemory

    init() throws {
        memory = try GuestMemory.standard(bytes: 1 << 20)
        dispatch = ExitDispatch(
            pio: try Bus(name: "pio", ranges: [.init(base: GuestLayout.com1Port, length: 8, name: "uart", device: port)]),
            mmio: try Bus(name: "mmio", ranges: [.init(base: GuestLayout.bootMarker, length: 0x1000, name: "reg", device: mmioDevice)]),
            memory: memory)
    }

    @Test func aPortWriteReachesTheDeviceAndTheGuestRunsOn() {
        var action: ExitAction?
        _ = PortIO.simulated(port: UInt16(GuestLayout.com1Port), size: 1, isWrite: true, values: [0x41]) { io in
            action = dispatch.handle(.portIO(io), on: StoppedVCPU())
        }
        #expect(action == .resume)
        #expect(port.written == [0x41])
    }

    @Test func aPortReadGetsTheDevicesValue() {
        let values = PortIO.simulated(port: UInt16(GuestLayout.com1Port), size: 1, isWrite: false, values: [0]) { io in
            #expect(dispatch.handle(.portIO(io), on: StoppedVCPU()) == .resume)
        }
        #expect(values == [0xA5])
    }

    @Test func stringPortIOReachesTheDeviceOncePerElement() {
        _ = PortIO.simulated(port: UInt16(GuestLayout.com1Port), size: 1, isWrite: true, values: [0x68, 0x69, 0x0A]) { io in
            _ = dispatch.handle(.portIO(io), on: StoppedVCPU())
        }
        #expect(port.written == [0x68, 0x69, 0x0A])
    }

    @Test func aPortNoDeviceClaimsReadsAllOnesAndIsCounted() {
        let values = PortIO.simulated(port: 0x80, size: 2, isWrite: false, values: [0]) { io in
            #expect(dispatch.handle(.portIO(io), on: StoppedVCPU()) == .resume)
        }
        #expect(values == [0xFFFF])
        #expect(dispatch.pio.unhandled.total == 1)
    }

    @Test func mmioReadsAndWritesReachTheDevice() {
        let read = MMIOAccess.simulated(address: GuestLayout.bootMarker, size: 4, isWrite: false, value: 0) { m in
            #expect(dispatch.handle(.mmio(m), on: StoppedVCPU()) == .resume)
        }
        #expect(read == 0x5566_7788)
        _ = MMIOAccess.simulated(address: GuestLayout.bootMarker + 8, size: 8, isWrite: true, value: 0xDEAD_BEEF_0000_0001) { m in
            #expect(dispatch.handle(.mmio(m), on: StoppedVCPU()) == .resume)
        }
        #expect(mmioDevice.written == [0xDEAD_BEEF_0000_0001])
    }

    @Test func aKickResumesAfterClearingTheFlag() {
        #expect(dispatch.handle(.interrupted, on: StoppedVCPU()) == .resumeAfterKick)
    }

    @Test func shutdownIsATripleFaultWithTheRIP() {
        #expect(dispatch.handle(.shutdown, on: StoppedVCPU(id: 2, rip: 0x100377)) == .stop(.tripleFault(vcpu: 2, rip: 0x100377)))
        #expect(dispatch.handle(.shutdown, on: StoppedVCPU(id: 0, rip: nil)) == .stop(.tripleFault(vcpu: 0, rip: nil)))
    }

    @Test func systemEventsAreResetPowerOffOrUnexpected() {
        #expect(dispatch.handle(.systemEvent(type: SystemEventType.reset), on: StoppedVCPU()) == .stop(.reset))
        #expect(dispatch.handle(.systemEvent(type: SystemEventType.shutdown), on: StoppedVCPU()) == .stop(.powerOff))
        #expect(dispatch.handle(.systemEvent(type: SystemEventType.crash), on: StoppedVCPU(id: 3))
                == .stop(.unexpectedExit(vcpu: 3, reason: UInt32(KVM_EXIT_SYSTEM_EVENT))))
    }

    @Test func haltFailEntryAndUnknownExitsStopTheVM() {
        #expect(dispatch.handle(.halt, on: StoppedVCPU()) == .stop(.unexpectedExit(vcpu: 1, reason: UInt32(KVM_EXIT_HLT))))
        #expect(dispatch.handle(.failEntry(reason: 0x21), on: StoppedVCPU()) == .stop(.entryFailure(vcpu: 1, reason: 0x21)))
        #expect(dispatch.handle(.other(reason: 99), on: StoppedVCPU()) == .stop(.unexpectedExit(vcpu: 1, reason: 99)))
    }

    /// KVM reports the failing instruction's bytes itself (flag bit 0, size, bytes).
    @Test func anEmulationFailureNamesTheInstructionFromKVMsBytes() {
        // cmpxchg16b [rsi]: f0 48 0f c7 0e (5 bytes), packed after the size byte.
        let packed: UInt64 = 0x0E_C7_0F_48_F0_05
        let action = dispatch.handle(.internalError(suberror: InternalErrorSuberror.emulation, data: [1, packed, 0]), on: StoppedVCPU())
        guard case let .stop(.internalError(vcpu, sub, rip, bytes, hint)) = action else { Issue.record("\(action)"); return }
        #expect(vcpu == 1 && sub == InternalErrorSuberror.emulation && rip == 0x1000)
        #expect(bytes == [0xF0, 0x48, 0x0F, 0xC7, 0x0E])
        #expect(hint != nil)
    }

    /// Without KVM's bytes, they are read from guest memory at RIP.
    @Test func anEmulationFailureReadsTheInstructionFromGuestMemory() throws {
        try memory.write([0xF3, 0x0F, 0xB8, 0xC0], at: GuestAddress(0x2000))  // popcnt eax, eax
        let action = dispatch.handle(.internalError(suberror: InternalErrorSuberror.emulation, data: []), on: StoppedVCPU(rip: 0x2000))
        guard case let .stop(.internalError(_, _, rip, bytes, _)) = action else { Issue.record("\(action)"); return }
        #expect(rip == 0x2000)
        #expect(Array(bytes.prefix(4)) == [0xF3, 0x0F, 0xB8, 0xC0])
        #expect(bytes.count == 15)
    }

    @Test func labelsNameTheKindAndAddress() {
        _ = PortIO.simulated(port: 0x3F8, size: 1, isWrite: true, values: [0]) { io in #expect(ExitDispatch.label(.portIO(io)) == "pio 0x3f8") }
        _ = MMIOAccess.simulated(address: 0xD000_0000, size: 4, isWrite: false, value: 0) { m in #expect(ExitDispatch.label(.mmio(m)) == "mmior 0xd0000000") }
        #expect(ExitDispatch.label(.interrupted) == "interrupted")
    }
}
