import CLinux
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Why a file a VM definition names was refused: the definition field, the path, the reason.
public struct GuestFileError: Error, Equatable, CustomStringConvertible {
    public let field: String
    public let path: String
    public let reason: String
    public init(field: String, path: String, reason: String) { self.field = field; self.path = path; self.reason = reason }
    public var description: String { "\(field): \(path): \(reason)" }
}

/// A file a VM definition names (kernel, initrd, disk image), found so that only root decides
/// which file it is (docs/sandbox.md, "Guest files"). The VMM runs as root, and a user who can
/// write a directory on the path could otherwise point it anywhere between a check and an open.
///
/// The path is walked one name at a time from `/`, each name looked up with
/// `openat(O_PATH | O_NOFOLLOW)` in the directory found before, so no other lookup of the path
/// ever happens. A symlink is followed only if root owns it (an administrator's own links keep
/// working; a user's link is the tool of the attack), or whoever runs the VMM when not root. A
/// symlink or file with more than one link in a directory a non-root user can change must be
/// that user's own (with fs.protected_hardlinks off, the user could have linked someone else's
/// file there). The file found must be of a kind the field allows, judged before it is opened:
/// a FIFO, a socket or a device is never opened at all. Everything after that goes through this
/// descriptor: `open` reopens the same inode through `/proc/self/fd`, not the path.
public final class GuestFile: Sendable {
    public enum Kind: Sendable, Hashable {
        case regularFile, blockDevice
    }

    /// The definition field, for messages (`$.kernel`, `$.disks[0].path`).
    public let field: String
    /// The path as the definition names it.
    public let path: String
    public let kind: Kind
    /// Who besides root can change the file (its owner, a group or everyone may write it), as a
    /// sentence to log; nil when only root can. Not a refusal: an administrator may hand a user's
    /// own image to a VM, and that user then decides what the guest reads, not what the host does.
    public let writableByOthers: String?
    /// The O_PATH descriptor of the file found: it names the inode, no data passes through it.
    private let located: FileDescriptor
    private let device: UInt64, inode: UInt64

    /// Symlinks followed at most (the kernel's own limit, MAXSYMLINKS).
    public static let maxSymlinks = 40

    deinit { try? located.close() }

    private init(field: String, path: String, kind: Kind, writableByOthers: String?, located: FileDescriptor, status: stat) {
        self.field = field; self.path = path; self.kind = kind; self.writableByOthers = writableByOthers
        self.located = located
        self.device = UInt64(status.st_dev); self.inode = UInt64(status.st_ino)
    }

    /// Finds `path` under the rules above; `kinds` are what `field` may name. `user` is who runs
    /// the VMM: root under rtvisord, so only root's symlinks are followed; a VMM a user runs as
    /// themselves follows their own links too (they lead nowhere that user could not open).
    public static func locate(_ path: String, field: String, allowing kinds: Set<Kind>,
                              user: uid_t = geteuid()) throws(GuestFileError) -> GuestFile {
        func refuse(_ reason: String) -> GuestFileError { GuestFileError(field: field, path: path, reason: reason) }
        guard path.hasPrefix("/") else { throw refuse("not an absolute path") }
        var walk = try Walk(refuse)
        defer { close(walk.directory) }
        var pending = Array(components(of: path).reversed())
        var symlinks = 0
        var found: (fd: Int32, status: stat)? = nil
        while let name = pending.popLast() {
            let shown = name == ".." ? Array(walk.shown.dropLast()) : walk.shown + [name]
            let fd = openat(walk.directory, String(name), CLINUX_O_PATH | O_NOFOLLOW | O_CLOEXEC)
            guard fd >= 0 else { throw refuse("\(display(shown)): \(errnoMessage())") }
            var st = stat()
            guard fstat(fd, &st) == 0 else { let e = errno; close(fd); throw refuse("fstat \(display(shown)): \(errnoMessage(e))") }
            if st.st_mode & S_IFMT == S_IFLNK {
                defer { close(fd) }
                guard st.st_uid == 0 || st.st_uid == user else {
                    let whose = user == 0 ? "root's" : "root's and uid \(user)'s (who runs this VMM)"
                    throw refuse("the symlink \(display(shown)) is owned by uid \(st.st_uid); only \(whose) symlinks are followed")
                }
                if let reason = walk.foreignLink(st, named: "the symlink \(display(shown))") { throw refuse(reason) }
                symlinks += 1
                guard symlinks <= maxSymlinks else { throw refuse("more than \(maxSymlinks) symlinks on the way (a loop?)") }
                // readlinkat with an empty name reads the link the O_PATH descriptor holds: the
                // link just checked, not whatever the name means by now.
                var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
                let n = readlinkat(fd, "", &buffer, buffer.count - 1)
                guard n > 0 else { throw refuse("readlink \(display(shown)): \(n < 0 ? errnoMessage() : "empty link")") }
                let target = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
                if target.hasPrefix("/") { try walk.restartAtRoot() }
                pending.append(contentsOf: components(of: target).reversed())
                continue
            }
            if pending.isEmpty {
                found = (fd, st)
            } else if st.st_mode & S_IFMT == S_IFDIR {
                walk.enter(fd, st, shown)
            } else {
                close(fd)
                throw refuse("\(display(shown)): not a directory")
            }
        }
        let expected = kinds.contains(.blockDevice) ? "a regular file or block device" : "a regular file"
        // No name left to look up: the path is "/", or ends in a symlink to it.
        guard let found else { throw refuse("\(describe(S_IFDIR)), not \(expected)") }
        let descriptor = FileDescriptor(rawValue: found.fd)
        let status = found.status
        let type = status.st_mode & S_IFMT
        let kind: Kind? = type == S_IFREG ? .regularFile : type == S_IFBLK ? .blockDevice : nil
        guard let kind, kinds.contains(kind) else {
            try? descriptor.close()
            throw refuse("\(describe(type)), not \(expected)")
        }
        if let reason = walk.foreignLink(status, named: "the file") {
            try? descriptor.close()
            throw refuse(reason)
        }
        return GuestFile(field: field, path: path, kind: kind, writableByOthers: kind == .regularFile ? writers(status) : nil,
                         located: descriptor, status: status)
    }

