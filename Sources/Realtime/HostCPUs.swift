import Posix

/// Where the host's kernel interfaces live; tests point these at fake trees.
public struct HostPaths: Sendable, Equatable {
    public var sys: String
    public var proc: String
    public init(sys: String = "/sys", proc: String = "/proc") { self.sys = sys; self.proc = proc }

    var cpuDir: String { sys + "/devices/system/cpu" }
    var irqDir: String { proc + "/irq" }
}

/// What the host says about its CPUs, read from sysfs and procfs.
public struct HostCPUs: Sendable {
    public let paths: HostPaths
    public init(paths: HostPaths = HostPaths()) { self.paths = paths }

    public var online: [Int] { HostFiles.line(paths.cpuDir + "/online").flatMap(CPUList.parse) ?? [] }
    /// `isolcpus=` (domain isolation) CPUs.
    public var isolated: [Int] { HostFiles.line(paths.cpuDir + "/isolated").flatMap(CPUList.parse) ?? [] }
    public var nohzFull: [Int] { HostFiles.line(paths.cpuDir + "/nohz_full").flatMap(CPUList.parse) ?? [] }
    public var commandLine: String { HostFiles.line(paths.proc + "/cmdline") ?? "" }
    /// `rcu_nocbs=` CPUs from the kernel command line (not exported elsewhere).
    public var rcuNocbs: [Int] {
        for word in commandLine.split(separator: " ") where word.hasPrefix("rcu_nocbs=") {
            let value = String(word.dropFirst("rcu_nocbs=".count))
            if value == "all" { return online }
            return CPUList.parse(value) ?? []
        }
        return []
    }
    /// Other hardware threads of the same core.
    public func smtSiblings(of cpu: Int) -> [Int] {
        (HostFiles.line(paths.cpuDir + "/cpu\(cpu)/topology/thread_siblings_list").flatMap(CPUList.parse) ?? []).filter { $0 != cpu }
    }
    public func governor(of cpu: Int) -> String? { HostFiles.line(paths.cpuDir + "/cpu\(cpu)/cpufreq/scaling_governor") }
    /// `kernel.sched_rt_runtime_us`: -1 means RT throttling is off.
    public var rtRuntimeMicroseconds: Int? { HostFiles.line(paths.proc + "/sys/kernel/sched_rt_runtime_us").flatMap { Int($0) } }

    /// IRQs whose affinity allows `cpu` (the effective affinity follows a change only at the
    /// IRQ's next interrupt, so it would report IRQs already moved away).
    public func irqs(targeting cpu: Int, among all: [IRQInfo]? = nil) -> [IRQInfo] {
        (all ?? IRQAffinity(paths: paths).all()).filter { $0.affinity.contains(cpu) }
    }
}

/// One host IRQ line as /proc/irq shows it.
public struct IRQInfo: Sendable, Equatable, Codable {
    public var irq: Int
    public var affinity: [Int]
    public var effective: [Int]
    /// Device names from /proc/irq/N/ (the action directories).
    public var names: [String]
}

/// The per-CPU part of `rtvisorctl rt-check`.
public struct RealtimeCPUReport: Sendable, Codable, Equatable {
    public var cpu: Int
    public var online: Bool
    public var isolcpus: Bool
    public var nohzFull: Bool
    public var rcuNocbs: Bool
    public var smtSiblings: [Int]
    public var governor: String?
    /// "IRQ (names)" of the IRQs that still target this CPU.
    public var irqs: [String]
}

/// What a host offers a real-time VM on its CPUs, and what to fix.
public struct RealtimeReport: Sendable, Codable, Equatable {
    public var vm: String
    public var cpus: [RealtimeCPUReport]
    public var rtRuntimeMicroseconds: Int?
    public var warnings: [String]

    public init(vm: String, cpus: [Int], host: HostCPUs = HostCPUs(), otherRealtimeCPUs: Set<Int> = [], exitsDisabled: Bool = false) {
        self.vm = vm
        let online = Set(host.online), isolated = Set(host.isolated), nohz = Set(host.nohzFull), nocbs = Set(host.rcuNocbs)
        var warnings: [String] = []
        let allIRQs = IRQAffinity(paths: host.paths).all()
        self.cpus = cpus.map { cpu in
            let siblings = host.smtSiblings(of: cpu)
            let irqs = host.irqs(targeting: cpu, among: allIRQs).map { $0.names.isEmpty ? "\($0.irq)" : "\($0.irq) (\($0.names.joined(separator: ",")))" }
            let r = RealtimeCPUReport(cpu: cpu, online: online.contains(cpu), isolcpus: isolated.contains(cpu), nohzFull: nohz.contains(cpu),
                                      rcuNocbs: nocbs.contains(cpu), smtSiblings: siblings, governor: host.governor(of: cpu), irqs: irqs)
            if !r.online { warnings.append("CPU \(cpu) is not online") }
            if !r.isolcpus { warnings.append("CPU \(cpu) is not in isolcpus= (the scheduler may still place unbound kernel work there)") }
            if !r.nohzFull { warnings.append("CPU \(cpu) is not in nohz_full= (the host tick still interrupts it)") }
            if !r.rcuNocbs { warnings.append("CPU \(cpu) is not in rcu_nocbs= (RCU callbacks may run there)") }
            for s in siblings where !cpus.contains(s) {
                warnings.append("CPU \(cpu) shares its core with CPU \(s), which is not part of this VM (SMT interference)")
            }
            if let g = r.governor, g != "performance" { warnings.append("CPU \(cpu) runs the \(g) cpufreq governor, not performance") }
            if !irqs.isEmpty { warnings.append("CPU \(cpu) still receives IRQ \(irqs.joined(separator: ", "))") }
            if otherRealtimeCPUs.contains(cpu) { warnings.append("CPU \(cpu) is also given to another real-time VM") }
            return r
        }
        rtRuntimeMicroseconds = host.rtRuntimeMicroseconds
        if let rt = rtRuntimeMicroseconds, rt >= 0, exitsDisabled {
            warnings.append("RT throttling is on (kernel.sched_rt_runtime_us=\(rt)): a vCPU that never leaves guest mode (HLT exits disabled) is stopped for \(1_000_000 - rt) us every second; set it to -1")
        }
        self.warnings = warnings
    }

    /// Human-readable lines, one per CPU plus the warnings.
    public var lines: [String] {
        var out = ["real-time check for VM \(vm)"]
        for c in cpus {
            let flags = [c.online ? "online" : "OFFLINE", c.isolcpus ? "isolcpus" : "-isolcpus", c.nohzFull ? "nohz_full" : "-nohz_full",
                         c.rcuNocbs ? "rcu_nocbs" : "-rcu_nocbs"].joined(separator: " ")
            let smt = c.smtSiblings.isEmpty ? "none" : CPUList.format(c.smtSiblings)
            out.append("  CPU \(c.cpu): \(flags); SMT siblings \(smt); governor \(c.governor ?? "none (no cpufreq)"); IRQs \(c.irqs.isEmpty ? "none" : c.irqs.joined(separator: ", "))")
        }
        out.append("  sched_rt_runtime_us: \(rtRuntimeMicroseconds.map(String.init) ?? "unknown")")
        for w in warnings { out.append("  warning: \(w)") }
        return out
    }
}
