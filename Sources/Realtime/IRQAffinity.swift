import Posix

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
            do {
                try HostFiles.write(paths.irqDir + "/\(info.irq)/smp_affinity_list",
                                    CPUList.format(CPUList.removing(rtCPUs, from: info.affinity, orElse: housekeeping)))
                saved.irqs["\(info.irq)"] = CPUList.format(info.affinity)
            } catch {
                saved.unmovable.append("\(info.irq): \(errnoMessage(error.errno))")
            }
        }
        saved.defaultAffinity = CPUMaskFile.defaultIRQAffinity(paths).move(off: rtCPUs, housekeeping: housekeeping)
        return saved
    }

    /// Puts back what `move` changed, minus CPUs still given to other real-time VMs. IRQs that
    /// are gone since are skipped.
    public func restore(_ saved: Saved, keepingOff stillReserved: Set<Int> = []) {
        for (irq, list) in saved.irqs {
            guard let cpus = CPUList.parse(list) else { continue }
            let path = paths.irqDir + "/\(irq)/smp_affinity_list"
            guard HostFiles.exists(path) else { continue }
            try? HostFiles.write(path, CPUList.format(CPUList.removing(stillReserved, from: cpus, orElse: cpus)))
        }
        CPUMaskFile.defaultIRQAffinity(paths).restore(saved.defaultAffinity, keepingOff: stillReserved)
    }
}

/// A hexadecimal CPU-mask file that real-time VMs take their CPUs out of while they run:
/// /proc/irq/default_smp_affinity (IRQs registered later) and the unbound-workqueue mask
/// (writeback and other deferred kernel work).
public struct CPUMaskFile: Sendable {
    public let path: String
    public init(path: String) { self.path = path }

    public static func defaultIRQAffinity(_ paths: HostPaths = HostPaths()) -> CPUMaskFile {
        CPUMaskFile(path: paths.irqDir + "/default_smp_affinity")
    }
    public static func workqueues(_ paths: HostPaths = HostPaths()) -> CPUMaskFile {
        CPUMaskFile(path: paths.sys + "/devices/virtual/workqueue/cpumask")
    }

    /// Removes `rtCPUs` (all of them gone: `housekeeping`); returns the previous mask if changed.
    public func move(off rtCPUs: Set<Int>, housekeeping: [Int]) -> String? {
        guard let current = HostFiles.line(path), let cpus = CPUList.parseHexMask(current), !Set(cpus).isDisjoint(with: rtCPUs) else { return nil }
        let target = CPUList.removing(rtCPUs, from: cpus, orElse: housekeeping)
        return (try? HostFiles.write(path, CPUList.hexMask(target))) != nil ? current : nil
    }

    /// Puts `saved` back, minus CPUs other real-time VMs still hold.
    public func restore(_ saved: String?, keepingOff stillReserved: Set<Int> = []) {
        guard let saved, let cpus = CPUList.parseHexMask(saved) else { return }
        try? HostFiles.write(path, CPUList.hexMask(CPUList.removing(stillReserved, from: cpus, orElse: cpus)))
    }
}

#if canImport(Glibc)
import Glibc
#endif
