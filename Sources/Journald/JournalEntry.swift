/// journald's native protocol (systemd.journal-fields(7), "Native Journal Protocol"): one
/// datagram per entry; each field is `NAME=value\n`, or, when the value contains a newline (or
/// is not text), `NAME\n` + the value's length as 64-bit little endian + the value + `\n`.
public struct JournalEntry: Equatable, Sendable {
    public private(set) var fields: [(name: String, value: [UInt8])] = []

    public init() {}

    public init(message: String, priority: JournalPriority, fields extra: [String: String] = [:]) {
        append("MESSAGE", message)
        append("PRIORITY", String(priority.rawValue))
        for (k, v) in extra.sorted(by: { $0.key < $1.key }) { append(k, v) }
    }

    /// Adds a field; names that journald would reject are turned into valid ones (`JournalField.name(for:)`).
    public mutating func append(_ name: String, _ value: String) { append(name, Array(value.utf8)) }

    public mutating func append(_ name: String, _ value: [UInt8]) {
        fields.append((JournalField.name(for: name), value))
    }

    public func value(of name: String) -> String? {
        fields.first { $0.name == name }.map { String(decoding: $0.value, as: UTF8.self) }
    }

    /// The datagram payload.
    public func encoded() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(fields.reduce(0) { $0 + $1.name.utf8.count + $1.value.count + 10 })
        for (name, value) in fields {
            out.append(contentsOf: name.utf8)
            if value.contains(0x0A) {
                // Binary-safe form: newline after the name, then a 64-bit little-endian length.
                out.append(0x0A)
                var n = UInt64(value.count).littleEndian
                withUnsafeBytes(of: &n) { out.append(contentsOf: $0) }
                out.append(contentsOf: value)
            } else {
                out.append(UInt8(ascii: "="))
                out.append(contentsOf: value)
            }
            out.append(0x0A)
        }
        return out
    }

    public static func == (a: JournalEntry, b: JournalEntry) -> Bool {
        a.fields.count == b.fields.count && zip(a.fields, b.fields).allSatisfy { $0.name == $1.name && $0.value == $1.value }
    }

    /// Parses a datagram back into fields (the inverse of `encoded()`; for tests and diagnostics).
    public static func decode(_ bytes: [UInt8]) -> JournalEntry? {
        var e = JournalEntry()
        var i = 0
        while i < bytes.count {
            guard let end = bytes[i...].firstIndex(where: { $0 == 0x0A || $0 == UInt8(ascii: "=") }) else { return nil }
            let name = String(decoding: bytes[i..<end], as: UTF8.self)
            if bytes[end] == UInt8(ascii: "=") {
                guard let nl = bytes[(end + 1)...].firstIndex(of: 0x0A) else { return nil }
                e.fields.append((name, Array(bytes[(end + 1)..<nl])))
                i = nl + 1
            } else {
                guard end + 9 <= bytes.count else { return nil }
                var n: UInt64 = 0
                for k in 0..<8 { n |= UInt64(bytes[end + 1 + k]) << (8 * UInt64(k)) }
                let start = end + 9
                guard n <= UInt64(bytes.count - start), start + Int(n) < bytes.count, bytes[start + Int(n)] == 0x0A else { return nil }
                e.fields.append((name, Array(bytes[start..<(start + Int(n))])))
                i = start + Int(n) + 1
            }
        }
        return e
    }
}

/// syslog priorities as journald's PRIORITY field and the `<N>` stderr prefix use them.
public enum JournalPriority: Int, Sendable, Comparable {
    case emergency = 0, alert, critical, error, warning, notice, info, debug
    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
}

public enum JournalField {
    /// journald accepts names of 1–64 characters from A–Z, 0–9 and '_', not starting with a
    /// digit or '_' (leading '_' is reserved for fields journald adds itself). Anything else is
    /// mapped: lowercase letters are uppercased, other characters become '_', a bad first
    /// character gets an 'X' in front.
    public static func isValid(_ name: String) -> Bool {
        let u = Array(name.utf8)
        guard (1...64).contains(u.count), let f = u.first else { return false }
        if f == UInt8(ascii: "_") || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(f) { return false }
        return u.allSatisfy { (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains($0) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) || $0 == UInt8(ascii: "_") }
    }

    public static func name(for key: String) -> String {
        if isValid(key) { return key }
        var out: [UInt8] = key.utf8.map { c in
            switch c {
            case UInt8(ascii: "a")...UInt8(ascii: "z"): c - 32
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "_"): c
            default: UInt8(ascii: "_")
            }
        }
        if out.isEmpty || out[0] == UInt8(ascii: "_") || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(out[0]) {
            out.insert(UInt8(ascii: "X"), at: 0)
        }
        return String(decoding: out.prefix(64), as: UTF8.self)
    }
}
