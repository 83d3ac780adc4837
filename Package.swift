// swift-tools-version:6.0
import PackageDescription

// Module graph (each module has one job; see docs/architecture.md):
// CKVM → KVM → Memory → Arch → Boot → Devices → Config → VMM → rtvisor-vmm
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
        // JSON VM definitions with strict validation.
        .target(name: "Config", dependencies: ["Arch"]),
        // Wires one VM: memory, vCPU threads, devices, lifecycle.
        .target(name: "VMM", dependencies: [
            "CKVM", "KVM", "Memory", "Arch", "Boot", "Devices", "Config",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        .executableTarget(name: "rtvisor-vmm", dependencies: [
            "VMM", "Config",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .testTarget(name: "ArchTests", dependencies: ["Arch"]),
        .testTarget(name: "MemoryTests", dependencies: ["Memory"]),
        .testTarget(name: "BootTests", dependencies: ["Boot", "Memory", "Arch"]),
        .testTarget(name: "DevicesTests", dependencies: ["Devices"]),
        .testTarget(name: "ConfigTests", dependencies: ["Config"]),
        .testTarget(name: "KVMTests", dependencies: ["KVM", "Memory", "Arch"]),
        .testTarget(name: "IntegrationTests", dependencies: ["VMM", "Config"]),
    ]
)