    /// The file opened for I/O with `flags` (`O_RDONLY`, `O_RDWR | O_EXCL`, `O_DIRECT`, …): the
    /// inode found by `locate`, reopened through `/proc/self/fd/N`, never through the path.
    /// The caller owns the descriptor.
    public func open(_ flags: Int32) throws(Errno) -> FileDescriptor {
        let raw = try retryInterrupted { Glibc.open("/proc/self/fd/\(located.rawValue)", flags | O_CLOEXEC | O_NOCTTY) }
        // Belt and braces: what was opened is what was checked (a different inode cannot come
        // back from our own descriptor; ESTALE if it ever did).
        var st = stat()
        guard fstat(raw, &st) == 0, UInt64(st.st_dev) == device, UInt64(st.st_ino) == inode else {
            close(raw)
            throw Errno(rawValue: ESTALE)
        }
        return FileDescriptor(rawValue: raw)
    }

    /// The directory the walk is in, and the path walked so far (for messages).
    private struct Walk {
        var directory: Int32
        var status: stat
        var shown: [Substring] = []
        let refuse: (String) -> GuestFileError

        init(_ refuse: @escaping (String) -> GuestFileError) throws(GuestFileError) {
            self.refuse = refuse
            directory = -1
            status = stat()
            try restartAtRoot()
        }

        /// Back to `/` (an absolute symlink target).
        mutating func restartAtRoot() throws(GuestFileError) {
            let fd = Glibc.open("/", CLINUX_O_PATH | O_DIRECTORY | O_CLOEXEC)
            var st = stat()
            guard fd >= 0, fstat(fd, &st) == 0 else { throw refuse("/: \(errnoMessage())") }
            enter(fd, st, [])
        }

        /// Moves into directory `fd` (closing the one before): the walk holds one directory at a time.
        mutating func enter(_ fd: Int32, _ st: stat, _ path: [Substring]) {
            if directory >= 0 { close(directory) }
            directory = fd; status = st; shown = path
        }

        /// Why an entry with several links in this directory is refused, or nil: in a directory
        /// a non-root user can change (owns it, or its group or everyone may write it), only
        /// that user's own entries may have more than one link.
        func foreignLink(_ entry: stat, named what: String) -> String? {
            guard entry.st_nlink > 1 else { return nil }
            let userOwned = status.st_uid != 0
            let sharedWritable = status.st_mode & 0o022 != 0
            guard userOwned || sharedWritable else { return nil }
            if userOwned && !sharedWritable && entry.st_uid == status.st_uid { return nil }
            let who = userOwned ? "uid \(status.st_uid)" : "users other than root"
            return "\(what) has \(entry.st_nlink) links and lies in \(GuestFile.display(shown)), which \(who) can change: it may be a link to a file they may not read, so only their own files may have several links there"
        }
    }

    static func components(of path: String) -> [Substring] {
        path.split(separator: "/").filter { $0 != "." }
    }

    static func display(_ components: [Substring]) -> String { "/" + components.joined(separator: "/") }

    static func describe(_ type: mode_t) -> String {
        switch type {
        case S_IFDIR: "a directory"
        case S_IFIFO: "a FIFO"
        case S_IFSOCK: "a socket"
        case S_IFCHR: "a character device"
        case S_IFBLK: "a block device"
        case S_IFLNK: "a symlink"
        default: "a file of unknown type"
        }
    }

    /// Who besides root can change a file, or nil.
    static func writers(_ st: stat) -> String? {
        var who: [String] = []
        if st.st_uid != 0 { who.append("owned by uid \(st.st_uid)") }
        if st.st_mode & 0o020 != 0 { who.append("writable by group \(st.st_gid)") }
        if st.st_mode & 0o002 != 0 { who.append("writable by every user") }
        return who.isEmpty ? nil : who.joined(separator: ", ")
    }
}
