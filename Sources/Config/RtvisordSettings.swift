import Foundation
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// rtvisord's own settings (`--settings`, default /etc/rtvisor/rtvisord.json; docs/metrics.md):
/// what the daemon as a whole does, unlike a VM definition's daemon fields (`DaemonSettings`).
/// A missing file means the defaults; a present one is validated like a definition, every
/// problem reported as `FILE: $.json.path: reason`, and rtvisord does not start with it.
public struct RtvisordSettings: Equatable, Sendable {
    public var metrics = MetricsSettings()
    public init(metrics: MetricsSettings = MetricsSettings()) { self.metrics = metrics }

    public static let defaultPath = "/etc/rtvisor/rtvisord.json"
    static let keys: Set<String> = ["metrics"]

    /// The settings at `path`; the defaults when no file is there.
    public static func load(path: String) throws(DefinitionError) -> RtvisordSettings {
        guard let data = FileManager.default.contents(atPath: path) else {
            if access(path, F_OK) != 0 && errno == ENOENT { return RtvisordSettings() }
            throw DefinitionError(issues: [DefinitionIssue(file: path, path: "$", reason: "cannot read file: \(VMDefinition.reason(for: path))")])
        }
        return try parse(data, file: path)
    }

    public static func parse(_ data: Data, file: String) throws(DefinitionError) -> RtvisordSettings {
        let root: JSONValue
        do { root = try JSONValue.parse(data) } catch {
            throw DefinitionError(issues: [DefinitionIssue(file: file, path: "$", reason: "invalid JSON: \(VMDefinition.cleanJSONError("\(error)"))")])
        }
        var v = Validator(file: file, baseDirectory: "/", checkFiles: false)
        let settings = v.rtvisordSettings(root)
        if !v.issues.isEmpty { throw DefinitionError(issues: v.issues) }
        return settings
    }
}

/// `"metrics"`: where `GET /metrics` and the dashboard are served besides `metrics.sock`, and
/// who may start and stop VMs from the dashboard.
public struct MetricsSettings: Equatable, Sendable {
    /// The TCP listener; off unless enabled (`metrics.sock` in the run directory is always there).
    public var tcp = TCPListenerSettings()
    /// The group whose members may start and stop VMs from the dashboard (with the token
    /// rtvisord writes for that group, docs/metrics.md); nil: the dashboard is read-only.
    public var dashboardActionsGroup: String?
    /// Whether the metrics listeners (any local user) serve the VMs' last console lines to the
    /// dashboard; off by default: a console may show what not everyone should read.
    public var dashboardConsole = false
    public init(tcp: TCPListenerSettings = TCPListenerSettings(), dashboardActionsGroup: String? = nil, dashboardConsole: Bool = false) {
        self.tcp = tcp; self.dashboardActionsGroup = dashboardActionsGroup; self.dashboardConsole = dashboardConsole
    }
    static let keys: Set<String> = ["tcp", "dashboard_actions_group", "dashboard_console"]

    /// A group name as `groupadd` takes it (the group itself is looked up when rtvisord starts).
    public static func isGroupName(_ s: String) -> Bool {
        guard let first = s.unicodeScalars.first, s.count <= 32, ("a"..."z").contains(first) || first == "_" else { return false }
        return s.unicodeScalars.allSatisfy { ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "_" || $0 == "-" }
    }
}

public struct TCPListenerSettings: Equatable, Sendable {
    public var enabled = false
    /// An IPv4 or IPv6 address literal: loopback unless the operator chooses otherwise.
    public var address = "127.0.0.1"
    public var port = 9595
    public init(enabled: Bool = false, address: String = "127.0.0.1", port: Int = 9595) {
        self.enabled = enabled; self.address = address; self.port = port
    }
    static let keys: Set<String> = ["enabled", "address", "port"]

    /// Whether `address` is an IPv4 or IPv6 literal (no host names: rtvisord resolves nothing).
    public static func isAddressLiteral(_ s: String) -> Bool {
        var v4 = in_addr(), v6 = in6_addr()
        return inet_pton(AF_INET, s, &v4) == 1 || inet_pton(AF_INET6, s, &v6) == 1
    }
}

extension Validator {
    mutating func rtvisordSettings(_ root: JSONValue) -> RtvisordSettings {
        var s = RtvisordSettings()
        guard let o = object(root, at: "$", known: RtvisordSettings.keys) else { return s }
        guard let m = o["metrics"], let mo = object(m, at: "$.metrics", known: MetricsSettings.keys) else { return s }
        if let g = mo["dashboard_actions_group"], g != .null {
            if case let .string(name) = g, MetricsSettings.isGroupName(name) { s.metrics.dashboardActionsGroup = name }
            else { fail("$.metrics.dashboard_actions_group", "must be a group name (lower-case letters, digits, '_' and '-') or null, got \(g.kindDescription)") }
        }
        if let c = bool(mo, "dashboard_console", at: "$.metrics") { s.metrics.dashboardConsole = c }
        if let t = mo["tcp"], let to = object(t, at: "$.metrics.tcp", known: TCPListenerSettings.keys) {
            if let b = bool(to, "enabled", at: "$.metrics.tcp") { s.metrics.tcp.enabled = b }
            if let a = to["address"] {
                if case let .string(text) = a, TCPListenerSettings.isAddressLiteral(text) { s.metrics.tcp.address = text }
                else { fail("$.metrics.tcp.address", "must be an IPv4 or IPv6 address such as \"127.0.0.1\" or \"::1\", got \(a.kindDescription)") }
            }
            if let p = integer(to, "port", range: 1...65535, path: "$.metrics.tcp.port") { s.metrics.tcp.port = p }
        }
        return s
    }

    /// A JSON object whose keys are all known (each unknown one is an issue), or nil (an issue).
    mutating func object(_ v: JSONValue, at path: String, known: Set<String>) -> [String: JSONValue]? {
        guard case let .object(o) = v else { fail(path, "must be a JSON object, got \(v.kindDescription)"); return nil }
        for key in o.keys.sorted() where !known.contains(key) { fail("\(path).\(key)", "unknown key" + suggestion(key, known)) }
        return o
    }
}
