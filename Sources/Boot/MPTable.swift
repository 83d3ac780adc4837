import Arch
import Memory

/// Intel MultiProcessor Specification 1.4 tables: how a guest without ACPI finds its CPUs,
/// the IOAPIC and the ISA interrupt wiring.
public struct MPTable: Sendable {
    public let cpus: Int
    /// PCI INTA# routing of bus 0: device slot → IOAPIC pin (level-triggered, active-low).
    public let pciInterrupts: [(slot: Int, ioapicPin: UInt8)]
    public var ioapicID: UInt8 { UInt8(cpus) }

    static let apicVersion: UInt8 = 0x14
    static let ioapicVersion: UInt8 = 0x11
    public static let maxCPUs = 254

    public init(cpus: Int, pciInterrupts: [(slot: Int, ioapicPin: UInt8)] = []) {
        precondition(cpus >= 1 && cpus <= Self.maxCPUs)
        self.cpus = cpus
        self.pciInterrupts = pciInterrupts
    }

    /// The bytes of floating pointer + configuration table, to be placed at `address`.
    public func bytes(at address: UInt64) -> [UInt8] {
        var entries: [UInt8] = []
        var count = 0
        func u16(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xFF), UInt8(v >> 8)] }
        func u32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
        for cpu in 0..<cpus {
            // Processor: type 0, APIC id, version, flags (enabled | BSP), signature, features (FPU|APIC).
            entries += [0, UInt8(cpu), Self.apicVersion, cpu == 0 ? 3 : 1] + u32(0x600) + u32(0x201) + [UInt8](repeating: 0, count: 8)
            count += 1
        }
        // Linux looks PCI interrupts up by MP bus ID == PCI bus number, so with PCI devices the
        // PCI bus is ID 0 and ISA moves to ID 1 (the layout SeaBIOS uses); without, ISA is 0.
        let isaBus: UInt8 = pciInterrupts.isEmpty ? 0 : 1
        if !pciInterrupts.isEmpty { entries += [1, Self.pciBusID] + Array("PCI   ".utf8); count += 1 }
        entries += [1, isaBus] + Array("ISA   ".utf8); count += 1
        entries += [2, ioapicID, Self.ioapicVersion, 1] + u32(UInt32(GuestLayout.ioapic)); count += 1
        for irq in 0..<16 {
            // I/O interrupt: INT, conforming polarity/trigger, ISA bus, IRQ n → IOAPIC pin n.
            entries += [3, 0] + u16(0) + [isaBus, UInt8(irq), ioapicID, UInt8(irq)]
            count += 1
        }
        for (slot, pin) in pciInterrupts {
            // I/O interrupt: INT, active-low level (flags 0b1111), PCI bus, source = slot<<2 | INTA#.
            entries += [3, 0] + u16(0x0F) + [Self.pciBusID, UInt8(slot << 2), ioapicID, pin]
            count += 1
        }
        // Local interrupts: LINT0 = ExtINT (8259), LINT1 = NMI, to all local APICs.
        entries += [4, 3] + u16(0) + [0, 0, 0xFF, 0]; count += 1
        entries += [4, 1] + u16(0) + [0, 0, 0xFF, 1]; count += 1

        let headerSize = 44
        let tableAddress = UInt32(address + 16)
        var header: [UInt8] = Array("PCMP".utf8) + u16(UInt16(headerSize + entries.count)) + [4, 0]
        header += Array("RTVISOR ".utf8) + Array("RTVISOR-VM  ".utf8)
        header += u32(0) + u16(0) + u16(UInt16(count)) + u32(UInt32(GuestLayout.lapic)) + u16(0) + [0, 0]
        var table = header + entries
        table[7] = Self.checksum(table)

        var floating: [UInt8] = Array("_MP_".utf8) + u32(tableAddress) + [1, 4, 0, 0, 0, 0, 0, 0]
        floating[10] = Self.checksum(floating)
        return floating + table
    }

    /// The byte that makes the sum of `bytes` zero mod 256.
    public static func checksum(_ bytes: [UInt8]) -> UInt8 {
        let sum = bytes.reduce(UInt8(0)) { $0 &+ $1 }
        return 0 &- sum
    }

    /// Size of floating pointer + configuration table.
    public var size: Int { 16 + 44 + 20 * cpus + 8 + 8 + 16 * 8 + 2 * 8 + (pciInterrupts.isEmpty ? 0 : 8 + 8 * pciInterrupts.count) }

    static let pciBusID: UInt8 = 0

    /// Where the table goes: the EBDA's last KiB when it fits, else the BIOS area.
    public var address: GuestAddress { size <= GuestLayout.mpTableEBDASize ? GuestAddress(GuestLayout.mpTable) : GuestAddress(GuestLayout.mpTableLarge) }

    public func write(to memory: GuestMemory) throws {
        try memory.write(bytes(at: address.raw), at: address)
    }
}
