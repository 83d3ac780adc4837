import Arch
import Config
import Devices
import KVM
import PCI
import SystemPackage
import VirtioNet
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

/// How a `Machine` comes to life.
public enum MachineStart: Sendable {
    /// The guest is loaded and starts at its entry point.
    case boot
    /// A snapshot is resumed (docs/snapshot.md).
    case snapshot(SnapshotSource)
    /// Memory and state arrive over a migration stream after the machine is built (docs/migration.md);
    /// in a same-host upgrade the old VMM handed over its RAM and taps first.
    case incoming(HandedOver?)

    var boots: Bool { if case .boot = self { true } else { false } }
}

/// What a same-host upgrade's old VMM passed over (docs/migration.md): guest RAM's memfds, or
/// nil when its memory is not shareable (then the pages follow), and its open taps, in the
/// definition's order of NICs. The new machine maps and uses them; the guest is not touched
/// until the old VMM says `go`.
public struct HandedOver: @unchecked Sendable {
    public var memory: [FileDescriptor]?
    public var taps: [Tap]
    public init(memory: [FileDescriptor]?, taps: [Tap]) { self.memory = memory; self.taps = taps }

    /// The descriptors of a `handover` frame as its manifest names them; owns them from here
    /// (closed on a throw).
    public init(_ manifest: MigrationHandover, files: [FileDescriptor]) throws {
        guard files.count == manifest.descriptors else {
            for f in files { try? f.close() }
            throw MigrationStreamError("the handover names \(manifest.descriptors) descriptors, \(files.count) came")
        }
        memory = manifest.memoryRegions > 0 ? Array(files.prefix(manifest.memoryRegions)) : nil
        taps = zip(manifest.taps, files.dropFirst(manifest.memoryRegions)).map {
            Tap(adopting: $1, name: $0.name, supportsOffloads: $0.supportsOffloads)
        }
    }
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
    /// Loads a saved machine state into this machine, built from the same definition with bare
    /// vCPUs (docs/snapshot.md has the order): the VM's interrupt controllers, PIT and clock;
    /// every device model (the virtio functions before the PCI root, which then decodes their
    /// BARs where they were; each function re-routes its MSI-X vectors and stays paused until
    /// `run()`); then each vCPU. Guest RAM and its memory slots are in place already (restored
    /// MSRs point into it). `what` names the source in errors.
    func applyState(_ s: MachineState, from what: String) throws {
        do { try vm.restoreState(s.vm, advanceClock: true) } catch { throw VMMError.setup("\(what): VM state: \(error)") }
        guard s.devices.virtio.count == pciDevices.count else {
            throw VMMError.setup("\(what): \(s.devices.virtio.count) virtio devices saved, the definition has \(pciDevices.count) (disks and NICs must match)")
        }
        guard s.vcpus.count == vcpus.count else { throw VMMError.setup("\(what): \(s.vcpus.count) vCPU states for \(vcpus.count) vCPUs") }
        serial.restoreState(s.devices.serial)
        keyboard.restoreState(s.devices.keyboard)
        cmos.restoreState(s.devices.cmos)
        do { for (device, state) in zip(pciDevices, s.devices.virtio) { try device.restoreState(state) } } catch {
            throw VMMError.setup("\(what): \(error)")
        }
        pciRoot.restoreState(s.devices.pciRoot)
        for (vcpu, state) in zip(vcpus, s.vcpus) {
            do { try vcpu.restoreState(state, system: system) } catch { throw VMMError.setup("\(what): vCPU \(vcpu.id): restoring its state: \(error)") }
        }
    }

    /// Every device model's state; the VM is paused (no vCPU or device thread touches them).
    func deviceStates() -> DeviceStates {
        DeviceStates(serial: serial.saveState(), keyboard: keyboard.saveState(), cmos: cmos.saveState(),
                     pciRoot: pciRoot.saveState(), virtio: pciDevices.map { $0.saveState() })
    }
}
