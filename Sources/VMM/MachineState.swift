import Arch
import Config
import Devices
import KVM
import PCI
import VMMInterface
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Everything a snapshot's state file holds besides its header: KVM's VM and vCPU state and
/// every device model's. Guest memory is the memory file; the definition is definition.json.
struct MachineState: Codable, Sendable {
    var vm: VMState
    var vcpus: [VCPUState]
    var devices: DeviceStates
}

/// The device models' state, one field per device of the machine `MachinePhase.buildDevices`
/// builds from the definition (a restore builds the same machine, then loads these).
struct DeviceStates: Codable, Sendable {
    var serial: Serial8250.SavedState
    var keyboard: I8042.SavedState
    var cmos: CMOSClock.SavedState
    var pciRoot: PciRoot.SavedState
    /// The virtio-pci functions in slot order (disks, then NICs).
    var virtio: [VirtioPciDevice.SavedState]
}

/// Which snapshot a machine is restored from, and how its memory comes back.
public struct SnapshotSource: Sendable {
    public var directory: String
    public var memory: RestoreMemoryMode
    public init(directory: String, memory: RestoreMemoryMode = .copy) { self.directory = directory; self.memory = memory }
}

enum SnapshotCodec {
    static func encode(_ state: MachineState) throws -> [UInt8] { Array(try JSONEncoder().encode(state)) }

    static func decode(_ body: ArraySlice<UInt8>, file: String) throws -> MachineState {
        do { return try JSONDecoder().decode(MachineState.self, from: Data(body)) } catch {
            throw VMMError.setup("\(file): the machine state cannot be read: \(error)")
        }
    }

    /// The CPUID tables this host's KVM and the definition's CPU template give the vCPUs (what
    /// `createVCPUs` sets), as a digest: equal on two hosts when a guest cannot tell them apart.
    static func cpuidDigest(_ def: VMDefinition, supportedCPUID supported: [CPUIDEntry], hostEmulatesRing0: Bool) -> String {
        let tables = (0..<def.vcpus).map { def.cpu.policy.apply(to: supported, vcpuID: $0, vcpuCount: def.vcpus, hostEmulatesRing0: hostEmulatesRing0) }
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        return ContentDigest.fnv1a((try? encoder.encode(tables)).map(Array.init) ?? [])
    }
}

extension Machine {
    /// Every device model's state; the VM is paused (no vCPU or device thread touches them).
    func deviceStates() -> DeviceStates {
        DeviceStates(serial: serial.saveState(), keyboard: keyboard.saveState(), cmos: cmos.saveState(),
                     pciRoot: pciRoot.saveState(), virtio: pciDevices.map { $0.saveState() })
    }
}
