import Foundation
import Testing

/// The minimal Linux guest (scripts/build-guest-kernel.sh) on the real /dev/kvm: its own drivers
/// and user space against our VMM. Each boot takes about two minutes on the emulating
/// development KVM, so there are few of them. RTVISOR_SKIP_LINUX_BOOT=1 skips them (quick runs).
@Suite(.enabled(if: Env.kvmAvailable, Env.noKVMReason),
       .enabled(if: ProcessInfo.processInfo.environment["RTVISOR_SKIP_LINUX_BOOT"] == nil,
                "RTVISOR_SKIP_LINUX_BOOT is set: skipping the minimal-Linux boots"))
struct LinuxGuestTests {
    static let cmdline = "console=ttyS0 panic=-1 mitigations=off nopti rodata=off emukvm.pvmsys emukvm.exit_port=0xf4"

    /// Generous: an idle development machine boots in 2–4 minutes, one loaded by parallel builds
    /// took 6 (1 vCPU) and 17 (2 vCPUs). A hung guest still ends the test.
    func boot(name: String, vcpus: Int, image: String = "vmlinux", extraCmdline: String = "", extra: String = "",
              in dir: URL? = nil, prefix: [String] = []) throws -> VMMResult {
        let guest = Env.guestLinuxDir
        let kernel = try Env.requireFile(guest + "/" + image, builtBy: "scripts/build-guest-kernel.sh")
        let initrd = try Env.requireFile(guest + "/initramfs.cpio", builtBy: "scripts/build-guest-kernel.sh")
        let def = VMM.definition(name: name, kernel: kernel, vcpus: vcpus, memoryMiB: 64, initrd: initrd,
                                 cmdline: Self.cmdline + (extraCmdline.isEmpty ? "" : " " + extraCmdline), extra: extra)
        return try VMM.run(config: try VMM.writeDefinition(def, in: dir), timeout: vcpus > 1 ? 1500 : 900, prefix: prefix)
    }

    /// Linux's virtio_pci, virtio_blk and virtio_net drivers on our PCI bus: enumeration through
    /// 0xCF8, BARs, MSI-X vectors, a write with fsync (FLUSH) that the host then finds in the image.
    @Test(.enabled(if: EchoNamespace.unavailableReason == nil, Comment(rawValue: EchoNamespace.unavailableReason ?? "")))
    func virtioDiskAndNICThroughLinuxDrivers() throws {
        let dir = try VMM.tempDir()
        let disk = try DiskImage(megabytes: 4, in: dir)
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: disk.path))
        try h.write(contentsOf: Data("RTVISOR-HOST-DISK".utf8))
        try h.close()
        let ns = try EchoNamespace(echoArguments: [])
        defer { _ = ns.finish() }
        let r = try boot(name: "linuxvirtio", vcpus: 1, extraCmdline: "rtvisor.check=virtio",
                         extra: "\"disks\": [{\"path\": \"\(disk.path)\", \"serial\": \"lnx-1\"}], \"nets\": [{\"tap\": \"\(ns.tap)\"}]",
                         in: dir, prefix: [EchoNamespace.ip, "netns", "exec", ns.name])
        #expect(r.status == 0, "console tail:\n\(r.console.suffix(4000))\nstderr:\n\(r.stderr)")
        #expect(r.console.contains("virtio_blk virtio0: [vda] 8192 512-byte logical blocks"))
        #expect(r.console.contains("disk says: RTVISOR-HOST-DISK"))
        #expect(r.console.contains("RTVISOR_CHECK_END virtio status=0"))
        // MSI-X: one vector for configuration and one per queue, per device.
        #expect(r.console.contains("PCI-MSI") && r.console.contains("virtio0-req.0"), "console tail:\n\(r.console.suffix(4000))")
        #expect(r.console.contains("virtio1-input.0") && r.console.contains("virtio1-output.0"))
        #expect(r.console.contains("eth0:"))
        #expect(try disk.sectors(8, 1).starts(with: Array("RTVISOR-GUEST-WROTE-THIS\n".utf8)))
    }

    /// INTx instead of MSI-X (`pci=nomsi`): Linux finds each slot's INTA# routing in the MP table,
    /// programs the IOAPIC pin level-triggered, and the device's ISR read deasserts the line.
    @Test func virtioDiskOnINTxWithoutMSI() throws {
        let dir = try VMM.tempDir()
        let disk = try DiskImage(megabytes: 4, in: dir)
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: disk.path))
        try h.write(contentsOf: Data("RTVISOR-HOST-DISK".utf8))
        try h.close()
        let r = try boot(name: "linuxintx", vcpus: 1, extraCmdline: "pci=nomsi rtvisor.check=virtio",
                         extra: "\"disks\": [{\"path\": \"\(disk.path)\"}]", in: dir)
        // Without a NIC the check's last step (/proc/net/dev) still works; the disk is what matters.
        #expect(r.status == 0, "console tail:\n\(r.console.suffix(4000))\nstderr:\n\(r.stderr)")
        #expect(r.console.contains("disk says: RTVISOR-HOST-DISK"))
        let intx = r.console.split(separator: "\n").first { $0.contains("IO-APIC") && $0.contains("16-fasteoi") && $0.contains("virtio0") }
        #expect(intx != nil, "no level-triggered IOAPIC pin 16 for virtio0; console tail:\n\(r.console.suffix(4000))")
        #expect(!r.console.contains("PCI-MSI"))
        #expect(r.console.contains("RTVISOR_CHECK_END virtio status=0"))
        #expect(try disk.sectors(8, 1).starts(with: Array("RTVISOR-GUEST-WROTE-THIS\n".utf8)))
    }

    @Test func bootsBusyboxInitToMarkerAndPowersOff() throws {
        let r = try boot(name: "linux1", vcpus: 1, extraCmdline: "rtvisor.check=uname")
        #expect(r.status == 0, "console tail:\n\(r.console.suffix(3000))\nstderr:\n\(r.stderr)")
        #expect(r.console.contains("Linux version 6.1"))
        #expect(r.console.contains("RTVISOR_INIT_MARKER"))
        #expect(r.console.contains("RTVISOR_CHECK_END uname status=0"))
        #expect(r.console.contains("RTVISOR_INIT_DONE"))
        // The VMM saw init's write to the boot-marker device and timed it.
        #expect(r.stderr.contains("boot marker: guest linux1 signalled ready"))
        #expect(r.stderr.contains("guest powered off"))
    }

    /// The other loader path: the same kernel as a bzImage through the 64-bit boot protocol
    /// (boot_params, identity-mapped long mode), decompressing itself.
    @Test func bzImageBootsThroughThe64BitBootProtocol() throws {
        let r = try boot(name: "linuxbz", vcpus: 1, image: "bzImage")
        #expect(r.status == 0, "console tail:\n\(r.console.suffix(3000))\nstderr:\n\(r.stderr)")
        #expect(r.stderr.contains("64-bit boot protocol entry 0x100200, boot_params 0x7000"))
        #expect(r.console.contains("RTVISOR_INIT_MARKER"))
        #expect(r.console.contains("RTVISOR_INIT_DONE"))
    }

    @Test func twoVCPUsAreBroughtUp() throws {
        let r = try boot(name: "linux2", vcpus: 2)
        #expect(r.status == 0, "console tail:\n\(r.console.suffix(3000))\nstderr:\n\(r.stderr)")
        #expect(r.console.contains("smp: Brought up 1 node, 2 CPUs"))
        #expect(r.console.contains("RTVISOR_INIT_MARKER"))
    }
}
