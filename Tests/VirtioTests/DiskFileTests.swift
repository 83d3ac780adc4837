import CLinux
import Foundation
import Posix
import Testing
@testable import VirtioBlock

/// A disk is the file found under docs/sandbox.md's "Guest files" rules, opened through that
/// descriptor: a FIFO is refused without the open blocking, a user's symlink does not lead root
/// to a file, and a block device found through root's symlink is still opened O_EXCL.
@Suite struct DiskFileTests {
    static let isRoot = getuid() == 0
    static let losetup = "/usr/sbin/losetup"

    static func scratch() throws -> String {
        var template = Array("/tmp/rtvisor-diskfile-XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else { throw POSIXError(.EIO) }
        return String(cString: made)
    }

    /// The old open(path, O_RDONLY) of a FIFO without a writer never returned.
    @Test func aFIFOIsNotADiskAndTheOpenDoesNotWaitForAWriter() throws {
        let dir = try Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let fifo = dir + "/disk.img"
        #expect(mkfifo(fifo, 0o600) == 0)
        for readOnly in [true, false] {
            let e = #expect(throws: BlockImageError.self) { try BlockImage(path: fifo, readOnly: readOnly) }
            #expect(e?.description == "\(fifo): a FIFO, not a regular file or block device")
        }
    }

    /// The old open followed the user's link and served root's file to the guest.
    @Test(.enabled(if: isRoot, "a symlink of another user needs root to make"))
    func aUsersSymlinkToARootOnlyFileIsNotADisk() throws {
        let dir = try Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let secret = dir + "/secret.img"
        _ = FileManager.default.createFile(atPath: secret, contents: Data(repeating: 0x5A, count: 4096), attributes: [.posixPermissions: 0o600])
        let user = dir + "/user"
        mkdir(user, 0o755)
        chown(user, 65534, 65534)
        let link = user + "/disk.img"
        #expect(symlink(secret, link) == 0)
        #expect(lchown(link, 65534, 65534) == 0)
        for readOnly in [true, false] {
            let e = #expect(throws: BlockImageError.self) { try BlockImage(path: link, readOnly: readOnly) }
            #expect(e?.reason == "the symlink \(link) is owned by uid 65534; only root's symlinks are followed")
        }
    }

    /// A loop device over a scratch file, reached through root's symlink (as /dev/disk/by-id
    /// links are): found, reopened with O_EXCL through its descriptor, so the kernel refuses a
    /// second exclusive opener (rtvisor or anyone) while the disk is open.
    @Test(.enabled(if: isRoot && FileManager.default.isExecutableFile(atPath: losetup), "needs root and losetup"))
    func aBlockDeviceFoundThroughRootsSymlinkIsOpenedExclusive() throws {
        let dir = try Self.scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let backing = dir + "/backing.img"
        _ = FileManager.default.createFile(atPath: backing, contents: Data(count: 1 << 20))
        let attach = Process()
        attach.executableURL = URL(fileURLWithPath: Self.losetup)
        attach.arguments = ["--find", "--show", backing]
        let out = Pipe()
        attach.standardOutput = out
        attach.standardError = FileHandle.nullDevice
        try attach.run()
        let device = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        attach.waitUntilExit()
        guard attach.terminationStatus == 0, device.hasPrefix("/dev/loop") else {
            print("skip: no free loop device here (losetup exited \(attach.terminationStatus))")
            return
        }
        defer {
            let detach = Process()
            detach.executableURL = URL(fileURLWithPath: Self.losetup)
            detach.arguments = ["-d", device]
            try? detach.run()
            detach.waitUntilExit()
        }
        let link = dir + "/disk"
        #expect(symlink(device, link) == 0)
        do {
            let disk = try BlockImage(path: link, readOnly: false)
            #expect(disk.size == 1 << 20)
            let other = open(device, O_RDWR | O_EXCL | O_CLOEXEC)
            #expect(other < 0 && errno == EBUSY, "a second exclusive open of \(device) must fail while the disk is open")
            if other >= 0 { close(other) }
            let e = #expect(throws: BlockImageError.self) { try BlockImage(path: link, readOnly: false) }
            #expect(e?.reason.contains("held by another exclusive opener") == true, "\(String(describing: e))")
        }
        // Released with the disk.
        let again = open(device, O_RDWR | O_EXCL | O_CLOEXEC)
        #expect(again >= 0)
        close(again)
    }
}
