import Foundation
import Posix
import Testing

/// Issue 16, "Local users get only what they are allowed" (docs/sandbox.md, "Guest files"): a
/// user who can write the directory of a VM's kernel or image changes it into a symlink between
/// the VMM's steps. The real VMM (root, jailed) stops itself at the step named by its test hook
/// (`RTVISOR_TEST_STOP_AT`, debug builds only), the test changes the files, then lets it go on:
/// the moment is exact, nothing depends on timing.
@Suite(.enabled(if: Env.kvmAvailable, Env.noKVMReason), .enabled(if: getuid() == 0, "the VMM must run as root, and the user's symlinks need root to make"))
struct GuestFileSwapTests {
    typealias RunningVMM = RealtimePartitionTests.RunningVMM
    static let nobody: UInt32 = 65534

    /// The scratch directory (root's) with a file only root may read, and a directory of the
    /// user nobody's holding that user's kernel (a copy of `inmate`) and disk image.
    struct Layout {
        let dir: URL
        let user: String
        let secret: String
        let kernel: String
        let disk: String

        init(inmate: String) throws {
            dir = try VMM.tempDir()
            user = dir.path + "/user"
            mkdir(user, 0o755)
            chown(user, GuestFileSwapTests.nobody, GuestFileSwapTests.nobody)
            secret = dir.path + "/secret"
            _ = FileManager.default.createFile(atPath: secret, contents: Data(repeating: 0x5A, count: 1 << 20), attributes: [.posixPermissions: 0o600])
            kernel = user + "/kernel.elf"
            try FileManager.default.copyItem(atPath: try Env.inmate(inmate), toPath: kernel)
            disk = user + "/disk.img"
            _ = FileManager.default.createFile(atPath: disk, contents: Data(count: 1 << 20))
            for file in [kernel, disk] { chown(file, GuestFileSwapTests.nobody, GuestFileSwapTests.nobody) }
        }

        /// What the user does: `path` becomes the user's symlink to `target`.
        func swap(_ path: String, to target: String) {
            #expect(rename(path, path + ".old") == 0)
            #expect(symlink(target, path) == 0)
            #expect(lchown(path, GuestFileSwapTests.nobody, GuestFileSwapTests.nobody) == 0)
        }
    }

    /// Waits until the VMM has stopped itself at `step`: it says so on stderr, then the kernel
    /// shows it stopped ("T" in /proc/PID/stat). Only then may SIGCONT be sent.
    static func waitStopped(_ vmm: RunningVMM, at step: String) -> Bool {
        guard vmm.waitFor("test hook: stopping at \(step)", seconds: 30) else { return false }
        let pid = vmm.process.processIdentifier
        let end = Date().addingTimeInterval(30)
        while Date() < end && vmm.process.isRunning {
            let stat = HostFiles.line("/proc/\(pid)/stat") ?? ""
            if let close = stat.range(of: ") "), stat[close.upperBound...].hasPrefix("T") { return true }
            usleep(10_000)
        }
        return false
    }

