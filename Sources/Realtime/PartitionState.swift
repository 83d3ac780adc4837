#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif
import Posix

/// What a running real-time VM changed on the host, written by its VMM so that whoever sees the
/// VMM end (the VMM itself, or rtvisord after a crash) can undo it.
public struct PartitionState: Codable, Sendable, Equatable {
    public var vm: String
    public var cpus: [Int]
    public var irqs: IRQAffinity.Saved
    /// The unbound-workqueue mask before the VM started, if it was changed.
    public var workqueueMask: String?
    public init(vm: String, cpus: [Int], irqs: IRQAffinity.Saved, workqueueMask: String? = nil) {
        self.vm = vm; self.cpus = cpus; self.irqs = irqs; self.workqueueMask = workqueueMask
    }

    public static let defaultDirectory = "/run/rtvisor/rt"
    public static func path(vm: String, directory: String = defaultDirectory) -> String { "\(directory)/\(vm).json" }

    public func save(directory: String = defaultDirectory) {
        mkdir("/run/rtvisor", 0o755)
        mkdir(directory, 0o755)
        guard let data = try? JSONEncoder().encode(self) else { return }
        HostFiles.replace(Self.path(vm: vm, directory: directory), with: Array(data), mode: 0o600)
    }

    public static func load(vm: String, directory: String = defaultDirectory) -> PartitionState? {
        guard let text = HostFiles.read(path(vm: vm, directory: directory)) else { return nil }
        return try? JSONDecoder().decode(PartitionState.self, from: Data(text.utf8))
    }

    public static func remove(vm: String, directory: String = defaultDirectory) { unlink(path(vm: vm, directory: directory)) }

    /// Puts back the IRQ affinities and workqueue mask `vm` saved, minus CPUs other running
    /// real-time VMs still hold, and forgets them. Returns how many IRQs were restored, or nil
    /// when nothing was saved.
    @discardableResult
    public static func undo(vm: String, directory: String = defaultDirectory,
                            hierarchy: CpusetHierarchy? = CpusetHierarchy.detect(), paths: HostPaths = HostPaths()) -> Int? {
        guard let state = load(vm: vm, directory: directory) else { return nil }
        var still = Set<Int>()
        if case let .v1(root)? = hierarchy { still = CpusetV1(root: root).busyCPUs(excluding: vm) }
        IRQAffinity(paths: paths).restore(state.irqs, keepingOff: still)
        CPUMaskFile.workqueues(paths).restore(state.workqueueMask, keepingOff: still)
        remove(vm: vm, directory: directory)
        return state.irqs.irqs.count
    }
}

/// Undoes a real-time VM's host changes after its VMM ended (idempotent): IRQ affinities back
/// (minus CPUs other real-time VMs still hold), its cpuset removed, the shield lifted with the
/// last one. Returns what it did, or nil when there was nothing to undo.
public func releaseRealtimePartition(vm: String, stateDirectory: String = PartitionState.defaultDirectory,
                                     hierarchy: CpusetHierarchy? = CpusetHierarchy.detect(), paths: HostPaths = HostPaths()) -> String? {
    var done: [String] = []
    if case let .v1(root) = hierarchy {
        let v1 = CpusetV1(root: root, host: HostCPUs(paths: paths))
        let reservations = v1.reservations()
        if reservations.contains(where: { $0.vm == vm }) {
            v1.release(vm: vm)
            done.append("cpuset \(v1.rtDir(vm)) removed")
        } else if HostFiles.isDirectory(v1.housekeepingDir) && !reservations.contains(where: \.busy) {
            v1.release(vm: vm)
            done.append("host tasks moved back from \(v1.housekeepingDir)")
        }
    }
    if let restored = PartitionState.undo(vm: vm, directory: stateDirectory, hierarchy: hierarchy, paths: paths) {
        done.append("\(restored) IRQ affinities restored")
    }
    return done.isEmpty ? nil : done.joined(separator: ", ")
}
