#if canImport(Glibc)
import Glibc
#endif
import Posix

/// Why a real-time partition could not be set up.
public enum PartitionError: Error, Equatable, CustomStringConvertible {
    /// `cpus` already belong to the running real-time VM `owner`.
    case cpusTaken(vm: String, owner: String, cpus: [Int])
    /// No CPU would be left for the host, the daemon and ordinary VMs.
    case noHousekeepingCPU(vm: String, cpus: [Int])
    case offline(vm: String, cpus: [Int])
    case hostFile(HostFileError)
    case unsupported(String)

    public var description: String {
        switch self {
        case let .cpusTaken(vm, owner, cpus):
            "VM \(vm): real-time CPU\(cpus.count == 1 ? "" : "s") \(CPUList.format(cpus)) already given to VM \(owner)"
        case let .noHousekeepingCPU(vm, cpus):
            "VM \(vm): giving CPU\(cpus.count == 1 ? "" : "s") \(CPUList.format(cpus)) to real-time vCPUs would leave the host no housekeeping CPU"
        case let .offline(vm, cpus): "VM \(vm): real-time CPU\(cpus.count == 1 ? "" : "s") \(CPUList.format(cpus)) not online on this host"
        case let .hostFile(e): "cpuset: \(e)"
        case let .unsupported(s): s
        }
    }
}

/// Where the cpuset controller is mounted.
public enum CpusetHierarchy: Sendable, Equatable {
    /// cgroup v1: the cpuset hierarchy's root directory.
    case v1(root: String)
    /// cgroup v2: the unified hierarchy's mount point.
    case v2(mount: String)

    /// From /proc/self/mounts: a v1 cpuset mount wins (a controller is in one hierarchy only).
    public static func detect(mounts: String? = HostFiles.read("/proc/self/mounts")) -> CpusetHierarchy? {
        var v2: String?
        for line in (mounts ?? "").split(separator: "\n") {
            let f = line.split(separator: " ")
            guard f.count >= 4 else { continue }
            if f[2] == "cgroup", f[3].split(separator: ",").contains("cpuset") { return .v1(root: String(f[1])) }
            if f[2] == "cgroup2" { v2 = String(f[1]) }
        }
        return v2.map { .v2(mount: $0) }
    }
}

/// One VM's real-time CPU partition: its vCPU threads are attached to it before they run guest code.
public protocol RealtimePartition: AnyObject, Sendable {
    var summary: String { get }
    func attach(tid: Int32) throws(PartitionError)
    func release()
    /// The cgroup directory the VMM's real-time threads join, and the files `attach` writes: a
    /// VMM that drops its privileges (the jail, Sources/Sandbox/Jail.swift) keeps these visible
    /// and owned by its uid so its vCPU threads can still join.
    var directory: String { get }
    var attachFiles: [String] { get }
}

/// cgroup v1: a shield. `rtvisor-rt-VM` (the VM's CPUs, cpu_exclusive, no load balancing) holds the
/// vCPU threads; every other movable task of the root cpuset moves to `rtvisor-housekeeping` (the
/// remaining CPUs) for as long as any real-time VM runs, like `cset shield`. The state lives in the
/// cpuset tree itself, so concurrent VMMs and the daemon see the same reservations; a partition
/// handed over across a guest reset has no task and is told apart by its `PartitionState`.
public struct CpusetV1: Sendable {
    public let root: String
    /// flock(2)ed around every change (VMM processes race on start and stop).
    public let lockPath: String
    public let host: HostCPUs
    /// Where the partition states are (`PartitionState`): a handed-over partition is reserved.
    public let stateDirectory: String
    public static let rtPrefix = "rtvisor-rt-"
    public static let housekeepingName = "rtvisor-housekeeping"
    public static let defaultLockPath = "/run/rtvisor/cpuset.lock"

    public init(root: String, lockPath: String = defaultLockPath, host: HostCPUs = HostCPUs(),
                stateDirectory: String = PartitionState.defaultDirectory) {
        self.root = root; self.lockPath = lockPath; self.host = host; self.stateDirectory = stateDirectory
    }

