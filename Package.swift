// swift-tools-version:6.0
import PackageDescription

// Module graph (each module has one job; see docs/architecture.md):
// CKVM → KVM → Memory → Arch → Boot → Devices → Config → VMM → rtvisor-vmm
// Memory → Virtio (queues) → VirtioBlock, VirtioNet (device models) → PCI (bus, MSI-X, virtio-pci) → VMM
let package = Package(
    name: "rtvisor",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "rtvisor-vmm", targets: ["rtvisor-vmm"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
    ],
    targets: [
        // C shim: <linux/kvm.h>, ioctl request numbers as constants, non-variadic wrappers.
        .target(name: "CKVM"),
        // Typed KVM file descriptors (system, VM, vCPU), exits as an enum, errors naming the ioctl.
        .target(name: "KVM", dependencies: ["CKVM", "Arch", .product(name: "SystemPackage", package: "swift-system")]),
        // Guest RAM: mmap-backed regions, GuestAddress, bounds-checked access.
        .target(name: "Memory", dependencies: ["CKVM"]),
        // x86 architecture data: CPUID feature table and policy, GDT, page tables, register layouts.
        .target(name: "Arch"),
        // Kernel loaders (ELF/PVH, bzImage), boot_params, e820, MP table, start_info, cmdline.
        .target(name: "Boot", dependencies: ["Memory", "Arch"]),
        // Device models behind a PIO/MMIO bus; they never see KVM.
        .target(name: "Devices"),
        // C shim for non-KVM Linux interfaces: tun/tap and block ioctls, fallocate modes, thread names.
        .target(name: "CLinux"),
        // Threads, eventfd and epoll for vCPU and device I/O threads.
        .target(name: "Posix", dependencies: ["CLinux", .product(name: "SystemPackage", package: "swift-system")]),
        // Split virtqueues and the transport-independent device interface; knows nothing of PCI.
        .target(name: "Virtio", dependencies: ["Memory"]),
        // virtio-blk over raw image files.
        .target(name: "VirtioBlock", dependencies: ["Virtio", "Memory", "CLinux", .product(name: "SystemPackage", package: "swift-system")]),
        // virtio-net over a TAP interface, with its receive thread.
        .target(name: "VirtioNet", dependencies: ["Virtio", "Memory", "Posix", "CLinux", .product(name: "SystemPackage", package: "swift-system")]),
        // PCI root bus (configuration mechanism #1, BAR window), MSI-X, and the virtio-pci transport.
        .target(name: "PCI", dependencies: ["Devices", "Virtio", "Memory"]),
        // JSON VM definitions with strict validation.
        .target(name: "Config", dependencies: ["Arch"]),
        // Wires one VM: memory, vCPU threads, devices, lifecycle.
        .target(name: "VMM", dependencies: [
            "CKVM", "KVM", "Memory", "Arch", "Boot", "Devices", "Config", "Posix", "Virtio", "VirtioBlock", "VirtioNet", "PCI",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        .executableTarget(name: "rtvisor-vmm", dependencies: [
            "VMM", "Config", "Posix",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // Fuzz target for the virtqueue core and virtio-blk (libFuzzer build via scripts/fuzz-virtio.sh;
        // the plain build replays saved inputs).
        .executableTarget(name: "virtio-fuzz", dependencies: ["Memory", "Virtio", "VirtioBlock"]),
        .testTarget(name: "ArchTests", dependencies: ["Arch"]),
        .testTarget(name: "MemoryTests", dependencies: ["Memory"]),
        .testTarget(name: "BootTests", dependencies: ["Boot", "Memory", "Arch"]),
        .testTarget(name: "DevicesTests", dependencies: ["Devices"]),
        .testTarget(name: "ConfigTests", dependencies: ["Config"]),
        .testTarget(name: "VirtioTests", dependencies: ["Virtio", "VirtioBlock", "VirtioNet", "Memory"]),
        .testTarget(name: "PCITests", dependencies: ["PCI", "Virtio", "Devices", "Memory"]),
        .testTarget(name: "KVMTests", dependencies: ["KVM", "Memory", "Arch"]),
        .testTarget(name: "IntegrationTests", dependencies: ["VMM", "Config"]),
    ]
)
