/// Prometheus' text format, line by line: `# HELP`/`# TYPE` once per family, then its samples,
/// label values escaped (backslash, double quote, newline), numbers as Go's parser reads them.
struct ExpositionWriter {
    enum Kind: String { case counter, gauge, histogram }

    private(set) var text = ""

    mutating func family(_ name: String, _ kind: Kind, _ help: String) {
        text += "# HELP \(name) \(Self.escapeHelp(help))\n# TYPE \(name) \(kind.rawValue)\n"
    }

    /// Labels in a fixed order (`vm` first, `le` last, the others by name) so that equal input
    /// gives equal output.
    mutating func sample(_ name: String, _ labels: [String: String], _ value: Double) {
        text += name
        if !labels.isEmpty {
            func rank(_ key: String) -> Int { key == "vm" ? 0 : key == "le" ? 2 : 1 }
            let keys = labels.keys.sorted { (rank($0), $0) < (rank($1), $1) }
            text += "{" + keys.map { "\($0)=\"\(Self.escapeLabel(labels[$0]!))\"" }.joined(separator: ",") + "}"
        }
        text += " " + Self.number(value) + "\n"
    }

    /// Integers without a fraction (counters of bytes stay exact up to 2^53), infinities as
    /// `+Inf`/`-Inf`, anything else as Swift's shortest round-tripping form (`1e-06`, `0.25`).
    static func number(_ v: Double) -> String {
        if v.isNaN { return "NaN" }
        if v.isInfinite { return v > 0 ? "+Inf" : "-Inf" }
        if v == v.rounded(), abs(v) < 9.007_199_254_740_992e15 { return String(Int64(v)) }
        return "\(v)"
    }

    static func escapeLabel(_ s: String) -> String { escape(s, quote: true) }
    /// HELP text keeps its double quotes (the format escapes only backslash and newline there).
    static func escapeHelp(_ s: String) -> String { escape(s, quote: false) }

    static func escape(_ s: String, quote: Bool) -> String {
        var out = ""
        for c in s.unicodeScalars {
            switch c {
            case "\\": out += "\\\\"
            case "\"" where quote: out += "\\\""
            case "\n": out += "\\n"
            default: out.unicodeScalars.append(c)
            }
        }
        return out
    }
}
