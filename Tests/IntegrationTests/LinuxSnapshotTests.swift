import Foundation
import Testing
import VMMInterface

/// The minimal Linux, booted once to its console-command check, saved, and resumed: alone (it
/// runs a command typed on its console and powers off cleanly) and as three clones at once, each
/// writing its own data, whose guest memory stays shared until written. One boot: minutes here.
@Suite(.enabled(if: Env.kvmAvailable, Env.noKVMReason),
       .enabled(if: ProcessInfo.processInfo.environment["RTVISOR_SKIP_LINUX_BOOT"] == nil,
                "RTVISOR_SKIP_LINUX_BOOT is set: skipping the minimal-Linux boots"))
struct LinuxSnapshotTests {
    @Test func aSavedLinuxResumesRunsACommandAndPowersOffAndThreeClonesShareItsMemory() throws {
        let guest = Env.guestLinuxDir
        let kernel = try Env.requireFile(guest + "/vmlinux", builtBy: "scripts/build-guest-kernel.sh")
        let initrd = try Env.requireFile(guest + "/initramfs.cpio", builtBy: "scripts/build-guest-kernel.sh")
        let dir = try VMM.tempDir()
        let def = VMM.definition(name: "linuxsnap", kernel: kernel, vcpus: 1, memoryMiB: 64, initrd: initrd,
                                 cmdline: LinuxGuestTests.cmdline + " rtvisor.check=console")
        let path = try VMM.writeDefinition(def, in: dir)
        let control = dir.appendingPathComponent("control.sock").path
        let booted = try RunningVMM(arguments: ["--config", path, "--control-socket", control])
        #expect(booted.waitForConsole(timeout: 1200) { $0.contains("RTVISOR_CONSOLE_READY") },
                "console tail:\n\(booted.console.suffix(3000))\nstderr:\n\(booted.stderr)")
        let snap = dir.appendingPathComponent("snap").path
        let reply = try ControlClient.snapshot(try ControlClient.connect(control), into: snap, definition: path, then: .stop)
        guard case .snapshotSaved = reply else { throw SnapshotTestError("snapshot: \(reply)") }
        #expect(booted.waitForExit(timeout: 60) == VMMExitStatus.savedAndStopped.code)

        // Resumed: the shell that was waiting for a line reads the one typed now.
        let restored = try RunningVMM(arguments: ["--restore", snap], consoleInput: true)
        restored.type("echo restored $((6*7))")
        #expect(restored.waitForConsole(timeout: 300) { $0.contains("restored 42") },
                "console:\n\(restored.console.suffix(3000))\nstderr:\n\(restored.stderr)")
        restored.type("done")
        #expect(restored.waitForExit(timeout: 300) == 0, "console:\n\(restored.console.suffix(3000))\nstderr:\n\(restored.stderr)")
        #expect(restored.console.contains("RTVISOR_INIT_DONE"))
        #expect(!restored.console.contains("Linux version"), "the restored guest must not boot again")

        // Three clones at once from the same memory file, mapped copy-on-write.
        let clones = try (1...3).map { _ in try RunningVMM(arguments: ["--restore", snap, "--restore-memory", "map"], consoleInput: true) }
        for (i, clone) in clones.enumerated() {
            clone.type("echo clone-\(i)-data > /clone.txt; read -r c < /clone.txt; echo \"wrote $c\"")
        }
        for (i, clone) in clones.enumerated() {
            #expect(clone.waitForConsole(timeout: 300) { $0.contains("wrote clone-\(i)-data") },
                    "clone \(i):\n\(clone.console.suffix(2000))\nstderr:\n\(clone.stderr)")
        }
        let usage = clones.map { GuestMemoryUsage(pid: $0.process.processIdentifier, file: SnapshotLayout.memory(in: snap)) }
        for clone in clones { clone.type("done") }
        for (i, clone) in clones.enumerated() {
            #expect(clone.waitForExit(timeout: 300) == 0, "clone \(i):\n\(clone.console.suffix(2000))")
            #expect(!clone.console.contains("wrote clone-\((i + 1) % 3)-data"), "each clone sees only its own data")
        }
        // What the clones did not write is the memory file's page cache, mapped by all three: each
        // is charged a third of it (PSS), and the guest's pages they wrote are theirs alone.
        for u in usage {
            #expect(u.sharedKiB > 1024, "the clone shares the file's pages: \(u)")
            #expect(Double(u.pssKiB) < Double(u.rssKiB) * 0.8, "PSS below RSS: pages are shared: \(u)")
            #expect(u.privateDirtyKiB < u.rssKiB, "only written pages are the clone's own: \(u)")
        }
    }
}

/// The guest-memory mapping of a restored VMM, from /proc/PID/smaps (kB).
struct GuestMemoryUsage: CustomStringConvertible {
    var rssKiB = 0, pssKiB = 0, sharedKiB = 0, privateDirtyKiB = 0

    init(pid: Int32, file: String) {
        guard let smaps = try? String(contentsOfFile: "/proc/\(pid)/smaps", encoding: .utf8) else { return }
        var inMapping = false
        for line in smaps.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            if let first = fields.first, first.contains("-"), fields.count >= 5 {
                inMapping = line.hasSuffix(file)
                continue
            }
            guard inMapping, fields.count >= 2, let kib = Int(fields[1]) else { continue }
            switch fields[0] {
            case "Rss:": rssKiB += kib
            case "Pss:": pssKiB += kib
            case "Shared_Clean:", "Shared_Dirty:": sharedKiB += kib
            case "Private_Dirty:": privateDirtyKiB += kib
            default: break
            }
        }
    }

    var description: String { "RSS \(rssKiB) kB, PSS \(pssKiB) kB, shared \(sharedKiB) kB, private dirty \(privateDirtyKiB) kB" }
}
