import Foundation
import Testing
import TestSupport
import VMMInterface

/// The minimal Linux with a virtio-blk disk (one file both VMMs see: shared storage) and a
/// virtio-net tap (one per network namespace: the two "hosts") moves while a shell loop writes
/// the disk; the loop goes on after the move, the data verifies, the source process is gone.
@Suite(.enabled(if: Env.kvmAvailable, Env.noKVMReason),
       .enabled(if: ProcessInfo.processInfo.environment["RTVISOR_SKIP_LINUX_BOOT"] == nil,
                "RTVISOR_SKIP_LINUX_BOOT is set: skipping the minimal-Linux boots"),
       .enabled(if: EchoNamespace.unavailableReason == nil, Comment(rawValue: EchoNamespace.unavailableReason ?? "")))
struct LinuxMigrationTests {
    @Test func aLinuxWritingItsDiskMovesToAnotherNamespaceAndGoesOn() throws {
        let guest = Env.guestLinuxDir
        let kernel = try Env.requireFile(guest + "/vmlinux", builtBy: "scripts/build-guest-kernel.sh")
        let initrd = try Env.requireFile(guest + "/initramfs.cpio", builtBy: "scripts/build-guest-kernel.sh")
        let dir = try VMM.tempDir()
        let disk = try DiskImage(megabytes: 4, in: dir)
        let hostA = try EchoNamespace(echoArguments: [])
        defer { _ = hostA.finish() }
        let hostB = try EchoNamespace(echoArguments: [])
        defer { _ = hostB.finish() }
        let def = VMM.definition(name: "linuxmig", kernel: kernel, vcpus: 1, memoryMiB: 64, initrd: initrd,
                                 cmdline: LinuxGuestTests.cmdline + " rtvisor.check=console",
                                 extra: "\"disks\": [{\"path\": \"\(disk.path)\"}], \"nets\": [{\"tap\": \"\(hostA.tap)\", \"mac\": \"02:00:00:aa:bb:09\"}]")
        let path = try VMM.writeDefinition(def, in: dir)
        let control = dir.appendingPathComponent("control.sock").path
        let incoming = dir.appendingPathComponent("incoming.sock").path
        let source = try RunningVMM(arguments: ["--config", path, "--control-socket", control], consoleInput: true,
                                    prefix: [EchoNamespace.ip, "netns", "exec", hostA.name])
        defer { kill(source.process.processIdentifier, SIGKILL) }
        #expect(source.waitForConsole(timeout: 1200) { $0.contains("RTVISOR_CONSOLE_READY") },
                "console tail:\n\(source.console.suffix(3000))\nstderr:\n\(source.stderr)")
        let target = try RunningVMM(arguments: ["--incoming", "unix:\(incoming)"], consoleInput: true,
                                    prefix: [EchoNamespace.ip, "netns", "exec", hostB.name])
        defer { kill(target.process.processIdentifier, SIGKILL) }

        // A loop of shell builtins: each record goes to the disk through one descriptor, then
        // to the console; `sync` at the end puts everything on the disk. (The initramfs has no
        // /dev/vda node: devtmpfs first.)
        let records = 400
        source.type("/bin/busybox mount -t devtmpfs devtmpfs /dev; exec 3<>/dev/vda; i=0; while [ $i -lt \(records) ]; do echo \"rec $i\" >&3; echo \"wrote $i\"; i=$((i+1)); done; exec 3>&-; /bin/busybox sync; echo LOOP_DONE")
        #expect(source.waitForConsole(timeout: 300) { $0.contains("wrote 20\r") || $0.contains("wrote 20\n") }, "\(source.console.suffix(2000))")
        var stream: Int32? = nil
        for _ in 0..<200 where stream == nil { stream = connectToUnixSocket(incoming); if stream == nil { usleep(20_000) } }
        let definition = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        let reply: VMMControl.Reply
        do {
            reply = try ControlClient.connect(control).call(.migrate(MigrationRequest(definitionJSON: definition)),
                                                            files: [.init(rawValue: try #require(stream))])
        } catch {
            usleep(500_000)
            throw SnapshotTestError("migrate: \(error)\nsource: \(source.stderr.suffix(2000))\ntarget: \(target.stderr.suffix(2000))")
        }
        guard case let .migrated(report) = reply else { throw SnapshotTestError("migrate: \(reply)\n\(source.stderr)\n\(target.stderr)") }
        #expect(source.waitForExit(timeout: 30) == VMMExitStatus.migrated.code, "the source process is gone")
        func lines(_ text: String) -> [Substring] { text.split(whereSeparator: \.isNewline) }  // "\r\n" is one Character
        #expect(!lines(source.console).contains("LOOP_DONE"), "the move fell inside the loop")

        #expect(target.waitForConsole(timeout: 600) { lines($0).contains("LOOP_DONE") }, "target:\n\(target.console.suffix(2000))\n\(target.stderr)")
        // The NIC came along (/proc/net/dev lists it on the target).
        target.type("while read -r l; do case \"$l\" in eth0:*) echo \"nic ${l%%:*} here\";; esac; done < /proc/net/dev")
        #expect(target.waitForConsole(timeout: 120) { lines($0).contains("nic eth0 here") }, "\(target.console.suffix(1000))")
        target.type("done")
        #expect(target.waitForExit(timeout: 300) == 0, "\(target.console.suffix(2000))")

        // The loop's numbers, before and after the move, are one sequence; so is the disk.
        let wrote = lines(source.console + target.console).compactMap { $0.hasPrefix("wrote ") ? Int($0.dropFirst(6)) : nil }
        #expect(wrote == Array(0..<records), "wrote \(wrote.first ?? -1)…\(wrote.last ?? -1), \(wrote.count) lines")
        let expected = (0..<records).map { "rec \($0)\n" }.joined()
        let data = try disk.sectors(0, (expected.utf8.count + 511) / 512)
        let found = String(decoding: data.prefix(expected.utf8.count), as: UTF8.self)
        #expect(found == expected, "the disk holds every record in order; its first bytes: \(Array(data.prefix(48)))")
        print("Linux migration: \(report.rounds.count) rounds, \(report.totalBytes >> 20) MiB, \(Int(report.totalMilliseconds)) ms, downtime \(report.downtimeMilliseconds) ms")
    }
}
