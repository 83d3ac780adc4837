import SystemPackage
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// The VMM's exit-status file (`--status-file`): one line, `STATUS REASON`. rtvisor-vmm writes it
/// when it ends, and so does its SIGSYS handler (C, async-signal-safe: `csandbox.c` writes the
/// same format, status 159, reason `seccomp: … made forbidden syscall N (NAME)`). rtvisord reads
/// it for a VMM it re-adopted, whose status it cannot wait for, and for the seccomp syscall.
public struct VMMExitReport: Equatable, Sendable {
    public var status: VMMExitStatus
    public var reason: String

    public init(status: VMMExitStatus, reason: String) { self.status = status; self.reason = reason }

    /// The file's contents. A reason is one line: line breaks in it become spaces.
    public var line: String {
        "\(status.code) \(reason.map { $0.isNewline ? " " : $0 }.reduce(into: "") { $0.append($1) })\n"
    }

    /// nil unless the first line starts with a decimal status.
    public init?(parsing text: String) {
        let line = text.split(separator: "\n", omittingEmptySubsequences: false).first ?? ""
        let parts = line.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: false)
        guard let first = parts.first, let code = Int32(first) else { return nil }
        self.init(status: VMMExitStatus(code: code), reason: parts.count > 1 ? String(parts[1]) : "")
    }

    public static func read(_ path: String) -> VMMExitReport? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        return VMMExitReport(parsing: String(decoding: data, as: UTF8.self))
    }

    /// Atomically (a temporary file, then rename) so a reader never sees half a report; a jailed
    /// VMM that cannot create files beside it rewrites the file itself (it is bound writable).
    public func write(to path: String) throws {
        let bytes = Array(line.utf8)
        let tmp = path + ".tmp"
        do {
            let fd = try FileDescriptor.open(tmp, .writeOnly, options: [.create, .truncate, .closeOnExec], permissions: [.ownerReadWrite, .groupRead])
            _ = try fd.closeAfter { try fd.writeAll(bytes) }
            guard rename(tmp, path) == 0 else { throw Errno(rawValue: errno) }
        } catch {
            let fd = try FileDescriptor.open(path, .writeOnly, options: [.truncate, .closeOnExec])
            _ = try fd.closeAfter { try fd.writeAll(bytes) }
        }
    }

    /// The prefix of a SIGSYS report's reason (csandbox.c).
    public static let seccompPrefix = "seccomp: "

    /// "seccomp: … made forbidden syscall 41 (socket)" → "socket" (also in a longer reason the
    /// daemon built around it); nil for any other reason.
    public static func seccompSyscall(in reason: String) -> String? {
        guard let r = reason.firstRange(of: seccompPrefix), let m = reason[r.upperBound...].firstRange(of: "made forbidden syscall ") else { return nil }
        let rest = reason[m.upperBound...]
        guard let open = rest.firstIndex(of: "("), let close = rest.firstIndex(of: ")"), open < close else { return String(rest) }
        return String(rest[rest.index(after: open)..<close])
    }
}
