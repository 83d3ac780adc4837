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

    /// Every partition state in `directory` (the real-time VMs whose host changes are in force).
    public static func all(directory: String = defaultDirectory) -> [PartitionState] {
        HostFiles.list(directory).filter { $0.hasSuffix(".json") }.sorted()
            .compactMap { load(vm: String($0.dropLast(5)), directory: directory) }
    }

    /// Undoes `vm`'s host changes, computed from the set of running partitions: IRQ affinities
    /// and the workqueue mask go back to what `vm` saw before it started, minus the CPUs the
    /// other partitions still hold; and what `vm` knew of the host before it is handed to the
    /// partitions that saved their state after it (they saw `vm`'s CPUs already taken out, so
    /// without the hand-off those CPUs would stay excluded after the last one ends). Returns how
    /// many IRQs were restored, or nil when nothing was saved.
    @discardableResult
    public static func undo(vm: String, directory: String = defaultDirectory,
                            hierarchy: CpusetHierarchy? = CpusetHierarchy.detect(), paths: HostPaths = HostPaths()) -> Int? {
        guard let state = load(vm: vm, directory: directory) else { return nil }
        let others = all(directory: directory).filter { $0.vm != vm }
        var still = Set(others.flatMap(\.cpus))
        if case let .v1(root)? = hierarchy { still.formUnion(CpusetV1(root: root).busyCPUs(excluding: vm)) }
        IRQAffinity(paths: paths).restore(state.irqs, keepingOff: still)
        CPUMaskFile.workqueues(paths).restore(state.workqueueMask, keepingOff: still)
        for var other in others {
            other.inherit(from: state)
            other.save(directory: directory)
        }
        remove(vm: vm, directory: directory)
        return state.irqs.irqs.count
    }

    /// Takes over what `ended` saved for the IRQs and masks this partition saved too: the CPUs of
    /// `ended` that were in the value `ended` saw go back into the value this one will restore.
    mutating func inherit(from ended: PartitionState) {
        let theirs = Set(ended.cpus)
        func merged(_ mine: [Int], _ before: [Int]) -> [Int] { Array(Set(mine).union(Set(before).intersection(theirs))).sorted() }
        for (irq, list) in irqs.irqs {
            guard let endedList = ended.irqs.irqs[irq], let before = CPUList.parse(endedList), let mine = CPUList.parse(list) else { continue }
            irqs.irqs[irq] = CPUList.format(merged(mine, before))
        }
        if let mine = irqs.defaultAffinity.flatMap(CPUList.parseHexMask), let before = ended.irqs.defaultAffinity.flatMap(CPUList.parseHexMask) {
            irqs.defaultAffinity = CPUList.hexMask(merged(mine, before))
        }
        if let mine = workqueueMask.flatMap(CPUList.parseHexMask), let before = ended.workqueueMask.flatMap(CPUList.parseHexMask) {
            workqueueMask = CPUList.hexMask(merged(mine, before))
        }
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
