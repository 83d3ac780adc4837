// swift-tools-version:6.0
import PackageDescription

// One job per module; which module may use which is docs/architecture.md's graph, generated from
// this file and checked against the imports by scripts/check-architecture.py (run by the tests).
let package = Package(
    name: "rtvisor",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "rtvisor-vmm", targets: ["rtvisor-vmm"]),
        .executable(name: "rtvisord", targets: ["rtvisord"]),
        .executable(name: "rtvisorctl", targets: ["rtvisorctl"]),
    ],
    dependencies: [
        // 1.6: the three-argument `.custom` completion rtvisorctl uses.
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
        // 1.11: `LogEvent` (the journald handler implements `log(event:)`).
        .package(url: "https://github.com/apple/swift-log", from: "1.11.0"),
        // The daemon's control API only (rtvisord); rtvisor-vmm and rtvisorctl do not link it.
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.0"),
        // The real-time wake-up latency probe's histogram.
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
    ],
    targets: [
        // C shim: <linux/kvm.h>, ioctl request numbers as constants, non-variadic wrappers.
        .target(name: "CKVM"),
        // Typed KVM file descriptors (system, VM, vCPU), exits as an enum, errors naming the ioctl.
        .target(name: "KVM", dependencies: ["CKVM", "Arch", .product(name: "SystemPackage", package: "swift-system")]),
        // Guest RAM: mmap-backed regions, GuestAddress, bounds-checked access.
        // GuestLayout from Arch; swift-system for Errno only (error texts): Memory sits below Posix.
        .target(name: "Memory", dependencies: ["Arch", "Posix", "CLinux", .product(name: "SystemPackage", package: "swift-system")]),
        // x86 architecture data: CPUID feature table and policy, register layouts, and the one
        // guest-physical layout (GuestLayout) every other module reads.
        .target(name: "Arch"),
        // Kernel loaders (ELF/PVH, bzImage), boot_params, e820, MP table, start_info, cmdline.
        .target(name: "Boot", dependencies: ["Memory", "Arch", .product(name: "SystemPackage", package: "swift-system")]),
        // Device models behind a PIO/MMIO bus; they never see KVM.
        .target(name: "Devices"),
        // C shim for non-KVM Linux interfaces: tun/tap and block ioctls, fallocate modes, thread names.
        .target(name: "CLinux"),
        // Threads, eventfd and epoll for vCPU and device I/O threads; the errno/EINTR helpers;
        // HostFiles (procfs, cgroupfs and sysfs with one syscall per read or write).
        .target(name: "Posix", dependencies: ["CLinux", .product(name: "SystemPackage", package: "swift-system")]),
        // Split virtqueues and the transport-independent device interface; knows nothing of PCI.
        .target(name: "Virtio", dependencies: ["Memory"]),
        // virtio-blk over raw image files.
        .target(name: "VirtioBlock", dependencies: ["Virtio", "Memory", "Posix", "CLinux", .product(name: "SystemPackage", package: "swift-system")]),
        // virtio-net over a TAP interface, with its receive thread.
        .target(name: "VirtioNet", dependencies: ["Virtio", "Memory", "Posix", "CLinux", .product(name: "SystemPackage", package: "swift-system")]),
        // The host's interfaces over rtnetlink: a VM's tap on a bridge, its MTU.
        .target(name: "HostNetwork", dependencies: ["CLinux", "Posix"]),
        // PCI root bus (configuration mechanism #1, BAR window), MSI-X, and the virtio-pci transport.
        .target(name: "PCI", dependencies: ["Devices", "Virtio", "Memory"]),
        // The ivshmem-compatible channel device (registers, doorbell decoding, MSI-X, BAR2): shared
        // memory between VMs; KVM's side (memory slot, ioeventfds, irqfds) is the VMM's.
        .target(name: "Ivshmem", dependencies: ["PCI"]),
        // VFIO passthrough: container/group/device handling behind a mockable kernel seam, host
        // checks (IOMMU groups, vfio-pci binding), and the passthrough PCI function.
        .target(name: "VFIO", dependencies: ["CKVM", "PCI", "Posix", .product(name: "SystemPackage", package: "swift-system")]),
        // Runs the VFIO layer against a real vfio-pci device (QEMU's edu; scripts/test-vfio.sh).
        .executableTarget(name: "rtvisor-vfio-check", dependencies: ["VFIO", "PCI", "Posix", "CKVM", .product(name: "SystemPackage", package: "swift-system")]),
        // Real-time partitions: CPU lists, cpusets (v1 shield, v2 threaded partition), IRQ affinity,
        // thread scheduling and the host report (rt-check).
        .target(name: "Realtime", dependencies: ["CLinux", "Posix"]),
        // What a seccomp filter does with an unlisted syscall: the one type Config (the definition's
        // sandbox.seccomp) and Sandbox (the filters) share, so neither depends on the other.
        .target(name: "SandboxMode"),
        // JSON VM definitions with strict validation.
        .target(name: "Config", dependencies: ["Arch", "SandboxMode", "Posix", .product(name: "SystemPackage", package: "swift-system")]),
        // ---- sandbox (issue 7, docs/sandbox.md) ----
        // libseccomp (Debian libseccomp-dev) through a system library target.
        .systemLibrary(name: "CSeccomp", pkgConfig: "libseccomp", providers: [.apt(["libseccomp-dev"])]),
        // The SIGSYS report handler (async-signal-safe C) and SCMP_ACT_* values.
        .target(name: "CSandbox", dependencies: ["CSeccomp"]),
        // Per-thread seccomp filters as data (vcpu, io, vmm, api) and their installation. Test builds
        // (debug) get the forbidden-syscall hook (RTVISOR_TEST_FORBIDDEN_SYSCALL); release builds do not.
        .target(name: "Sandbox", dependencies: ["CSeccomp", "CSandbox", "CKVM", "CLinux", "Posix", "SandboxMode"],
                swiftSettings: [.define("RTVISOR_TEST_HOOKS", .when(configuration: .debug))]),
        // The daemon↔VMM contract: launch options (argv), exit statuses, the exit report and
        // latency files, the janitor's spec, the control frames and the per-VM control protocol.
        .target(name: "VMMInterface", dependencies: [
            "Posix",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        // Wires one VM: memory, vCPU threads, devices, lifecycle.
        .target(name: "VMM", dependencies: [
            "CKVM", "KVM", "Memory", "Arch", "Boot", "Devices", "Config", "Posix", "Virtio", "VirtioBlock", "VirtioNet", "HostNetwork", "PCI", "Realtime", "VMMInterface", "Sandbox", "VFIO", "Ivshmem",
            .product(name: "Histogram", package: "hdrhistogram-swift"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        // Test builds (debug) stop at a named step on request (RTVISOR_TEST_STOP_AT); release builds do not.
        .executableTarget(name: "rtvisor-vmm", dependencies: [
            "VMM", "VMMInterface", "Config", "Posix", "Journald", "CDaemonSupport", "Sandbox", "Realtime", "CLinux",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "SystemPackage", package: "swift-system"),
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: [.define("RTVISOR_TEST_HOOKS", .when(configuration: .debug))]),
        // ---- daemon (issue 4) ----
        // C shim for the daemon side: pidfd, posix_spawn with setsid, SCM_RIGHTS, memfd.
        .target(name: "CDaemonSupport"),
        // journald native protocol: entry encoding, datagram/memfd transport, swift-log LogHandler.
        .target(name: "Journald", dependencies: ["CDaemonSupport", "Posix", .product(name: "Logging", package: "swift-log")]),
        // sd_notify over $NOTIFY_SOCKET (READY/STATUS/STOPPING/WATCHDOG) without libsystemd.
        .target(name: "SystemdNotify"),
        // JSON shapes of the control API, shared by the server and rtvisorctl (no NIO here).
        .target(name: "APIModels", dependencies: ["VMMInterface"]),
        // GET /metrics: a StatsList in Prometheus' text exposition format (a pure function, no NIO).
        .target(name: "Metrics", dependencies: ["APIModels", "VMMInterface"]),
        // Definition directory loading and diffing, restart policy, VM supervision, state files.
        .target(name: "Daemon", dependencies: [
            "Config", "Journald", "APIModels", "VMMInterface", "CDaemonSupport", "Realtime", "Posix",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        // The control API: transport-free router (tested directly) and an HTTP/1.1 server on a Unix socket.
        .target(name: "API", dependencies: [
            "Daemon", "APIModels", "Metrics", "VMMInterface", "Sandbox", "SandboxMode", "Posix", "CDaemonSupport",
            .product(name: "SystemPackage", package: "swift-system"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .executableTarget(name: "rtvisord", dependencies: [
            "Daemon", "API", "APIModels", "Journald", "SystemdNotify", "Config", "SandboxMode", "VMMInterface",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // Config: `validate` runs the definition parser locally, with the caller's permissions.
        .executableTarget(name: "rtvisorctl", dependencies: [
            "APIModels", "VMMInterface", "CDaemonSupport", "Posix", "Config",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        // Test doubles and helpers several test targets share (a recording interrupt line, scratch
        // directories and files, unix-socket HTTP); a plain target that only test targets depend on.
        .target(name: "TestSupport", dependencies: ["Devices", "CDaemonSupport"], path: "Tests/TestSupport"),
        .testTarget(name: "DaemonTests", dependencies: [
            "Daemon", "API", "APIModels", "VMMInterface", "Journald", "SystemdNotify", "Config", "CDaemonSupport", "Posix", "TestSupport",
            .product(name: "SystemPackage", package: "swift-system"),
            .product(name: "Logging", package: "swift-log"),
            // PeerAccessTests: the peer credentials of a socketpair wrapped in a NIO channel.
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
        ]),
        // libFuzzer targets: virtqueue, blk, net, definition, api (build and run via scripts/fuzz.sh;
        // the plain build replays saved inputs). See docs/fuzzing.md.
        .executableTarget(name: "rtvisor-fuzz", dependencies: [
            "Memory", "Virtio", "VirtioBlock", "VirtioNet", "Config", "Daemon", "API", "APIModels", "VMMInterface",
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        .testTarget(name: "ArchTests", dependencies: ["Arch"]),
        .testTarget(name: "MetricsTests", dependencies: ["Metrics", "APIModels", "VMMInterface"]),
        .testTarget(name: "VMMInterfaceTests", dependencies: ["VMMInterface", .product(name: "SystemPackage", package: "swift-system")]),
        // The VMM's logic that needs no /dev/kvm (exit dispatch).
        .testTarget(name: "VMMTests", dependencies: ["VMM", "KVM", "CKVM", "Devices", "Memory", "Arch", "VMMInterface"]),
        .testTarget(name: "MemoryTests", dependencies: ["Memory", "Arch", .product(name: "SystemPackage", package: "swift-system")]),
        .testTarget(name: "BootTests", dependencies: ["Boot", "Memory", "Arch", "TestSupport", .product(name: "SystemPackage", package: "swift-system")]),
        .testTarget(name: "DevicesTests", dependencies: ["Devices", "TestSupport"]),
        .testTarget(name: "ConfigTests", dependencies: ["Config", "Arch", "SandboxMode", "TestSupport"]),
        .testTarget(name: "PosixTests", dependencies: ["Posix", .product(name: "SystemPackage", package: "swift-system")]),
        .testTarget(name: "RealtimeTests", dependencies: ["Realtime", "Posix", "TestSupport"]),
        .testTarget(name: "VirtioTests", dependencies: ["Virtio", "VirtioBlock", "VirtioNet", "Memory", "Posix", "CLinux", "TestSupport",
                                                   .product(name: "SystemPackage", package: "swift-system")]),
        .testTarget(name: "HostNetworkTests", dependencies: ["HostNetwork", "CLinux"]),
        .testTarget(name: "VFIOTests", dependencies: ["VFIO", "PCI", "CKVM", "TestSupport", .product(name: "SystemPackage", package: "swift-system")]),
        .testTarget(name: "IvshmemTests", dependencies: ["Ivshmem", "PCI"]),
        .testTarget(name: "PCITests", dependencies: ["PCI", "Virtio", "Devices", "Memory", "Posix", "TestSupport"]),
        .testTarget(name: "KVMTests", dependencies: ["KVM", "Memory", "Arch"]),
        .testTarget(name: "SandboxTests", dependencies: ["Sandbox", "SandboxMode", "Config", "VMMInterface", "CSeccomp", "CSandbox", "CKVM", "TestSupport"]),
        .testTarget(name: "IntegrationTests", dependencies: [
            "VMM", "VMMInterface", "Realtime", "Posix", "APIModels", "Daemon", "KVM", "PCI", "Sandbox", "API", "TestSupport", "CDaemonSupport",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
    ]
)
