import Foundation
@testable import Posix
import SystemPackage
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// How the VMM finds the files a definition names (docs/sandbox.md, "Guest files"): only root's
/// symlinks, no FIFO, socket, device or directory, no other user's file linked into a directory
/// a user controls, and every later open through the descriptor found, never the path.
/// Symlinks and files of another owner need root to make (lchown), so those tests run as root.
@Suite struct GuestFileTests {
    static let nobody: UInt32 = 65534
    static let isRoot = getuid() == 0
    static let disk: Set<GuestFile.Kind> = [.regularFile, .blockDevice]

    /// A scratch directory (root's, 0700, under /tmp), removed afterwards.
    final class Scratch {
        let dir: String
        init() throws {
            var template = Array("/tmp/rtvisor-guestfile-XXXXXX".utf8CString)
            guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else { throw Errno(rawValue: errno) }
            dir = String(cString: made)
        }
        deinit { try? FileManager.default.removeItem(atPath: dir) }

        /// Writes `text` to `name` (parents made), mode `mode`; returns the full path.
        @discardableResult
        func write(_ name: String, _ text: String, mode: mode_t = 0o644) -> String {
            let path = dir + "/" + name
            try? FileManager.default.createDirectory(atPath: String(path[..<path.lastIndex(of: "/")!]), withIntermediateDirectories: true)
            _ = FileManager.default.createFile(atPath: path, contents: Data(text.utf8))
            chmod(path, mode)
            return path
        }

        /// A directory `name` owned by `uid` with `mode`.
        @discardableResult
        func directory(_ name: String, owner uid: UInt32 = 0, mode: mode_t = 0o755) -> String {
            let path = dir + "/" + name
            mkdir(path, 0o755)
            chown(path, uid, uid)
            chmod(path, mode)
            return path
        }

        /// A symlink `name` → `target`, owned by `uid` (lchown: the link, not what it names).
        @discardableResult
        func symlink(_ name: String, to target: String, owner uid: UInt32 = 0) -> String {
            let path = dir + "/" + name
            Glibc.symlink(target, path)
            lchown(path, uid, uid)
            return path
        }
    }

    static func contents(_ file: GuestFile) throws -> String {
        let fd = try file.open(O_RDONLY)
        defer { try? fd.close() }
        return String(decoding: try readToEnd(fd.rawValue), as: UTF8.self)
    }

    @Test func aFileIsReadThroughTheDescriptorFoundNotThroughItsPath() throws {
        let s = try Scratch()
        let path = s.write("kernel", "the file checked")
        let found = try GuestFile.locate(path, field: "$.kernel", allowing: [.regularFile])
        #expect(found.kind == .regularFile)
        #expect(found.field == "$.kernel" && found.path == path)
        #expect(found.writableByOthers == nil, "root's 0644 file")
        // The name now means another file: what opens is still the file that was checked.
        #expect(rename(path, path + ".old") == 0)
        s.write("kernel", "a file put there since")
        #expect(try Self.contents(found) == "the file checked")
    }

    @Test(.enabled(if: isRoot, "root's symlinks need root to make"))
    func rootsSymlinksAreFollowedAnywhereOnThePath() throws {
        let s = try Scratch()
        s.write("images/v2/kernel", "kernel v2")
        s.symlink("images/current", to: "v2")
        s.symlink("kernel", to: s.dir + "/images/current/kernel")
        s.directory("sub")
        s.symlink("sub/k", to: "../images/./current/kernel")
        for path in [s.dir + "/kernel", s.dir + "/images/current/kernel", s.dir + "/sub/k", s.dir + "/images/v2/../current/kernel",
                     s.dir + "/./sub/../kernel"] {
            let found = try GuestFile.locate(path, field: "$.kernel", allowing: [.regularFile])
            #expect(try Self.contents(found) == "kernel v2", "\(path)")
        }
    }