    var housekeepingDir: String { root + "/" + Self.housekeepingName }
    /// Who acquired `vm`'s cpuset ("PID START"), written under the lock with the cpuset: between
    /// its creation and the vCPU threads joining it, the set has no task, and another VMM's
    /// `acquire` would otherwise take it for a dead VMM's and remove it.
    func holderFile(_ vm: String) -> String { Self.holderFile(vm, in: stateDirectory) }
    static func holderFile(_ vm: String, in stateDirectory: String) -> String { stateDirectory + "/" + vm + ".holder" }

    /// Records the calling process as the holder of `vm`'s cpuset (at `acquire`, and when a VMM
    /// claims a partition its VM's previous VMM handed over).
    static func recordHolder(vm: String, in stateDirectory: String) throws(HostFileError) {
        guard let me = ProcessIdentity.current() else { return }
        makeDirectoryIfMissing(stateDirectory)
        try HostFiles.write(holderFile(vm, in: stateDirectory), me.description)
    }
    func rtDir(_ vm: String) -> String { root + "/" + Self.rtPrefix + vm }

    /// A real-time VM's cpuset.
    public struct Reservation: Sendable, Equatable {
        public var vm: String
        public var cpus: [Int]
        /// A task is in it: a VMM runs the VM.
        public var busy: Bool
        /// Left by a VMM whose guest reset, for the next VMM of the VM (`PartitionState.handedOver`).
        public var handedOver: Bool
        /// The VMM that acquired it still runs: its vCPU threads may not have joined yet.
        public var holderRunning: Bool = false
        /// Its CPUs are taken: nobody else may have them, or reclaim the set as a dead VMM's.
        public var held: Bool { busy || handedOver || holderRunning }
    }

    /// Real-time VMs with a cpuset now.
    public func reservations() -> [Reservation] {
        HostFiles.list(root).filter { $0.hasPrefix(Self.rtPrefix) && HostFiles.isDirectory(root + "/" + $0) }.map { name in
            let dir = root + "/" + name
            let vm = String(name.dropFirst(Self.rtPrefix.count))
            let cpus = HostFiles.line(dir + "/cpuset.cpus").flatMap(CPUList.parse) ?? []
            let busy = !(HostFiles.read(dir + "/tasks") ?? "").trimmingASCIIWhitespace().isEmpty
            let handedOver = PartitionState.load(vm: vm, directory: stateDirectory)?.handedOver ?? false
            var r = Reservation(vm: vm, cpus: cpus, busy: busy, handedOver: handedOver)
            r.holderRunning = HostFiles.read(holderFile(vm)).flatMap(ProcessIdentity.parse)?.isRunning() ?? false
            return r
        }
    }

    /// CPUs of the real-time VMs (other than `vm`) whose partition is held: a task runs in it, or
    /// it waits for the next VMM of its VM.
    public func heldCPUs(excluding vm: String? = nil) -> Set<Int> {
        Set(reservations().filter { $0.held && $0.vm != vm }.flatMap(\.cpus))
    }

