import Foundation
import Testing

extension LinuxGuestTests {
    /// Linux's virtio_net on a bridge with `"mtu": 9000`: the driver takes the MTU from the
    /// device (VIRTIO_NET_F_MTU), and an 8000-byte ping to the host's address on the bridge is
    /// answered: the host sends its 8028-byte reply whole (the bridge's MTU is 9000), and the
    /// bridge forwards it only to a port whose MTU is that large (the guest's /sys is not mounted:
    /// `ip link` shows its MTU).
    @Test(.enabled(if: EchoNamespace.unavailableReason == nil, Comment(rawValue: EchoNamespace.unavailableReason ?? "")))
    func aLinuxGuestOnABridgeTakesItsMTUAndReachesTheHost() throws {
        let guest = Env.guestLinuxDir
        let kernel = try Env.requireFile(guest + "/vmlinux", builtBy: "scripts/build-guest-kernel.sh")
        let initrd = try Env.requireFile(guest + "/initramfs.cpio", builtBy: "scripts/build-guest-kernel.sh")
        let ns = try BridgeNamespace(bridgeMTU: 9000)
        defer { ns.delete() }
        #expect(try EchoNamespace.sh(ns.prefix + [BridgeNamespace.ip, "addr", "add", "10.99.0.1/24", "dev", ns.bridge]) == 0)
        let def = VMM.definition(name: "linuxbr", kernel: kernel, vcpus: 1, memoryMiB: 64, initrd: initrd,
                                 cmdline: Self.cmdline + " rtvisor.check=console",
                                 extra: "\"nets\": [{\"bridge\": \"\(ns.bridge)\", \"mtu\": 9000}]")
        let vm = try RunningVMM(arguments: ["--config", try VMM.writeDefinition(def)], consoleInput: true, prefix: ns.prefix)
        #expect(vm.waitForConsole(timeout: 1200) { $0.contains("RTVISOR_CONSOLE_READY") },
                "console tail:\n\(vm.console.suffix(3000))\nstderr:\n\(vm.stderr)")
        vm.type("busybox ip link show eth0")
        vm.type("busybox ip addr add 10.99.0.2/24 dev eth0 && busybox ip link set eth0 up && busybox ping -c 3 -W 10 -s 8000 10.99.0.1 && echo JUMBO_PING_OK")
        #expect(vm.waitForConsole(timeout: 300) { $0.contains("JUMBO_PING_OK") || $0.contains("packet loss") },
                "console tail:\n\(vm.console.suffix(3000))\nstderr:\n\(vm.stderr)")
        vm.type("done")
        #expect(vm.waitForExit(timeout: 300) == 0, "console tail:\n\(vm.console.suffix(3000))\nstderr:\n\(vm.stderr)")
        #expect(vm.console.contains("eth0: <BROADCAST,MULTICAST> mtu 9000"), "console tail:\n\(vm.console.suffix(3000))")
        #expect(vm.console.contains("JUMBO_PING_OK"), "console tail:\n\(vm.console.suffix(3000))")
    }
}
