#if canImport(Glibc)
import Glibc
#endif

/// A failed write to a kernel interface file (cgroupfs, procfs): which file, what, and errno.
public struct HostFileError: Error, Equatable, CustomStringConvertible {
    public let path: String
    public let value: String
    public let errno: Int32
    public var description: String { "cannot write \"\(value)\" to \(path): \(errnoMessage(errno))" }
}

/// Reads and writes small kernel interface files with one syscall each: cgroupfs and procfs
/// report errors (EINVAL for a task that cannot move, EIO for an IRQ that cannot be steered)
/// per write, which buffered I/O would hide.
public enum HostFiles {
    public static func read(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while let n = try? retryInterrupted({ buf.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) } }), n > 0 {
            out += buf[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The file's first line without surrounding whitespace.
    public static func line(_ path: String) -> String? {
        read(path).map { String($0.split(separator: "\n", omittingEmptySubsequences: false).first ?? "").trimmingASCIIWhitespace() }
    }

    /// Opens like the shell's `>` (O_CREAT|O_TRUNC, harmless on kernel files) and writes once.
    public static func write(_ path: String, _ value: String) throws(HostFileError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw HostFileError(path: path, value: value, errno: errno) }
        defer { close(fd) }
        let bytes = Array(value.utf8)
        // One write(2), not writeAll: the kernel takes or rejects the value as a whole.
        do { try retryInterrupted { bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) } } }
        catch { throw HostFileError(path: path, value: value, errno: error.rawValue) }
    }

    /// Writes `bytes` to `path.tmp` and renames it over `path`, so readers see the old file or the
    /// new one, never a partial one. Best effort: a failure leaves the old file.
    public static func replace(_ path: String, with bytes: [UInt8], mode: mode_t = 0o644) {
        let tmp = path + ".tmp"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
        guard fd >= 0 else {
            // A jailed VMM may own the file but not its directory (a foreground run's
            // --latency-file): rewrite it in place; a reader may then see it half written.
            let inPlace = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC)
            guard inPlace >= 0 else { return }
            _ = bytes.withUnsafeBytes { Glibc.write(inPlace, $0.baseAddress, $0.count) }
            close(inPlace)
            return
        }
        let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        close(fd)
        if n == bytes.count { rename(tmp, path) } else { unlink(tmp) }
    }

    /// Writes `bytes` to `path.tmp` and renames it over `path`: readers (and a daemon restarted
    /// after a crash) see the old file or the new one, never a partial one. No fsync: this is for
    /// runtime state under /run, which a reboot discards anyway, and on a disk-backed /run an
    /// fsync costs milliseconds of every VM start.
    public static func replaceAtomically(_ path: String, with bytes: [UInt8], mode: mode_t = 0o644) throws(HostFileError) {
        let tmp = path + ".tmp"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode)
        guard fd >= 0 else { throw HostFileError(path: tmp, value: "\(bytes.count) bytes", errno: errno) }
        do { try writeAll(fd, bytes) } catch {
            close(fd); unlink(tmp)
            throw HostFileError(path: tmp, value: "\(bytes.count) bytes", errno: error.rawValue)
        }
        close(fd)
        guard rename(tmp, path) == 0 else {
            let e = errno
            unlink(tmp)
            throw HostFileError(path: path, value: "\(bytes.count) bytes", errno: e)
        }
    }

    public static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    public static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    /// Names in a directory, without "." and "..".
    public static func list(_ path: String) -> [String] {
        guard let d = opendir(path) else { return [] }
        defer { closedir(d) }
        var names: [String] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }
}

extension String {
    /// Without leading and trailing spaces, tabs and line ends (kernel files end in "\n").
    public func trimmingASCIIWhitespace() -> String {
        let ws: Set<Character> = [" ", "\t", "\n", "\r"]
        var s = Substring(self)
        while let f = s.first, ws.contains(f) { s = s.dropFirst() }
        while let l = s.last, ws.contains(l) { s = s.dropLast() }
        return String(s)
    }
}