    public func acquire(vm: String, cpus: [Int]) throws(PartitionError) -> RealtimePartition {
        let lock = FileLock(path: lockPath)
        defer { lock.unlock() }
        let online = Set(host.online)
        let offline = cpus.filter { !online.contains($0) }
        if !offline.isEmpty { throw .offline(vm: vm, cpus: offline) }
        var reserved = Set<Int>()
        for r in reservations() {
            if !r.held {
                // Left behind by a VMM that died: nobody runs there.
                rmdir(rtDir(r.vm))
                continue
            }
            if r.vm == vm { throw .unsupported("VM \(vm): a real-time partition for this VM is already in use (\(rtDir(vm)))") }
            let overlap = r.cpus.filter { cpus.contains($0) }
            if !overlap.isEmpty { throw .cpusTaken(vm: vm, owner: r.vm, cpus: overlap) }
            reserved.formUnion(r.cpus)
        }
        reserved.formUnion(cpus)
        let housekeeping = online.subtracting(reserved).sorted()
        if housekeeping.isEmpty { throw .noHousekeepingCPU(vm: vm, cpus: cpus) }
        let mems = HostFiles.line(root + "/cpuset.effective_mems") ?? HostFiles.line(root + "/cpuset.mems") ?? "0"
        do {
            // Shrink (or create) the housekeeping set first: cpu_exclusive needs disjoint siblings.
            let created = !HostFiles.isDirectory(housekeepingDir)
            if created { mkdir(housekeepingDir, 0o755) }
            try HostFiles.write(housekeepingDir + "/cpuset.mems", mems)
            try HostFiles.write(housekeepingDir + "/cpuset.cpus", CPUList.format(housekeeping))
            let dir = rtDir(vm)
            mkdir(dir, 0o755)
            try Self.recordHolder(vm: vm, in: stateDirectory)
            try HostFiles.write(dir + "/cpuset.mems", mems)
            try HostFiles.write(dir + "/cpuset.cpus", CPUList.format(cpus))
            var notes: [String] = []
            do { try HostFiles.write(dir + "/cpuset.cpu_exclusive", "1") } catch { notes.append("not cpu_exclusive: \(error)") }
            try? HostFiles.write(dir + "/cpuset.sched_load_balance", "0")
            // Scheduler domains come from the children once the root stops balancing.
            try? HostFiles.write(root + "/cpuset.sched_load_balance", "0")
            let (moved, pinned) = moveTasks(from: root, to: housekeepingDir)
            notes.insert("\(moved) host tasks on housekeeping CPUs \(CPUList.format(housekeeping)), \(pinned) per-CPU kernel threads left", at: 0)
            return CpusetV1Partition(owner: self, vm: vm, dir: dir,
                                     summary: "cgroup v1 cpuset \(dir) (CPUs \(CPUList.format(cpus))); " + notes.joined(separator: "; "))
        } catch {
            throw .hostFile(error)
        }
    }

    /// Removes cpuset `dir`, moving its tasks back to the root first. A killed VMM's threads, and
    /// KVM's per-VM kernel worker, can take a moment to leave: rmdir fails with EBUSY while any
    /// task remains, so it is retried for up to 2 s.
    func removeGroup(_ dir: String) {
        for _ in 0..<100 where HostFiles.isDirectory(dir) {
            _ = moveTasks(from: dir, to: root)
            if rmdir(dir) == 0 || errno == ENOENT { break }
            usleep(20_000)
        }
    }

    /// Moves every task listed in `from/tasks` to `to/tasks`; returns (moved, refused).
    func moveTasks(from: String, to: String) -> (Int, Int) {
        var moved = 0, refused = 0
        for tid in (HostFiles.read(from + "/tasks") ?? "").split(separator: "\n") {
            // Per-CPU kernel threads (PF_NO_SETAFFINITY) refuse with EINVAL; exited ones with ESRCH.
            if (try? HostFiles.write(to + "/tasks", String(tid))) != nil { moved += 1 } else { refused += 1 }
        }
        return (moved, refused)
    }

    /// Removes `vm`'s partition (its threads must have ended, or they go back to the root) and,
    /// with the last real-time VM gone, the shield.
    public func release(vm: String) {
        let lock = FileLock(path: lockPath)
        defer { lock.unlock() }
        let dir = rtDir(vm)
        removeGroup(dir)
        unlink(holderFile(vm))
        let reserved = heldCPUs()
        guard HostFiles.isDirectory(housekeepingDir) else { return }
        if reserved.isEmpty {
            for r in reservations() { rmdir(rtDir(r.vm)) }
            removeGroup(housekeepingDir)
            try? HostFiles.write(root + "/cpuset.sched_load_balance", "1")
        } else {
            let housekeeping = Set(host.online).subtracting(reserved).sorted()
            try? HostFiles.write(housekeepingDir + "/cpuset.cpus", CPUList.format(housekeeping))
        }
    }
}

final class CpusetV1Partition: RealtimePartition, @unchecked Sendable {
    let owner: CpusetV1
    let vm: String
    let dir: String
    let summary: String
    init(owner: CpusetV1, vm: String, dir: String, summary: String) {
        self.owner = owner; self.vm = vm; self.dir = dir; self.summary = summary
    }
    func attach(tid: Int32) throws(PartitionError) {
        do { try HostFiles.write(dir + "/tasks", "\(tid)") } catch { throw .hostFile(error) }
    }
    func release() { owner.release(vm: vm) }
    var directory: String { dir }
    var attachFiles: [String] { [dir + "/tasks"] }
}

