import CLinux
import Posix
#if canImport(Glibc)
import Glibc
#endif

/// What the VMM keeps once it drops root (docs/sandbox.md): a private mount namespace rooted in
/// an empty tmpfs with only `visible` paths bound in, its own uid/gid, no capabilities,
/// no_new_privs, and resource limits. Everything else (KVM, taps, images, VFIO) is an fd opened
/// before, which keeps working.
public struct JailPlan: Equatable, Sendable {
    public struct Path: Equatable, Sendable {
        public var path: String
        public var writable: Bool
        public init(_ path: String, writable: Bool = false) { self.path = path; self.writable = writable }
    }
    /// The directory the tmpfs root is mounted on (a VM's: `JailLocation.root(vm:)`).
    public var root: String
    public var visible: [Path]
    /// Chowned to the VM's uid before the switch (its run directory, the real-time cgroup files).
    public var owned: [String]
    public var uid: UInt32
    public var gid: UInt32
    /// (resource, limit): soft and hard.
    public var limits: [(resource: Int32, name: String, value: UInt64)]

    public init(root: String, visible: [Path], owned: [String], uid: UInt32, gid: UInt32, limits: [(resource: Int32, name: String, value: UInt64)]) {
        self.root = root; self.visible = visible; self.owned = owned; self.uid = uid; self.gid = gid; self.limits = limits
    }

    public static func == (a: Self, b: Self) -> Bool {
        a.root == b.root && a.visible == b.visible && a.owned == b.owned && a.uid == b.uid && a.gid == b.gid
            && a.limits.map(\.name) == b.limits.map(\.name) && a.limits.map(\.value) == b.limits.map(\.value)
    }

    /// Per-VM uids/gids: `uidBase` + a hash of the name in a range of `uidRange` (no passwd entry
    /// is needed; `--jail-uid` overrides, e.g. to take ids from a site's allocation).
    public static let uidBase: UInt32 = 1_600_000_000
    public static let uidRange: UInt32 = 1_000_000

    public static func uid(forVM name: String) -> UInt32 {
        var h: UInt32 = 0x811C_9DC5 // FNV-1a 32
        for b in name.utf8 { h = (h ^ UInt32(b)) &* 0x0100_0193 }
        return uidBase + h % uidRange
    }

    /// The paths a VMM needs after the switch, parents before children, without duplicates.
    /// Nonexistent optional paths are left out by `enter`.
    public static func ordered(_ paths: [Path]) -> [Path] {
        var seen: [String: Int] = [:]
        var out: [Path] = []
        for p in paths {
            let normalized = p.path.count > 1 && p.path.hasSuffix("/") ? String(p.path.dropLast()) : p.path
            if let i = seen[normalized] { out[i].writable = out[i].writable || p.writable; continue }
            seen[normalized] = out.count
            out.append(Path(normalized, writable: p.writable))
        }
        return out.sorted { $0.path.split(separator: "/").count < $1.path.split(separator: "/").count }
    }
}

public struct JailError: Error, CustomStringConvertible {
    public let description: String
    public init(description: String) { self.description = description }
}

public enum Jail {
    /// Threads of this process (/proc/self/task): the mount namespace is per thread, so the jail
    /// must be entered while there is only one.
    public static func threadCount() -> Int { HostFiles.list("/proc/self/task").count }

    /// Enters the jail; the process is unprivileged afterwards (all threads).
    public static func enter(_ plan: JailPlan) throws {
        func fail(_ what: String) -> JailError { JailError(description: "jail: \(what): \(errnoMessage())") }
        let threads = threadCount()
        guard threads == 1 else { throw JailError(description: "jail: \(threads) threads exist; it must be entered by a single-threaded VMM") }
        // The mount point on the host: an empty directory only root can enter.
        var prefix = ""
        for part in plan.root.split(separator: "/") {
            prefix += "/" + part
            if mkdir(prefix, 0o755) != 0 && errno != EEXIST { throw fail("mkdir \(prefix)") }
        }
        chmod(plan.root, 0o700)
        for path in plan.owned where chown(path, plan.uid, UInt32.max) != 0 { throw fail("chown \(path) to uid \(plan.uid)") }
        for limit in plan.limits {
            var r = rlimit(rlim_cur: rlim_t(limit.value), rlim_max: rlim_t(limit.value))
            if setrlimit(__rlimit_resource_t(UInt32(limit.resource)), &r) != 0 { throw fail("setrlimit \(limit.name) \(limit.value)") }
        }
        pinTimezone()
        let visible = JailPlan.ordered(plan.visible).filter { access($0.path, F_OK) == 0 }
        var step = [CChar](repeating: 0, count: 128)
        let cPaths = visible.map { strdup($0.path) }
        defer { cPaths.forEach { free($0) } }
        let readOnly = visible.map { $0.writable ? Int32(0) : 1 }
        let rc = cPaths.map { UnsafePointer($0) }.withUnsafeBufferPointer { paths in
            readOnly.withUnsafeBufferPointer { ro in
                clinux_enter_mount_jail(plan.root, paths.baseAddress, ro.baseAddress, Int32(visible.count), &step)
            }
        }
        if rc != 0 { throw fail(String(cString: step)) }
        if clinux_drop_privileges(plan.uid, plan.gid, &step) != 0 { throw fail(String(cString: step)) }
    }

    /// The jail has no /etc: without TZ, glibc would look for /etc/localtime at every local-time
    /// conversion (a log timestamp), an openat the seccomp filters forbid. The zone's current
    /// rule is the POSIX TZ string at the end of a TZif file; TZ set to it needs no file.
    public static func pinTimezone(localtime: String = "/etc/localtime") {
        guard getenv("TZ") == nil else { return }
        var rule = "UTC0"
        let fd = open(localtime, O_RDONLY | O_CLOEXEC)
        if fd >= 0 {
            var bytes: [UInt8] = []
            var buf = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = read(fd, &buf, buf.count)
                if n <= 0 { break }
                bytes += buf[0..<n]
            }
            close(fd)
            if bytes.starts(with: Array("TZif".utf8)), bytes.last == 0x0A,
               let start = bytes.dropLast().lastIndex(of: 0x0A), start < bytes.count - 2 {
                let footer = String(decoding: bytes[(start + 1)..<(bytes.count - 1)], as: UTF8.self)
                if !footer.isEmpty && footer.utf8.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) { rule = footer }
            }
        }
        setenv("TZ", rule, 1)
        tzset()
    }

    /// The calling thread's effective and permitted capability sets.
    public static func capabilities() -> (effective: UInt64, permitted: UInt64)? {
        var e: UInt64 = 0, p: UInt64 = 0
        return clinux_capabilities(&e, &p) == 0 ? (e, p) : nil
    }
}
