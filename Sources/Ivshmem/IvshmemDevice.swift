import PCI
import Synchronization

/// What an ivshmem device needs from the VMM, which implements it with KVM: the shared memory
/// as a memory slot where BAR2 is, and the doorbell as ioeventfds where BAR0 is (a doorbell
/// write then never leaves the kernel). The device itself never sees KVM.
public protocol IvshmemHost: Sendable {
    /// BAR0 is decoded at `address` now (nil: nowhere, memory decoding off).
    func registersMoved(to address: UInt64?)
    /// BAR2 is decoded at `address` now (nil: nowhere); the shared memory belongs there.
    func sharedMemoryMoved(to address: UInt64?)
    /// A doorbell write that reached the device instead of an ioeventfd (another access size, a
    /// peer or vector without one): ring it if it exists, else drop it.
    func ring(peer: Int, vector: Int)
}

/// A PCI function compatible with QEMU's ivshmem (docs/specs/ivshmem-spec.rst; docs/channels.md):
/// 1af4:1110 revision 1, BAR0 the registers (IntrMask, IntrStatus, IVPosition, Doorbell), BAR1
/// the MSI-X table and PBA, BAR2 the shared memory (64-bit, prefetchable). Interrupts are MSI-X
/// only (no INTx pin), as QEMU's ivshmem-doorbell with MSI-X; ivshmem-plain guests ignore them.
public final class IvshmemDevice: PciDevice {
    public let name: String
    /// IVPosition: this VM's peer id on the channel.
    public let peer: Int
    public let sharedMemorySize: UInt64
    let host: any IvshmemHost
    public let msix: MsixTable

    public static let vendorID: UInt16 = 0x1AF4
    public static let deviceID: UInt16 = 0x1110
    public static let registersSize: UInt64 = 0x100
    public static let msixBarSize: UInt64 = 0x1000
    static let pbaOffset: UInt64 = 0x800

    /// BAR0 register offsets (32-bit each).
    public enum Register: UInt64 {
        case interruptMask = 0x0, interruptStatus = 0x4, ivPosition = 0x8, doorbell = 0xC
    }

    struct State {
        var config: PciConfigSpace
        var interruptMask: UInt32 = 0
        var interruptStatus: UInt32 = 0
        var registersAt: UInt64?
        var memoryAt: UInt64?
    }
    private let state: Mutex<State>
    private let msixCapability: Int

    public init(name: String, peer: Int, sharedMemorySize: UInt64, vectors: Int, msiSink: any MsiVectorSink, host: any IvshmemHost) {
        self.name = name
        self.peer = peer
        self.sharedMemorySize = sharedMemorySize
        self.host = host
        msix = MsixTable(vectorCount: vectors, sink: msiSink)
        // Class 0x0500 (memory controller, RAM) and subsystem 1af4:1100, as QEMU's.
        var c = PciConfigSpace(identity: .init(vendorID: Self.vendorID, deviceID: Self.deviceID, classCode: 0x05_00_00, revision: 1,
                                               subsystemVendorID: 0x1AF4, subsystemID: 0x1100))
        c.addBar(PciBar(index: 0, kind: .memory32, size: Self.registersSize))
        c.addBar(PciBar(index: 1, kind: .memory32, size: Self.msixBarSize))
        c.addBar(PciBar(index: 2, kind: .memory64, size: sharedMemorySize, prefetchable: true))
        let (body, writable) = msix.capabilityBody(tableBar: 1, tableOffset: 0, pbaBar: 1, pbaOffset: UInt32(Self.pbaOffset))
        msixCapability = c.addCapability(id: 0x11, body: body, writableBody: writable)
        state = Mutex(State(config: c))
    }

    /// The doorbell value that rings `vector` of `peer` (bits 31–16 the peer, 15–0 the vector).
    public static func doorbell(peer: Int, vector: Int) -> UInt32 { UInt32(peer) << 16 | UInt32(vector) }

    // MARK: PciDevice

    public var barState: (bars: [PciBar], memoryEnabled: Bool) {
        state.withLock { ($0.config.bars, $0.config.memoryDecoding) }
    }

    public func assignBar(index: Int, address: UInt64) {
        state.withLock { s in
            s.config.setBarAddress(index: index, address: address)
            follow(&s)
        }
    }

    public func readConfig(offset: Int, size: Int) -> UInt32 {
        state.withLock { $0.config.read(offset: offset, size: size) }
    }

    public func writeConfig(offset: Int, size: Int, value: UInt32) {
        let control: UInt16? = state.withLock { s in
            s.config.write(offset: offset, size: size, value: value)
            follow(&s)
            let c = msixCapability + 2
            return offset < c + 2 && offset + size > c ? s.config.get16(c) : nil
        }
        if let control { msix.setControl(control) }
    }

    public func readBar(_ index: Int, offset: UInt64, size: Int) -> UInt64 {
        switch index {
        case 0:
            guard size == 4, offset % 4 == 0, let register = Register(rawValue: offset) else { return 0 }
            return state.withLock { s in
                switch register {
                case .interruptMask: return UInt64(s.interruptMask)
                case .interruptStatus:
                    // Reading acknowledges (INTx-era semantics; with MSI-X nothing sets it).
                    defer { s.interruptStatus = 0 }
                    return UInt64(s.interruptStatus)
                case .ivPosition: return UInt64(peer)
                case .doorbell: return 0
                }
            }
        case 1:
            if offset < Self.pbaOffset { return msix.readTable(offset: offset, size: size) }
            return msix.readPBA(offset: offset - Self.pbaOffset, size: size)
        default:
            // BAR2 traps only while its memory slot is not there; the memory is not ours to read.
            return size >= 8 ? UInt64.max : (1 << (8 * UInt64(size))) - 1
        }
    }

    public func writeBar(_ index: Int, offset: UInt64, size: Int, value: UInt64) {
        switch index {
        case 0:
            guard size == 4, offset % 4 == 0, let register = Register(rawValue: offset) else { return }
            let v = UInt32(truncatingIfNeeded: value)
            switch register {
            case .interruptMask: state.withLock { $0.interruptMask = v }
            case .interruptStatus: state.withLock { $0.interruptStatus = v }
            case .ivPosition: break
            case .doorbell: host.ring(peer: Int(v >> 16), vector: Int(v & 0xFFFF))
            }
        case 1:
            if offset < Self.pbaOffset { msix.writeTable(offset: offset, size: size, value: value) }
        default:
            break
        }
    }

    /// Tells the host where BAR0 and BAR2 are decoded now, when that changed.
    private func follow(_ s: inout State) {
        let decoding = s.config.memoryDecoding
        func at(_ index: Int) -> UInt64? {
            guard decoding, let bar = s.config.bars.first(where: { $0.index == index }), bar.address != 0 else { return nil }
            return bar.address
        }
        let registers = at(0), memory = at(2)
        if registers != s.registersAt { s.registersAt = registers; host.registersMoved(to: registers) }
        if memory != s.memoryAt { s.memoryAt = memory; host.sharedMemoryMoved(to: memory) }
    }
}
