import Foundation
import Posix

/// Where each VMM runs in the cgroup tree, and the cgroup limits rtvisord sets for it.
///
/// cgroup v2 (docs/daemon.md, "cgroups"): one `vm-NAME` cgroup per VM below the daemon's
/// delegated unit cgroup (`Delegate=yes`). The memory, pids and cpu controllers can only be
/// enabled there if no process lives in the unit cgroup itself ("no internal processes"), so
/// the unit asks systemd (≥ 254) with `DelegateSubgroup=supervisor` to start rtvisord in the
/// leaf `supervisor`; rtvisord then enables the controllers in the unit cgroup and writes each
/// VM's `memory.max`, `pids.max` and `cpu.weight` before its VMM starts there. Under an older
/// systemd, rtvisord runs in the unit cgroup itself and leaves the controllers off: moving
/// itself to a leaf and enabling them would make systemd's next start of the unit fail
/// (status 219/CGROUP, systemd#24064) while guests keep running across a daemon restart.
///
/// cgroup v1: each VMM joins `<memory|pids>/rtvisor/NAME` itself (`ResourceCgroup`); rtvisord
/// removes those groups when the VM has ended.
public struct CgroupPlacement: Sendable {
    /// The cgroup (v2 directory) VM cgroups are created in; nil without a writable one.
    public let base: String?
    /// Whether rtvisord runs in `<base>/supervisor`, so controllers can be enabled in `base`.
    public let inSupervisorLeaf: Bool
    let mountPoint: String

    public init(procSelfCgroup: String? = try? String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8),
                mountPoint: String = "/sys/fs/cgroup") {
        self.mountPoint = mountPoint
        guard let path = Self.unifiedPath(procSelfCgroup) else { base = nil; inSupervisorLeaf = false; return }
        var dir = mountPoint + (path == "/" ? "" : path)
        inSupervisorLeaf = path.hasSuffix("/" + Self.supervisorLeaf)
        if inSupervisorLeaf { dir = String(dir.dropLast(Self.supervisorLeaf.count + 1)) }
        base = access(dir + "/cgroup.procs", W_OK) == 0 ? dir : nil
    }

    static let supervisorLeaf = "supervisor"
    /// The controllers VM limits need: memory.max, pids.max and cpu.weight.
    static let controllers = ["memory", "pids", "cpu"]

    static func unifiedPath(_ procSelfCgroup: String?) -> String? {
        procSelfCgroup?.split(separator: "\n").first(where: { $0.hasPrefix("0::") }).map { String($0.dropFirst(3)) }
    }

    /// Enables the VM controllers for the VM cgroups, once at start; returns what happened, for
    /// the journal.
    public func enableControllers() -> String {
        guard let base else { return "cgroup v2: no writable cgroup; VMs run in rtvisord's own (cgroup v1 limits are set by each VMM)" }
        guard inSupervisorLeaf else {
            return "cgroup v2: rtvisord runs in its unit's cgroup \(base) (systemd without DelegateSubgroup=, < 254): VM cgroups get no memory, pids or cpu controller, because a restart of the unit would then fail while guests run"
        }
        let available = Set((HostFiles.read(base + "/cgroup.controllers") ?? "").split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init))
        let wanted = Self.controllers.filter(available.contains)
        let missing = Self.controllers.filter { !available.contains($0) }
        var notes: [String] = []
        if !wanted.isEmpty {
            do { try HostFiles.write(base + "/cgroup.subtree_control", wanted.map { "+" + $0 }.joined(separator: " ")) } catch {
                return "cgroup v2: cannot enable \(wanted.joined(separator: ", ")) for VM cgroups: \(error)"
            }
            notes.append("enabled \(wanted.joined(separator: ", ")) for VM cgroups in \(base)")
        }
        if !missing.isEmpty { notes.append("not available to the unit: \(missing.joined(separator: ", "))") }
        return "cgroup v2: " + notes.joined(separator: "; ")
    }

    /// The limits written into a VM's cgroup before its VMM starts there.
    public struct Limits: Equatable, Sendable {
        public var memoryBytes: UInt64
        public var tasks: Int
        public var cpuWeight: Int?
        public init(memoryBytes: UInt64, tasks: Int, cpuWeight: Int? = nil) {
            self.memoryBytes = memoryBytes; self.tasks = tasks; self.cpuWeight = cpuWeight
        }
    }

    /// Creates `<base>/vm-NAME` and writes `limits` where the controllers are enabled; nil when
    /// there is no writable cgroup. Problems (a controller missing, a value refused) are in
    /// `notes`, for the journal: the VM still starts.
    public func prepare(vm name: String, limits: Limits? = nil) -> (directory: String, notes: [String])? {
        guard let base else { return nil }
        let dir = base + "/vm-" + name
        if mkdir(dir, 0o755) != 0 && errno != EEXIST { return nil }
        guard let limits else { return (dir, []) }
        var notes: [String] = []
        var values: [(file: String, value: String)] = [("memory.max", "\(limits.memoryBytes)"), ("pids.max", "\(limits.tasks)")]
        if let w = limits.cpuWeight { values.append(("cpu.weight", "\(w)")) }
        for (file, value) in values {
            guard HostFiles.exists(dir + "/" + file) else { notes.append("\(file): controller not enabled for \(dir)"); continue }
            do { try HostFiles.write(dir + "/" + file, value) } catch { notes.append("\(error)") }
        }
        return (dir, notes)
    }

    /// The VM cgroup `pid` runs in, if it is one of ours (an orphan VMM's, at adoption).
    public func directory(of pid: pid_t) -> String? {
        guard let base, let path = Self.unifiedPath(HostFiles.read("/proc/\(pid)/cgroup")) else { return nil }
        let dir = mountPoint + path
        return dir.hasPrefix(base + "/vm-") ? dir : nil
    }

    /// Removes a VM's cgroups once it has ended: v2 `<base>/vm-NAME`, and the v1 groups its VMM
    /// joined (`ResourceCgroup`). rmdir fails harmlessly while processes remain.
    public func remove(vm name: String) {
        if let base { rmdir(base + "/vm-" + name) }
        for controller in ["memory", "pids"] { rmdir("\(mountPoint)/\(controller)/rtvisor/\(name)") }
    }
}
