/// Steers host IRQs away from real-time CPUs and back (/proc/irq/N/smp_affinity_list).
public struct IRQAffinity: Sendable {
    public let paths: HostPaths
    public init(paths: HostPaths = HostPaths()) { self.paths = paths }

    /// What `move` changed, to be undone by `restore`. Persisted by the caller (the daemon restores
    /// it if the VMM dies without doing so).
    public struct Saved: Codable, Sendable, Equatable {
        /// IRQ number → affinity list before the move.
        public var irqs: [String: String] = [:]
        /// /proc/irq/default_smp_affinity before the move (hex mask), if it was changed.
        public var defaultAffinity: String?
        /// IRQs the kernel would not steer (per-CPU or managed): "N: reason".
        public var unmovable: [String] = []
        public init() {}
    }

    public func all() -> [IRQInfo] {
        HostFiles.list(paths.irqDir).compactMap { name -> IRQInfo? in
            guard let irq = Int(name) else { return nil }
            let dir = paths.irqDir + "/" + name
            guard let aff = HostFiles.line(dir + "/smp_affinity_list").flatMap(CPUList.parse) else { return nil }
            let eff = HostFiles.line(dir + "/effective_affinity_list").flatMap(CPUList.parse).flatMap { $0.isEmpty ? nil : $0 } ?? aff
            let names = HostFiles.list(dir).filter { HostFiles.isDirectory(dir + "/" + $0) }
            return IRQInfo(irq: irq, affinity: aff, effective: eff, names: names)
        }.sorted { $0.irq < $1.irq }
    }

    /// Removes `rtCPUs` from every IRQ's affinity (an IRQ left with no CPU goes to `housekeeping`),
    /// and from the default affinity of IRQs registered later.
    public func move(off rtCPUs: Set<Int>, housekeeping: [Int]) -> Saved {
        var saved = Saved()
        guard !housekeeping.isEmpty else { return saved }
        for info in all() where !Set(info.affinity).isDisjoint(with: rtCPUs) {
            var target = info.affinity.filter { !rtCPUs.contains($0) }
            if target.isEmpty { target = housekeeping }
            do {
                try HostFiles.write(paths.irqDir + "/\(info.irq)/smp_affinity_list", CPUList.format(target))
                saved.irqs["\(info.irq)"] = CPUList.format(info.affinity)
            } catch {
                saved.unmovable.append("\(info.irq): \(String(cString: strerror(error.errno)))")
            }
        }
        let defaultPath = paths.irqDir + "/default_smp_affinity"
        if let current = HostFiles.line(defaultPath), let cpus = CPUList.parseHexMask(current), !Set(cpus).isDisjoint(with: rtCPUs) {
            var target = cpus.filter { !rtCPUs.contains($0) }
            if target.isEmpty { target = housekeeping }
            if (try? HostFiles.write(defaultPath, CPUList.hexMask(target))) != nil { saved.defaultAffinity = current }
        }
        return saved
    }

    /// Puts back what `move` changed, minus CPUs still given to other real-time VMs. IRQs that
    /// are gone since are skipped.
    public func restore(_ saved: Saved, keepingOff stillReserved: Set<Int> = []) {
        for (irq, list) in saved.irqs {
            guard var cpus = CPUList.parse(list) else { continue }
            let path = paths.irqDir + "/\(irq)/smp_affinity_list"
            guard HostFiles.exists(path) else { continue }
            let kept = cpus.filter { !stillReserved.contains($0) }
            if !kept.isEmpty { cpus = kept }
            try? HostFiles.write(path, CPUList.format(cpus))
        }
        if let d = saved.defaultAffinity, var cpus = CPUList.parseHexMask(d) {
            let kept = cpus.filter { !stillReserved.contains($0) }
            if !kept.isEmpty { cpus = kept }
            try? HostFiles.write(paths.irqDir + "/default_smp_affinity", CPUList.hexMask(cpus))
        }
    }
}

/// The CPUs unbound kernel workqueues may use (/sys/devices/virtual/workqueue/cpumask): kept off
/// real-time CPUs while they run, like IRQs (writeback and other deferred work would otherwise
/// land on them).
public struct WorkqueueAffinity: Sendable {
    public let paths: HostPaths
    public init(paths: HostPaths = HostPaths()) { self.paths = paths }
    var path: String { paths.sys + "/devices/virtual/workqueue/cpumask" }

    /// Removes `rtCPUs`; returns the previous mask (hex) if it was changed.
    public func move(off rtCPUs: Set<Int>, housekeeping: [Int]) -> String? {
        guard let current = HostFiles.line(path), let cpus = CPUList.parseHexMask(current), !Set(cpus).isDisjoint(with: rtCPUs) else { return nil }
        var target = cpus.filter { !rtCPUs.contains($0) }
        if target.isEmpty { target = housekeeping }
        return (try? HostFiles.write(path, CPUList.hexMask(target))) != nil ? current : nil
    }

    public func restore(_ saved: String?, keepingOff stillReserved: Set<Int> = []) {
        guard let saved, var cpus = CPUList.parseHexMask(saved) else { return }
        let kept = cpus.filter { !stillReserved.contains($0) }
        if !kept.isEmpty { cpus = kept }
        try? HostFiles.write(path, CPUList.hexMask(cpus))
    }
}

#if canImport(Glibc)
import Glibc
#endif