    @Test(.enabled(if: isRoot, "a symlink of another user needs root to make"))
    func aSymlinkOwnedByAnotherUserIsRefusedWhereverItIs() throws {
        let s = try Scratch()
        let secret = s.write("secret", "root only", mode: 0o600)
        let user = s.directory("user", owner: Self.nobody)
        // As the file itself: the user's link to a file only root may read.
        let link = s.symlink("user/disk.img", to: secret, owner: Self.nobody)
        let e1 = #expect(throws: GuestFileError.self) { try GuestFile.locate(link, field: "$.disks[0].path", allowing: Self.disk) }
        #expect(e1?.description == "$.disks[0].path: \(link): the symlink \(link) is owned by uid 65534; only root's symlinks are followed")
        // As a directory on the way: the user's "images" names a directory of root's.
        s.write("root-images/disk.img", "root's image", mode: 0o600)
        s.symlink("user/images", to: s.dir + "/root-images", owner: Self.nobody)
        let e2 = #expect(throws: GuestFileError.self) {
            try GuestFile.locate(user + "/images/disk.img", field: "$.kernel", allowing: [.regularFile])
        }
        #expect(e2?.reason == "the symlink \(user)/images is owned by uid 65534; only root's symlinks are followed")
        // Behind a root's link that leads into the user's directory, the user's link is still theirs.
        let rootLink = s.symlink("disk.img", to: link)
        let e3 = #expect(throws: GuestFileError.self) { try GuestFile.locate(rootLink, field: "$.initrd", allowing: [.regularFile]) }
        #expect(e3?.reason == "the symlink \(link) is owned by uid 65534; only root's symlinks are followed")
    }

    /// A VMM a user runs as themselves (not root) may follow that user's own links: they lead
    /// nowhere the user could not open. Another user's link is still refused.
    @Test(.enabled(if: isRoot, "a symlink of another user needs root to make"))
    func aVMMRunByAUserFollowsThatUsersLinks() throws {
        let s = try Scratch()
        s.write("images/disk.img", "the user's image")
        let link = s.symlink("disk.img", to: s.dir + "/images/disk.img", owner: Self.nobody)
        let found = try GuestFile.locate(link, field: "$.disks[0].path", allowing: Self.disk, user: Self.nobody)
        #expect(try Self.contents(found) == "the user's image")
        let e = #expect(throws: GuestFileError.self) { try GuestFile.locate(link, field: "$.disks[0].path", allowing: Self.disk, user: 1000) }
        #expect(e?.reason == "the symlink \(link) is owned by uid 65534; only root's and uid 1000's (who runs this VMM) symlinks are followed")
    }

    /// A FIFO without a writer would block an open for reading forever; it is refused without
    /// being opened, as are sockets, devices and directories, including `/` through a symlink.
    @Test func fifosSocketsDevicesAndDirectoriesAreRefusedWithoutBeingOpened() throws {
        let s = try Scratch()
        let fifo = s.dir + "/fifo"
        #expect(mkfifo(fifo, 0o600) == 0)
        let e = #expect(throws: GuestFileError.self) { try GuestFile.locate(fifo, field: "$.disks[1].path", allowing: Self.disk) }
        #expect(e?.description == "$.disks[1].path: \(fifo): a FIFO, not a regular file or block device")

        let socketPath = s.dir + "/sock"
        let sock = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(sock) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, b) in socketPath.utf8.enumerated() { raw[i] = b }
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(sock, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        #expect(bound == 0)

        let refused: [(path: String, kinds: Set<GuestFile.Kind>, reason: String)] = [
            (socketPath, Self.disk, "a socket, not a regular file or block device"),
            ("/dev/null", Self.disk, "a character device, not a regular file or block device"),
            (s.dir, Self.disk, "a directory, not a regular file or block device"),
            ("/", [.regularFile], "a directory, not a regular file"),
            (s.dir + "/..", [.regularFile], "a directory, not a regular file"),
        ]
        for r in refused {
            let e = #expect(throws: GuestFileError.self) { try GuestFile.locate(r.path, field: "$.kernel", allowing: r.kinds) }
            #expect(e?.reason == r.reason, "\(r.path)")
        }
        // A kernel is never a block device.
        if let device = HostFiles.list("/dev").map({ "/dev/" + $0 }).first(where: { path in
            var st = stat()
            return lstat(path, &st) == 0 && st.st_mode & S_IFMT == S_IFBLK
        }) {
            let e = #expect(throws: GuestFileError.self) { try GuestFile.locate(device, field: "$.kernel", allowing: [.regularFile]) }
            #expect(e?.reason == "a block device, not a regular file")
        }
    }

    @Test(.enabled(if: isRoot, "root's symlinks need root to make"))
    func aSymlinkToTheRootDirectoryIsADirectory() throws {
        let s = try Scratch()
        let link = s.symlink("disk.img", to: "/")
        let e = #expect(throws: GuestFileError.self) { try GuestFile.locate(link, field: "$.disks[0].path", allowing: Self.disk) }
        #expect(e?.reason == "a directory, not a regular file or block device")
        let dots = s.symlink("up", to: "../../../../../../../../..")
        let e2 = #expect(throws: GuestFileError.self) { try GuestFile.locate(dots, field: "$.kernel", allowing: [.regularFile]) }
        #expect(e2?.reason == "a directory, not a regular file")
    }

    /// With fs.protected_hardlinks off, a user may link any file into a directory of theirs: a
    /// file with several links there must be the user's own.
    @Test(.enabled(if: isRoot, "files of another user need root to make"))
    func inADirectoryAUserControlsOnlyTheirOwnFilesMayHaveSeveralLinks() throws {
        let s = try Scratch()
        let secret = s.write("secret", "root only", mode: 0o600)
        let user = s.directory("user", owner: Self.nobody)
        #expect(link(secret, user + "/disk.img") == 0)
        let e = #expect(throws: GuestFileError.self) { try GuestFile.locate(user + "/disk.img", field: "$.disks[0].path", allowing: Self.disk) }
        #expect(e?.reason == "the file has 2 links and lies in \(user), which uid 65534 can change: it may be a link to a file they may not read, so only their own files may have several links there")

        // The user's own file, linked twice, is theirs to give (and reported as theirs).
        let own = s.write("user/own.img", "the user's image")
        chown(own, Self.nobody, Self.nobody)
        #expect(link(own, user + "/own-too.img") == 0)
        let found = try GuestFile.locate(user + "/own-too.img", field: "$.disks[0].path", allowing: Self.disk)
        #expect(found.writableByOthers == "owned by uid 65534")
        // Root's file with one link in the user's directory: root put it there.
        let rootsFile = s.write("user/roots.img", "root's image in the user's directory")
        #expect(try Self.contents(try GuestFile.locate(rootsFile, field: "$.kernel", allowing: [.regularFile])) == "root's image in the user's directory")

        // A directory everyone may write (sticky, like /tmp): no file with several links.
        let shared = s.directory("shared", mode: 0o1777)
        #expect(link(secret, shared + "/disk.img") == 0)
        let e2 = #expect(throws: GuestFileError.self) { try GuestFile.locate(shared + "/disk.img", field: "$.kernel", allowing: [.regularFile]) }
        #expect(e2?.reason.hasPrefix("the file has 3 links and lies in \(shared), which users other than root can change") == true)

        // A link to root's symlink is the same trick one step earlier.
        let rootsLink = s.symlink("roots-link", to: secret)
        #expect(linkat(AT_FDCWD, rootsLink, AT_FDCWD, user + "/link", 0) == 0)
        let e3 = #expect(throws: GuestFileError.self) { try GuestFile.locate(user + "/link", field: "$.kernel", allowing: [.regularFile]) }
        #expect(e3?.reason.hasPrefix("the symlink \(user)/link has 2 links and lies in \(user), which uid 65534 can change") == true)
    }

    @Test func writersOtherThanRootAreNamed() throws {
        let s = try Scratch()
        let groupWritable = s.write("g.img", "x", mode: 0o664)
        let everyone = s.write("o.img", "x", mode: 0o646)
        var st = stat()
        stat(groupWritable, &st)
        #expect(try GuestFile.locate(groupWritable, field: "$.kernel", allowing: [.regularFile]).writableByOthers == "writable by group \(st.st_gid)")
        #expect(try GuestFile.locate(everyone, field: "$.kernel", allowing: [.regularFile]).writableByOthers == "writable by every user")
        if Self.isRoot {
            let owned = s.write("u.img", "x", mode: 0o600)
            chown(owned, Self.nobody, 0)
            #expect(try GuestFile.locate(owned, field: "$.kernel", allowing: [.regularFile]).writableByOthers == "owned by uid 65534")
        }
    }

    @Test func deadEndsAreNamed() throws {
        let s = try Scratch()
        let file = s.write("file", "x")
        let cases: [(path: String, reason: String)] = [
            ("relative/disk.img", "not an absolute path"),
            (s.dir + "/none/disk.img", "\(s.dir)/none: No such file or directory"),
            (s.dir + "/missing.img", "\(s.dir)/missing.img: No such file or directory"),
            (file + "/x", "\(file): not a directory"),
        ]
        for c in cases {
            let e = #expect(throws: GuestFileError.self) { try GuestFile.locate(c.path, field: "$.kernel", allowing: [.regularFile]) }
            #expect(e?.reason == c.reason, "\(c.path)")
        }
        if Self.isRoot {
            s.symlink("a", to: "b")
            s.symlink("b", to: "a")
            let e = #expect(throws: GuestFileError.self) { try GuestFile.locate(s.dir + "/a", field: "$.kernel", allowing: [.regularFile]) }
            #expect(e?.reason == "more than \(GuestFile.maxSymlinks) symlinks on the way (a loop?)")
        }
    }
}