    /// After the definition was checked (the user's own, ordinary files) and before any guest file
    /// is opened, the kernel or the disk becomes the user's symlink to a file only root may read.
    /// The old VMM opened by path and followed it (the disk then booted with root's file as the
    /// guest's; the kernel was read).
    @Test(arguments: ["$.kernel", "$.disks[0].path"])
    func aUsersSymlinkSwappedInAfterTheCheckIsNotFollowed(field: String) throws {
        let layout = try Layout(inmate: "hello")
        let def = VMM.definition(name: "swap", kernel: layout.kernel, extra: "\"disks\": [{\"path\": \"\(layout.disk)\", \"read_only\": true}]")
        let vmm = try RunningVMM(config: try VMM.writeDefinition(def, in: layout.dir), dir: layout.dir,
                                 environment: ["RTVISOR_TEST_STOP_AT": "guest-files"])
        defer { if vmm.process.isRunning { kill(vmm.process.processIdentifier, SIGKILL); vmm.process.waitUntilExit() } }
        try #require(Self.waitStopped(vmm, at: "guest-files"), "output: \(vmm.output)")

        let swapped = field == "$.kernel" ? layout.kernel : layout.disk
        layout.swap(swapped, to: layout.secret)
        kill(vmm.process.processIdentifier, SIGCONT)

        #expect(vmm.waitExit(seconds: 30))
        #expect(vmm.process.terminationStatus == 1, "output: \(vmm.output)")
        #expect(vmm.output.contains("\(field): \(swapped): the symlink \(swapped) is owned by uid 65534; only root's symlinks are followed"),
                "output: \(vmm.output)")
        #expect(!vmm.output.contains("INMATE hello PASS"), "the guest must not run")
    }

    /// The machine is built (kernel read, disk open) and the jail not yet entered when the
    /// kernel's name becomes a symlink to `/` and the disk's to /etc. The old jail bound the
    /// guest files by path, `/` recursively: the host's whole tree appeared inside. Now no guest
    /// file is bound at all, and the disk the guest uses is still the file that was checked.
    @Test func theJailHoldsNoGuestFileEvenWhenItsNameNowLeadsToTheRootDirectory() throws {
        let layout = try Layout(inmate: "idle")
        let run = layout.dir.appendingPathComponent("run").path
        try FileManager.default.createDirectory(atPath: run, withIntermediateDirectories: true)
        let def = VMM.definition(name: "swapjail", kernel: layout.kernel, memoryMiB: 32, cmdline: "idle.heartbeat=0",
                                 extra: "\"disks\": [{\"path\": \"\(layout.disk)\"}]")
        let vmm = try RunningVMM(config: try VMM.writeDefinition(def, in: layout.dir), dir: layout.dir,
                                 arguments: ["--status-file", run + "/exit-status"], environment: ["RTVISOR_TEST_STOP_AT": "jail"])
        defer { if vmm.process.isRunning { kill(vmm.process.processIdentifier, SIGKILL); vmm.process.waitUntilExit() } }
        try #require(Self.waitStopped(vmm, at: "jail"), "output: \(vmm.output)")

        layout.swap(layout.kernel, to: "/")
        layout.swap(layout.disk, to: "/etc")
        let pid = vmm.process.processIdentifier
        kill(pid, SIGCONT)
        try #require(vmm.waitFor("jail: uid/gid", seconds: 20), "output: \(vmm.output)")

        let root = "/proc/\(pid)/root"
        for path in [layout.kernel, layout.kernel + "/etc/passwd", layout.disk, layout.disk + "/passwd", "/etc", layout.user] {
            #expect(!FileManager.default.fileExists(atPath: root + path), "\(path) inside the jail")
        }
        // The guest's disk: the descriptor of the image checked (now named disk.img.old), not /etc.
        let targets = HostFiles.list("/proc/\(pid)/fd").compactMap { try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\($0)") }
        #expect(targets.contains(layout.disk + ".old"), "\(targets)")
        #expect(!targets.contains("/etc"))

        kill(pid, SIGTERM)
        #expect(vmm.waitExit(seconds: 20))
    }

    /// An administrator's own symlinks (root's: a "current" kernel, a directory of images) are
    /// followed: the guest writes the file they lead to.
    @Test func anAdministratorsSymlinksLeadToTheirFiles() throws {
        let dir = try VMM.tempDir()
        let images = dir.appendingPathComponent("images-v1")
        try FileManager.default.createDirectory(at: images, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: try Env.inmate("virtio-blk"), toPath: images.path + "/virtio-blk.elf")
        let disk = try DiskImage(megabytes: 1, in: images)
        #expect(symlink("images-v1", dir.path + "/images") == 0)
        #expect(symlink(dir.path + "/images/virtio-blk.elf", dir.path + "/kernel") == 0)
        let def = VMM.definition(name: "links", kernel: dir.path + "/kernel", cmdline: "blk.mode=write blk.sectors=16 blk.seed=5",
                                 extra: "\"disks\": [{\"path\": \"\(dir.path)/images/disk.img\"}]")
        let r = try VMM.run(config: try VMM.writeDefinition(def, in: dir), timeout: 60)
        #expect(r.status == 0, "console: \(r.console)\nstderr: \(r.stderr)")
        #expect(r.console.contains("INMATE virtio-blk OK: wrote 16 sectors at 0"))
        #expect(try disk.sectors(15, 1) == blockPattern(seed: 5, sector: 15))
    }
}
