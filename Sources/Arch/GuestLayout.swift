/// Every fixed guest-physical address, I/O port and interrupt of the rtvisor platform, in one
/// place (like Firecracker's `arch/x86_64/layout.rs`): the loaders, guest memory, the PCI bus
/// and the machine all read from here, and docs/architecture.md's table repeats it.
/// `GuestLayoutTests` checks that nothing overlaps.
public enum GuestLayout {
    // MARK: low memory: boot structures the VMM writes (guests may use anything else)

    /// The boot GDT: null, 64-bit code 0x08, 32-bit code 0x10, data 0x18, TSS 0x20 (0x500..<0x528).
    public static let gdt: UInt64 = 0x500
    /// An empty IDT, after the GDT.
    public static let idt: UInt64 = 0x540
    /// PVH `hvm_start_info`, its module list and memory map (up to the zero page).
    public static let pvhStartInfo: UInt64 = 0x6000
    public static let pvhModuleList: UInt64 = 0x6040
    public static let pvhMemoryMap: UInt64 = 0x6080
    public static let pvhMemoryMapCapacity = Int(zeroPage - pvhMemoryMap) / 24
    /// Linux `boot_params` (64-bit boot protocol).
    public static let zeroPage: UInt64 = 0x7000
    public static let bootStack: UInt64 = 0x8FF0
    /// Identity page tables for the 64-bit boot protocol (4 GiB of 2 MiB pages).
    public static let pageTables: UInt64 = 0x9000
    public static let cmdline: UInt64 = 0x20000
    public static let cmdlineMaxSize = 0x10000
    /// The MP table sits in the last KiB of base memory, one of the places Linux scans.
    public static let mpTable: UInt64 = 0x9FC00
    public static let mpTableEBDASize = 0x400
    /// Tables too large for that KiB (more than 40 CPUs) go to the BIOS area, also scanned by Linux.
    public static let mpTableLarge: UInt64 = 0xF0000
    /// EBDA and BIOS area: reserved in the e820 map.
    public static let ebdaStart: UInt64 = 0x9FC00
    public static let biosStart: UInt64 = 0xF0000
    /// Where RAM above the legacy areas begins; ELF kernels load at their physical addresses from here.
    public static let highMemory: UInt64 = 0x10_0000
    /// Default load address of a bzImage's protected-mode kernel.
    public static let bzImageLoadAddress: UInt64 = 0x10_0000

    // MARK: the 32-bit MMIO hole: RAM above 3 GiB continues at 4 GiB

    public static let mmioHoleStart: UInt64 = 0xC000_0000
    public static let mmioHoleEnd: UInt64 = 0x1_0000_0000
    /// Pre-assigned PCI BARs (each virtio device: one 32 KiB 64-bit BAR); guests may move BARs
    /// anywhere up to `pciDecodeEnd`.
    public static let pciWindowBase: UInt64 = 0xC000_0000
    public static let pciWindowSize: UInt64 = 0x1000_0000
    /// The boot-marker device (a write of 123 marks "guest ready"); one page.
    public static let bootMarker: UInt64 = 0xD000_0000
    public static let bootMarkerSize: UInt64 = 0x1000
    /// BARs the guest moves are decoded up to here: the IOAPIC and above are KVM's.
    public static let pciDecodeEnd: UInt64 = ioapic
    /// In-kernel IOAPIC and LAPIC.
    public static let ioapic: UInt64 = 0xFEC0_0000
    public static let lapic: UInt64 = 0xFEE0_0000
    /// KVM needs one page for the identity map and three for the VMX real-mode TSS, inside the hole.
    public static let kvmIdentityMap: UInt64 = 0xFFFB_C000
    public static let kvmTSS: UInt64 = 0xFFFB_D000

    // MARK: port I/O (PIC, PIT and the speaker port are in the kernel)

    public static let i8042Port: UInt64 = 0x60
    public static let i8042PortCount: UInt64 = 5
    /// The CMOS clock (read-only).
    public static let cmosPort: UInt64 = 0x70
    public static let cmosPortCount: UInt64 = 2
    /// QEMU's isa-debug-exit convention (docs/exit-status.md).
    public static let exitPort: UInt64 = 0xF4
    public static let com1Port: UInt64 = 0x3F8
    public static let com1PortCount: UInt64 = 8
    /// PCI configuration mechanism #1: CONFIG_ADDRESS at 0xCF8, CONFIG_DATA at 0xCFC–0xCFF.
    public static let pciConfigPort: UInt64 = 0xCF8
    public static let pciConfigPortCount: UInt64 = 8

    // MARK: interrupts

    public static let i8042IRQ: UInt32 = 1
    public static let com1IRQ: UInt32 = 4
    /// IOAPIC pins for PCI INTA# (ISA IRQs keep 0–15).
    public static let firstPCIInterruptPin: UInt32 = 16
}
