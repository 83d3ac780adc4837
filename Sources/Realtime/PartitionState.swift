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
/// VMM end (the VMM itself, its janitor, or rtvisord after a crash) can undo it, and so that the
/// next VMM of the same VM can take the partition over across a guest reset (`handedOver`,
/// PartitionHandover.swift). `/run/rtvisor/rt/VM.json`.
public struct PartitionState: Codable, Sendable, Equatable {
    public var vm: String
    public var cpus: [Int]
    public var irqs: IRQAffinity.Saved
    /// The unbound-workqueue mask before the VM started, if it was changed.
    public var workqueueMask: String?
    /// Whether host IRQs were steered off `cpus` (`move_irqs`): with `cpus`, what a VMM that
    /// adopts the partition must ask for.
    public var moveIRQs: Bool
    /// The VMM that set the partition up (its pid); it stays when later VMMs adopt the partition.
    public var builtBy: Int32
    /// How many times a VMM took the partition over from the previous one across a guest reset.
    public var handovers: Int
    /// The VMM that held the partition ended on a guest reset and left it in place for the next
    /// VMM of this VM (`--keep-realtime-partition-on-reset`). No thread runs in it, but it stays
    /// reserved (`CpusetV1.Reservation.held`) until that VMM adopts it or its supervisor undoes it.
    public var handedOver: Bool

    public init(vm: String, cpus: [Int], irqs: IRQAffinity.Saved, workqueueMask: String? = nil, moveIRQs: Bool = true,
                builtBy: Int32 = getpid(), handovers: Int = 0, handedOver: Bool = false) {
        self.vm = vm; self.cpus = cpus; self.irqs = irqs; self.workqueueMask = workqueueMask; self.moveIRQs = moveIRQs
        self.builtBy = builtBy; self.handovers = handovers; self.handedOver = handedOver
    }

    enum CodingKeys: String, CodingKey { case vm, cpus, irqs, workqueueMask, moveIRQs, builtBy, handovers, handedOver }

    /// A file written before the hand-over fields existed (a VMM of the previous version still
    /// running across an upgrade) still loads, so that its changes can be undone.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        vm = try c.decode(String.self, forKey: .vm)
        cpus = try c.decode([Int].self, forKey: .cpus)
        irqs = try c.decode(IRQAffinity.Saved.self, forKey: .irqs)
        workqueueMask = try c.decodeIfPresent(String.self, forKey: .workqueueMask)
        moveIRQs = try c.decodeIfPresent(Bool.self, forKey: .moveIRQs) ?? true
        builtBy = try c.decodeIfPresent(Int32.self, forKey: .builtBy) ?? 0
        handovers = try c.decodeIfPresent(Int.self, forKey: .handovers) ?? 0
        handedOver = try c.decodeIfPresent(Bool.self, forKey: .handedOver) ?? false
    }

    public static let defaultDirectory = "/run/rtvisor/rt"
    public static func path(vm: String, directory: String = defaultDirectory) -> String { "\(directory)/\(vm).json" }

    /// Saves the state, serialized with the other read-modify-writes of the state files.
    public func save(directory: String = defaultDirectory) {
        Self.locked(directory: directory) { write(directory: directory) }
    }

    /// Saves without the lock: for callers that hold it.
    func write(directory: String) {
        makeDirectoryIfMissing("/run/rtvisor")
        makeDirectoryIfMissing(directory)
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

    /// Runs `body` holding the lock of the state files in `directory`: an undo rewrites the other
    /// VMs' states, a hand-over or an adoption rewrites its own, and no update may be lost. Not
    /// reentrant (flock on a second descriptor waits for the first).
    static func locked<T>(directory: String, _ body: () -> T) -> T {
        if let slash = directory.lastIndex(of: "/"), slash != directory.startIndex { makeDirectoryIfMissing(String(directory[..<slash])) }
        let lock = FileLock(path: directory + "/.lock")
        defer { lock.unlock() }
        return body()
    }

    /// At the end of a VMM whose guest reset, when its caller starts the next VMM of the VM
    /// (`--keep-realtime-partition-on-reset`): the partition stays in place, reserved for that
    /// VMM, which adopts it (`PartitionHandover.claim`); rtvisord undoes it instead if it does not
    /// start one. Returns false when `vm` has no partition state (nothing to leave).
    public static func handOver(vm: String, directory: String = defaultDirectory) -> Bool {
        locked(directory: directory) {
            guard var state = load(vm: vm, directory: directory) else { return false }
            state.handedOver = true
            state.write(directory: directory)
            return true
        }
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
        locked(directory: directory) { () -> Int? in
            guard let state = load(vm: vm, directory: directory) else { return nil }
            let others = all(directory: directory).filter { $0.vm != vm }
            var still = Set(others.flatMap(\.cpus))
            if case let .v1(root)? = hierarchy {
                still.formUnion(CpusetV1(root: root, host: HostCPUs(paths: paths), stateDirectory: directory).heldCPUs(excluding: vm))
            }
            IRQAffinity(paths: paths).restore(state.irqs, keepingOff: still)
            CPUMaskFile.workqueues(paths).restore(state.workqueueMask, keepingOff: still)
            for var other in others {
                other.inherit(from: state)
                other.write(directory: directory)
            }
            remove(vm: vm, directory: directory)
            return state.irqs.irqs.count
        }
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
                                     hierarchy: CpusetHierarchy? = CpusetHierarchy.detect(), paths: HostPaths = HostPaths(),
                                     cpusetLock: String = CpusetV1.defaultLockPath) -> String? {
    var done: [String] = []
    if case let .v1(root) = hierarchy {
        let v1 = CpusetV1(root: root, lockPath: cpusetLock, host: HostCPUs(paths: paths), stateDirectory: stateDirectory)
        let reservations = v1.reservations()
        if reservations.contains(where: { $0.vm == vm }) {
            v1.release(vm: vm)
            done.append("cpuset \(v1.rtDir(vm)) removed")
        } else if HostFiles.isDirectory(v1.housekeepingDir) && !reservations.contains(where: \.held) {
            v1.release(vm: vm)
            done.append("host tasks moved back from \(v1.housekeepingDir)")
        }
    }
    if let restored = PartitionState.undo(vm: vm, directory: stateDirectory, hierarchy: hierarchy, paths: paths) {
        done.append("\(restored) IRQ affinities restored")
    }
    return done.isEmpty ? nil : done.joined(separator: ", ")
}