/// cgroup v2: a threaded subtree in the VMM's own (delegated) cgroup: `vmm` for the process and its
/// helper threads (housekeeping CPUs), `vcpus` for the vCPU threads, made an isolated cpuset
/// partition where the hierarchy above allows it (then no other task on the host runs there).
public struct CpusetV2: Sendable {
    /// The VMM's cgroup directory (rtvisord creates one per VM under its delegated unit cgroup).
    public let cgroup: String
    public init(cgroup: String) { self.cgroup = cgroup }

    /// The cgroup of the calling process in the unified hierarchy mounted at `mount`.
    public static func ownCgroup(mount: String, procSelfCgroup: String? = HostFiles.read("/proc/self/cgroup")) -> String? {
        for line in (procSelfCgroup ?? "").split(separator: "\n") where line.hasPrefix("0::") {
            let path = String(line.dropFirst(3))
            return path == "/" ? mount : mount + path
        }
        return nil
    }

    public func acquire(vm: String, cpus: [Int], housekeeping: [Int], pid: Int32 = getpid()) throws(PartitionError) -> RealtimePartition {
        let controllers = (HostFiles.line(cgroup + "/cgroup.controllers") ?? "").split(separator: " ")
        guard controllers.contains("cpuset") else {
            throw .unsupported("VM \(vm): the cpuset controller is not available in \(cgroup) (cgroup v2 needs it delegated: Delegate=yes)")
        }
        let vmm = cgroup + "/vmm", vcpus = cgroup + "/vcpus"
        do {
            for d in [vmm, vcpus] {
                mkdir(d, 0o755)
                if HostFiles.line(d + "/cgroup.type") != "threaded" { try HostFiles.write(d + "/cgroup.type", "threaded") }
            }
            try HostFiles.write(vmm + "/cgroup.procs", "\(pid)")
            try HostFiles.write(cgroup + "/cgroup.subtree_control", "+cpuset")
            try HostFiles.write(vmm + "/cpuset.cpus", CPUList.format(housekeeping))
            try HostFiles.write(vcpus + "/cpuset.cpus", CPUList.format(cpus))
        } catch {
            throw .hostFile(error)
        }
        // An isolated partition needs a partition root above it; report what the kernel says.
        try? HostFiles.write(vcpus + "/cpuset.cpus.partition", "isolated")
        let partition = HostFiles.line(vcpus + "/cpuset.cpus.partition") ?? "unknown"
        return CpusetV2Partition(vcpus: vcpus, summary: "cgroup v2 cpuset \(vcpus) (CPUs \(CPUList.format(cpus)), partition \(partition)); VMM threads in \(vmm) (CPUs \(CPUList.format(housekeeping)))")
    }
}

final class CpusetV2Partition: RealtimePartition, @unchecked Sendable {
    let vcpus: String
    let summary: String
    init(vcpus: String, summary: String) { self.vcpus = vcpus; self.summary = summary }
    func attach(tid: Int32) throws(PartitionError) {
        do { try HostFiles.write(vcpus + "/cgroup.threads", "\(tid)") } catch { throw .hostFile(error) }
    }
    /// The vCPU threads have ended; the empty cgroup can go (the process's own stays until it exits).
    func release() { rmdir(vcpus) }
    var directory: String { vcpus }
    var attachFiles: [String] { [vcpus + "/cgroup.threads"] }
}

/// An advisory lock on a file, held until `unlock()`; without the file's directory it is a no-op.
struct FileLock {
    let fd: Int32
    init(path: String) {
        let dir = path.contains("/") ? String(path[..<path.lastIndex(of: "/")!]) : "."
        makeDirectoryIfMissing(dir)
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        if fd >= 0 { _ = try? retryInterrupted { flock(fd, LOCK_EX) } }
    }
    func unlock() { if fd >= 0 { close(fd) } }
}

/// mkdir only when the directory is missing: a VMM that undoes or hands over its partition itself
/// (`--no-jail`) does so under its seccomp filter, which allows no mkdir (docs/sandbox.md).
func makeDirectoryIfMissing(_ dir: String) {
    if !HostFiles.isDirectory(dir) { mkdir(dir, 0o755) }
}
