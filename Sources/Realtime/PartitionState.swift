#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

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
        let path = Self.path(vm: vm, directory: directory)
        let tmp = path + ".tmp"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return }
        _ = data.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        rename(tmp, path)
    }

    public static func load(vm: String, directory: String = defaultDirectory) -> PartitionState? {
        guard let text = HostFiles.read(path(vm: vm, directory: directory)) else { return nil }
        return try? JSONDecoder().decode(PartitionState.self, from: Data(text.utf8))
    }

    public static func remove(vm: String, directory: String = defaultDirectory) { unlink(path(vm: vm, directory: directory)) }
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
    if let state = PartitionState.load(vm: vm, directory: stateDirectory) {
        var still = Set<Int>()
        if case let .v1(root) = hierarchy {
            still = Set(CpusetV1(root: root).reservations().filter { $0.busy && $0.vm != vm }.flatMap(\.cpus))
        }
        IRQAffinity(paths: paths).restore(state.irqs, keepingOff: still)
        WorkqueueAffinity(paths: paths).restore(state.workqueueMask, keepingOff: still)
        PartitionState.remove(vm: vm, directory: stateDirectory)
        done.append("\(state.irqs.irqs.count) IRQ affinities restored")
    }
    return done.isEmpty ? nil : done.joined(separator: ", ")
}
