// The `realtime` block of a definition (issue 5): a VM whose vCPUs own host CPUs.

/// VM exits a real-time VM can turn off (KVM_CAP_X86_DISABLE_EXITS): the guest then idles or
/// spins on its dedicated CPU without leaving guest mode.
public enum DisabledExit: String, CaseIterable, Sendable, Codable, Comparable {
    case hlt, pause, mwait, cstate
    /// The KVM_X86_DISABLE_EXITS_* bit.
    public var kvmBit: UInt64 {
        switch self {
        case .mwait: 1 << 0
        case .hlt: 1 << 1
        case .pause: 1 << 2
        case .cstate: 1 << 3
        }
    }
    public static func < (a: Self, b: Self) -> Bool { a.kvmBit < b.kvmBit }
}

/// How a real-time VM runs: dedicated host CPUs (one per vCPU), SCHED_FIFO, locked memory.
public struct RealtimeSettings: Equatable, Sendable, Codable {
    /// Host CPU of vCPU i is `cpus[i]`.
    public var cpus: [Int]
    /// SCHED_FIFO priority of the vCPU threads.
    public var priority: Int = 50
    /// Prefault and lock guest RAM, and the VMM's own memory (mlockall).
    public var lockMemory: Bool = true
    /// Back guest RAM with 2 MiB hugetlbfs pages (they must be reserved: vm.nr_hugepages).
    public var hugepages: Bool = false
    /// Exits to disable; none by default (a guest idling in HLT then leaves its CPU to the host).
    public var exits: [DisabledExit] = []
    /// Move movable host IRQs off the RT CPUs while the VM runs (restored when it stops).
    public var moveIRQs: Bool = true
    /// Period of the host-side wake-up latency probe on the first RT CPU, in µs; 0 = no probe.
    public var latencyProbeMicroseconds: Int = 0

    public static let keys: Set<String> = ["cpus", "priority", "lock_memory", "hugepages", "exits", "move_irqs", "latency_probe_us"]
    public static let priorityRange = 1...98
    /// Highest CPU number accepted (Linux's NR_CPUS limit is 8192).
    public static let maxCPU = 8191
    public static let latencyProbeRange = 100...1_000_000

    public init(cpus: [Int], priority: Int = 50, lockMemory: Bool = true, hugepages: Bool = false,
                exits: [DisabledExit] = [], moveIRQs: Bool = true, latencyProbeMicroseconds: Int = 0) {
        self.cpus = cpus; self.priority = priority; self.lockMemory = lockMemory
        self.hugepages = hugepages; self.exits = exits; self.moveIRQs = moveIRQs
        self.latencyProbeMicroseconds = latencyProbeMicroseconds
    }

    /// The KVM_CAP_X86_DISABLE_EXITS argument.
    public var disabledExitMask: UInt64 { exits.reduce(0) { $0 | $1.kvmBit } }
}

extension Validator {
    mutating func realtime(_ value: JSONValue?, vcpus: Int, memoryMiB: Int) -> RealtimeSettings? {
        guard let value else { return nil }
        let at = "$.realtime"
        guard case let .object(o) = value else { fail(at, "must be an object, got \(value.kindDescription)"); return nil }
        for key in o.keys.sorted() where !RealtimeSettings.keys.contains(key) {
            fail("\(at).\(key)", "unknown key" + suggestion(key, RealtimeSettings.keys))
        }
        var rt = RealtimeSettings(cpus: [])
        if let c = o["cpus"] {
            if case let .array(items) = c {
                var seen: [Int: Int] = [:]
                for (i, item) in items.enumerated() {
                    guard case let .integer(n) = item, let cpu = Int(exactly: n), (0...RealtimeSettings.maxCPU).contains(cpu) else {
                        fail("\(at).cpus[\(i)]", "must be a host CPU number from 0 to \(RealtimeSettings.maxCPU), got \(item.kindDescription)")
                        continue
                    }
                    if let first = seen[cpu] { fail("\(at).cpus[\(i)]", "CPU \(cpu) is already given to vCPU \(first): each vCPU needs its own CPU"); continue }
                    seen[cpu] = i
                    rt.cpus.append(cpu)
                }
                if items.isEmpty { fail("\(at).cpus", "must list one host CPU per vCPU, got an empty list") }
                else if items.count != vcpus {
                    fail("\(at).cpus", "lists \(items.count) CPU\(items.count == 1 ? "" : "s") for \(vcpus) vCPU\(vcpus == 1 ? "" : "s"): give each vCPU its own host CPU")
                }
            } else {
                fail("\(at).cpus", "must be an array of host CPU numbers, got \(c.kindDescription)")
            }
        } else {
            fail("\(at).cpus", "is required: one host CPU per vCPU")
        }
        if let p = o["priority"] {
            if case let .integer(n) = p, let prio = Int(exactly: n), RealtimeSettings.priorityRange.contains(prio) { rt.priority = prio }
            else { fail("\(at).priority", "must be a SCHED_FIFO priority from 1 to 98, got \(p.kindDescription)") }
        }
        if let b = bool(o, "lock_memory", at: at) { rt.lockMemory = b }
        if let b = bool(o, "hugepages", at: at) { rt.hugepages = b }
        if let b = bool(o, "move_irqs", at: at) { rt.moveIRQs = b }
        if let p = o["latency_probe_us"] {
            if case let .integer(n) = p, let us = Int(exactly: n), us == 0 || RealtimeSettings.latencyProbeRange.contains(us) { rt.latencyProbeMicroseconds = us }
            else { fail("\(at).latency_probe_us", "must be 0 (no probe) or a period from \(RealtimeSettings.latencyProbeRange.lowerBound) to \(RealtimeSettings.latencyProbeRange.upperBound) µs, got \(p.kindDescription)") }
        }
        if rt.hugepages && memoryMiB % 2 != 0 {
            fail("\(at).hugepages", "needs memory_mib to be a multiple of 2 (2 MiB pages), got \(memoryMiB)")
        }
        if let e = o["exits"] {
            if case let .array(items) = e {
                for (i, item) in items.enumerated() {
                    guard case let .string(s) = item, let exit = DisabledExit(rawValue: s) else {
                        fail("\(at).exits[\(i)]", "must be one of \(DisabledExit.allCases.map { "\"\($0.rawValue)\"" }.joined(separator: ", ")), got \(item.kindDescription)")
                        continue
                    }
                    if !rt.exits.contains(exit) { rt.exits.append(exit) }
                }
                rt.exits.sort()
            } else {
                fail("\(at).exits", "must be an array of exit names, got \(e.kindDescription)")
            }
        }
        return rt
    }
}
