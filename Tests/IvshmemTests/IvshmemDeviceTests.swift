import Testing
import Synchronization
@testable import Ivshmem
import PCI

/// What the device asked of its host, in order.
final class RecordingHost: IvshmemHost {
    enum Call: Equatable { case registers(UInt64?), memory(UInt64?), ring(peer: Int, vector: Int) }
    let calls = Mutex<[Call]>([])
    func registersMoved(to address: UInt64?) { calls.withLock { $0.append(.registers(address)) } }
    func sharedMemoryMoved(to address: UInt64?) { calls.withLock { $0.append(.memory(address)) } }
    func ring(peer: Int, vector: Int) { calls.withLock { $0.append(.ring(peer: peer, vector: vector)) } }
    func take() -> [Call] { calls.withLock { c in defer { c = [] }; return c } }
}

final class RecordingSink: MsiVectorSink {
    let routes = Mutex<[Int: MsiMessage?]>([:])
    func route(vector: Int, message: MsiMessage?) { routes.withLock { $0[vector] = message } }
    func fire(vector: Int) {}
}

@Suite struct IvshmemDeviceTests {
    let host = RecordingHost()
    let sink = RecordingSink()
    var device: IvshmemDevice { IvshmemDevice(name: "ivshmem0", peer: 3, sharedMemorySize: 4 << 20, vectors: 2, msiSink: sink, host: host) }

    @Test func itIdentifiesAsQEMUsIvshmem() {
        let d = device
        #expect(d.readConfig(offset: 0, size: 4) == 0x1110_1AF4)
        #expect(d.readConfig(offset: 8, size: 1) == 1)                       // revision 1
        #expect(d.readConfig(offset: 0x09, size: 3) == 0x05_00_00)           // memory controller, RAM
        #expect(d.readConfig(offset: 0x2C, size: 4) == 0x1100_1AF4)
        #expect(d.readConfig(offset: 0x3D, size: 1) == 0)                    // no INTx pin: MSI-X only
        #expect(d.barState.bars.map { "\($0.index):\($0.kind.rawValue):\($0.size):\($0.prefetchable)" }
                == ["0:memory32:256:false", "1:memory32:4096:false", "2:memory64:4194304:true"])
        let cap = Int(d.readConfig(offset: 0x34, size: 1))
        #expect(d.readConfig(offset: cap, size: 1) == 0x11)                  // MSI-X
        #expect(d.readConfig(offset: cap + 2, size: 2) & 0x7FF == 1)         // 2 vectors
        #expect(d.readConfig(offset: cap + 4, size: 4) == 1)                 // table: BAR1 + 0
        #expect(d.readConfig(offset: cap + 8, size: 4) == 0x801)             // PBA: BAR1 + 0x800
    }

    @Test func ivPositionIsThePeerIdAndReadOnly() {
        let d = device
        #expect(d.readBar(0, offset: 8, size: 4) == 3)
        d.writeBar(0, offset: 8, size: 4, value: 7)
        #expect(d.readBar(0, offset: 8, size: 4) == 3)
        d.writeBar(0, offset: 0, size: 4, value: 0xFFFF_FFFF)
        #expect(d.readBar(0, offset: 0, size: 4) == 0xFFFF_FFFF)             // IntrMask is plain storage
        #expect(d.readBar(0, offset: 12, size: 4) == 0)                      // Doorbell reads 0
    }

    @Test func aDoorbellWriteThatReachesTheDeviceRingsPeerAndVector() {
        let d = device
        d.writeBar(0, offset: 12, size: 4, value: UInt64(IvshmemDevice.doorbell(peer: 1, vector: 1)))
        d.writeBar(0, offset: 12, size: 2, value: 0x1)                       // not a 32-bit write: ignored
        #expect(host.take() == [.ring(peer: 1, vector: 1)])
        #expect(IvshmemDevice.doorbell(peer: 0x12, vector: 0x34) == 0x0012_0034)
    }

    @Test func theHostFollowsBar0AndBar2WhileMemoryDecodingIsOn() {
        let d = device
        d.assignBar(index: 0, address: 0xC040_0000)
        d.assignBar(index: 2, address: 0xC000_0000)
        #expect(host.take() == [])                                           // decoding off at reset
        d.writeConfig(offset: 4, size: 2, value: 0x2)
        #expect(host.take() == [.registers(0xC040_0000), .memory(0xC000_0000)])
        d.writeConfig(offset: 0x18, size: 4, value: 0xC080_0000)             // BAR2 moved by the guest
        #expect(host.take() == [.memory(0xC080_0000)])
        d.writeConfig(offset: 4, size: 2, value: 0)
        #expect(host.take() == [.registers(nil), .memory(nil)])
    }

    @Test func msixLivesInBar1() {
        let d = device
        let cap = Int(d.readConfig(offset: 0x34, size: 1))
        d.writeConfig(offset: cap + 2, size: 2, value: 0x8000)               // enable
        d.writeBar(1, offset: 16, size: 4, value: 0xFEE0_0000)
        d.writeBar(1, offset: 24, size: 4, value: 0x41)
        d.writeBar(1, offset: 28, size: 4, value: 0)                         // unmask vector 1
        #expect(d.readBar(1, offset: 24, size: 4) == 0x41)
        #expect(sink.routes.withLock { $0[1] } == .some(MsiMessage(address: 0xFEE0_0000, data: 0x41)))
        #expect(d.readBar(1, offset: 0x800, size: 8) == 0)                   // nothing pending
    }
}
