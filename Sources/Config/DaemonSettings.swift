// Daemon-level fields of a VM definition (issue 4): how rtvisord runs the VM. rtvisor-vmm
// accepts and ignores them, so one file serves both the daemon and a foreground run.

/// What rtvisord does when a VM's process ends without being asked to.
public enum RestartPolicyKind: String, CaseIterable, Sendable, Codable {
    /// Never restart (a guest reboot still restarts: see `docs/daemon.md`).
    case no
    /// Restart after a failure: any end other than a guest power-off.
    case onFailure = "on-failure"
    /// Restart after any end, a guest power-off included.
    case always
}

public struct RestartSettings: Equatable, Sendable, Codable {
    public var policy: RestartPolicyKind = .no
    /// At most this many automatic restarts within `windowSeconds`; then the VM is left failed.
    public var limit: Int = 5
    public var windowSeconds: Int = 300
    /// The first restart waits `backoffMs`, each further one twice as long, up to `backoffMaxMs`.
    public var backoffMs: Int = 1000
    public var backoffMaxMs: Int = 30_000
    public init(policy: RestartPolicyKind = .no, limit: Int = 5, windowSeconds: Int = 300, backoffMs: Int = 1000, backoffMaxMs: Int = 30_000) {
        self.policy = policy; self.limit = limit; self.windowSeconds = windowSeconds
        self.backoffMs = backoffMs; self.backoffMaxMs = backoffMaxMs
    }

    static let keys: Set<String> = ["policy", "limit", "window_s", "backoff_ms", "backoff_max_ms"]
}

public struct DaemonSettings: Equatable, Sendable, Codable {
    /// Started when rtvisord starts (or when a reload adds the definition).
    public var autostart: Bool = false
    public var restart = RestartSettings()
    /// How long a graceful stop (Ctrl-Alt-Del to the guest) may take before the VMM is stopped hard.
    public var stopTimeoutSeconds: Int = 30
    /// The VM's share of CPU time against other VMs under contention (cgroup v2 `cpu.weight`,
    /// 1–10000; the kernel's default is 100). Applied by rtvisord where the cpu controller is
    /// delegated (docs/daemon.md, "cgroups").
    public var cpuWeight: Int?
    public init(autostart: Bool = false, restart: RestartSettings = RestartSettings(), stopTimeoutSeconds: Int = 30, cpuWeight: Int? = nil) {
        self.autostart = autostart; self.restart = restart; self.stopTimeoutSeconds = stopTimeoutSeconds; self.cpuWeight = cpuWeight
    }

    public static let cpuWeightRange = 1...10_000
    static let keys: Set<String> = ["autostart", "restart", "stop_timeout_s", "cpu_weight"]
}

extension Validator {
    /// `"autostart": bool`, `"restart": "on-failure"` or `{"policy": …, "limit": …, …}`, `"stop_timeout_s": int`.
    mutating func daemonSettings(_ o: [String: JSONValue]) -> DaemonSettings {
        var s = DaemonSettings()
        if let v = o["autostart"] {
            if case let .bool(b) = v { s.autostart = b } else { fail("$.autostart", "must be true or false, got \(v.kindDescription)") }
        }
        if let t = integer(o, "stop_timeout_s", range: 1...3600) { s.stopTimeoutSeconds = t }
        s.cpuWeight = integer(o, "cpu_weight", range: DaemonSettings.cpuWeightRange)
        guard let r = o["restart"] else { return s }
        let policies = RestartPolicyKind.allCases.map { "\"\($0.rawValue)\"" }.joined(separator: ", ")
        switch r {
        case let .string(p):
            if let k = RestartPolicyKind(rawValue: p) { s.restart.policy = k }
            else { fail("$.restart", "must be one of \(policies) or an object, got \"\(p)\"") }
        case let .object(ro):
            for key in ro.keys.sorted() where !RestartSettings.keys.contains(key) {
                fail("$.restart.\(key)", "unknown key" + suggestion(key, RestartSettings.keys))
            }
            if let p = ro["policy"] {
                if case let .string(ps) = p, let k = RestartPolicyKind(rawValue: ps) { s.restart.policy = k }
                else { fail("$.restart.policy", "must be one of \(policies), got \(p.kindDescription)") }
            } else {
                fail("$.restart.policy", "is required")
            }
            if let n = integer(ro, "limit", range: 0...10_000, path: "$.restart.limit") { s.restart.limit = n }
            if let n = integer(ro, "window_s", range: 1...86_400, path: "$.restart.window_s") { s.restart.windowSeconds = n }
            if let n = integer(ro, "backoff_ms", range: 0...3_600_000, path: "$.restart.backoff_ms") { s.restart.backoffMs = n }
            if let n = integer(ro, "backoff_max_ms", range: 0...3_600_000, path: "$.restart.backoff_max_ms") { s.restart.backoffMaxMs = n }
            if s.restart.backoffMaxMs < s.restart.backoffMs {
                fail("$.restart.backoff_max_ms", "must be at least backoff_ms (\(s.restart.backoffMs))")
            }
        default:
            fail("$.restart", "must be one of \(policies) or an object, got \(r.kindDescription)")
        }
        return s
    }

    mutating func integer(_ o: [String: JSONValue], _ key: String, range: ClosedRange<Int>, path: String) -> Int? {
        guard let v = o[key] else { return nil }
        guard case let .integer(i) = v, let n = Int(exactly: i), range.contains(n) else {
            fail(path, "must be an integer from \(range.lowerBound) to \(range.upperBound), got \(v.kindDescription)")
            return nil
        }
        return n
    }
}

// Public constructors for rtvisord, which reports problems of whole files (unreadable,
// duplicate VM names) in the same `FILE: $.path: reason` form.
extension DefinitionIssue {
    public init(in file: String, at path: String, reason: String) { self.init(file: file, path: path, reason: reason) }
}

extension DefinitionError {
    public init(_ issues: [DefinitionIssue]) { self.init(issues: issues) }
}
