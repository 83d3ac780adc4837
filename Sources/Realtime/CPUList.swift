import Posix

/// Kernel CPU list syntax ("0-3,8,10-11"), as in cpuset.cpus, smp_affinity_list and
/// /sys/devices/system/cpu/online.
public enum CPUList {
    /// Parses a list; nil if malformed. An empty string is the empty set.
    public static func parse(_ text: String) -> [Int]? {
        let t = text.trimmingASCIIWhitespace()
        if t.isEmpty { return [] }
        var cpus = Set<Int>()
        for part in t.split(separator: ",", omittingEmptySubsequences: false) {
            let bounds = part.split(separator: "-", omittingEmptySubsequences: false)
            guard (1...2).contains(bounds.count), let lo = Int(bounds[0]), lo >= 0 else { return nil }
            let hi = bounds.count == 2 ? Int(bounds[1]) : lo
            guard let hi, hi >= lo, hi - lo < 65536 else { return nil }
            for c in lo...hi { cpus.insert(c) }
        }
        return cpus.sorted()
    }

    /// Formats CPUs as ranges: [0,1,2,5] → "0-2,5".
    public static func format<S: Sequence>(_ cpus: S) -> String where S.Element == Int {
        let sorted = Set(cpus).sorted()
        var parts: [String] = []
        var i = 0
        while i < sorted.count {
            var j = i
            while j + 1 < sorted.count && sorted[j + 1] == sorted[j] + 1 { j += 1 }
            parts.append(i == j ? "\(sorted[i])" : "\(sorted[i])-\(sorted[j])")
            i = j + 1
        }
        return parts.joined(separator: ",")
    }

    /// `cpus` without `removed`; `fallback` if that leaves none.
    public static func removing(_ removed: Set<Int>, from cpus: [Int], orElse fallback: [Int]) -> [Int] {
        let kept = cpus.filter { !removed.contains($0) }
        return kept.isEmpty ? fallback : kept
    }

    /// The hexadecimal mask format of /proc/irq/default_smp_affinity: 32-bit groups, comma-separated.
    public static func hexMask<S: Sequence>(_ cpus: S) -> String where S.Element == Int {
        let set = Set(cpus)
        let words = max(1, ((set.max() ?? 0) / 32) + 1)
        var groups: [String] = []
        for w in stride(from: words - 1, through: 0, by: -1) {
            var v: UInt32 = 0
            for b in 0..<32 where set.contains(w * 32 + b) { v |= 1 << UInt32(b) }
            let hex = String(v, radix: 16)
            groups.append(groups.isEmpty ? hex : String(repeating: "0", count: 8 - hex.count) + hex)
        }
        return groups.joined(separator: ",")
    }

    /// Parses the hexadecimal mask format.
    public static func parseHexMask(_ text: String) -> [Int]? {
        var cpus: [Int] = []
        let groups = text.trimmingASCIIWhitespace().split(separator: ",")
        guard !groups.isEmpty else { return nil }
        for (i, g) in groups.reversed().enumerated() {
            guard let v = UInt32(g, radix: 16) else { return nil }
            for b in 0..<32 where v & (1 << UInt32(b)) != 0 { cpus.append(i * 32 + b) }
        }
        return cpus.sorted()
    }
}
