// The `sandbox` block of a definition (issue 7): the VMM's seccomp filters (docs/sandbox.md).

import SandboxMode

public struct SandboxSettings: Equatable, Sendable, Codable {
    public var seccomp: SeccompMode = .enforce
    public static let keys: Set<String> = ["seccomp"]
    public init(seccomp: SeccompMode = .enforce) { self.seccomp = seccomp }
}

extension Validator {
    mutating func sandbox(_ value: JSONValue?) -> SandboxSettings {
        var settings = SandboxSettings()
        guard let value else { return settings }
        let at = "$.sandbox"
        guard case let .object(o) = value else { fail(at, "must be an object, got \(value.kindDescription)"); return settings }
        for key in o.keys.sorted() where !SandboxSettings.keys.contains(key) {
            fail("\(at).\(key)", "unknown key" + suggestion(key, SandboxSettings.keys))
        }
        if let m = o["seccomp"] {
            if case let .string(s) = m, let mode = SeccompMode(rawValue: s) { settings.seccomp = mode }
            else { fail("\(at).seccomp", "must be one of \(SeccompMode.allCases.map { "\"\($0.rawValue)\"" }.joined(separator: ", ")), got \(m.kindDescription)") }
        }
        return settings
    }
}
