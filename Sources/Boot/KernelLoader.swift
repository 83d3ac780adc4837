import Arch
import Memory

/// How the first vCPU must start: the state the loaded kernel's boot protocol expects.
public enum EntryState: Equatable, Sendable, CustomStringConvertible {
    /// PVH: 32-bit protected mode, paging off, `ebx` = start_info.
    case pvh(entry: UInt64, startInfo: UInt64)
    /// Linux 64-bit boot protocol: long mode, identity paging, `rsi` = boot_params.
    case linux64(entry: UInt64, bootParams: UInt64)

    public var description: String {
        func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }
        switch self {
        case let .pvh(e, si): return "PVH entry \(hex(e)), start_info \(hex(si))"
        case let .linux64(e, bp): return "64-bit boot protocol entry \(hex(e)), boot_params \(hex(bp))"
        }
    }
}

/// What a boot needs, already read from disk.
public struct BootImages: Sendable {
    public let kernel: ImageFile
    public let initrd: ImageFile?
    public let commandLine: String

    public init(kernel: ImageFile, initrd: ImageFile?, commandLine: String) {
        self.kernel = kernel; self.initrd = initrd; self.commandLine = commandLine
    }
}

/// Lays a kernel, initrd, command line and the boot tables into guest memory.
public enum KernelLoader {
    /// A bzImage, or an ELF carrying a "Linux" note (vmlinux has one since 4.19; inmates don't).
    public static func looksLikeLinux(_ image: ImageFile) -> Bool {
        if BzImage.isBzImage(image) { return true }
        guard ELFKernel.isELF(image), let elf = try? ELFKernel(parsing: image) else { return false }
        return elf.noteNames.contains("Linux")
    }

    /// Loads everything and returns the entry state for the boot vCPU.
    public static func load(_ images: BootImages, into memory: GuestMemory, vcpus: Int,
                            pciInterrupts: [(slot: Int, ioapicPin: UInt8)] = []) throws -> EntryState {
        let cmdline = Array(images.commandLine.utf8) + [0]
        let kernelEnd: UInt64
        var bootParams: BootParams? = nil
        var entry: EntryState

        if ELFKernel.isELF(images.kernel) {
            let elf = try ELFKernel(parsing: images.kernel)
            kernelEnd = try elf.load(images.kernel, into: memory)
            if let pvh = elf.pvhEntry {
                entry = .pvh(entry: pvh, startInfo: GuestLayout.pvhStartInfo)
            } else {
                guard elf.is64Bit else {
                    throw BootError.unsupported(path: images.kernel.path, reason: "32-bit ELF without a PVH entry note")
                }
                bootParams = BootParams()
                entry = .linux64(entry: elf.entry, bootParams: GuestLayout.zeroPage)
            }
        } else if BzImage.isBzImage(images.kernel) {
            let bz = try BzImage(parsing: images.kernel)
            let (e, end) = try bz.load(images.kernel, into: memory)
            kernelEnd = end
            bootParams = BootParams(setupHeader: bz.setupHeader)
            entry = .linux64(entry: e, bootParams: GuestLayout.zeroPage)
            if bz.commandLineSize > 0, cmdline.count > Int(bz.commandLineSize) + 1 {
                throw BootError.commandLineTooLong(length: cmdline.count - 1, max: Int(bz.commandLineSize))
            }
        } else {
            throw BootError.unrecognisedFormat(path: images.kernel.path)
        }

        guard cmdline.count <= GuestLayout.cmdlineMaxSize else {
            throw BootError.commandLineTooLong(length: cmdline.count - 1, max: GuestLayout.cmdlineMaxSize - 1)
        }
        try memory.write(cmdline, at: GuestAddress(GuestLayout.cmdline))

        var initrdPlacement: (address: UInt64, size: UInt64)? = nil
        if let initrd = images.initrd {
            let maxAddress = bootParams.map { UInt64($0.get(UInt32.self, at: 0x22C)) } ?? 0
            let placement = try placeInitrd(size: UInt64(initrd.count), kernelEnd: kernelEnd, memory: memory,
                                            addressMax: maxAddress == 0 ? 0x7FFF_FFFF : maxAddress, path: initrd.path)
            try initrd.bytes.withUnsafeBytes { try memory.write($0, at: GuestAddress(placement)) }
            initrdPlacement = (placement, UInt64(initrd.count))
        }

        let map = MemoryMapEntry.map(for: memory)
        try MPTable(cpus: vcpus, pciInterrupts: pciInterrupts).write(to: memory)
        try writeGDT(to: memory)

        switch entry {
        case .pvh:
            try PVHStartInfo(commandLine: GuestLayout.cmdline,
                             modules: initrdPlacement.map { [$0] } ?? [],
                             memoryMap: map).write(to: memory)
        case .linux64:
            var params = bootParams!
            params.setCommandLine(address: GuestLayout.cmdline, size: cmdline.count - 1)
            if let i = initrdPlacement { params.setInitrd(address: i.address, size: i.size) }
            params.setMemoryMap(map)
            try memory.write(params.bytes, at: GuestAddress(GuestLayout.zeroPage))
            let tables = IdentityPageTables(base: GuestLayout.pageTables)
            for (i, page) in tables.pages().enumerated() {
                for (j, e) in page.enumerated() {
                    try memory.writeInteger(e, at: GuestAddress(tables.base + UInt64(i * 4096 + j * 8)))
                }
            }
        }
        return entry
    }

    /// Highest page-aligned spot below both the low-RAM end and the kernel's limit, above the kernel.
    static func placeInitrd(size: UInt64, kernelEnd: UInt64, memory: GuestMemory, addressMax: UInt64, path: String) throws -> UInt64 {
        let top = min(memory.lowRAMEnd, addressMax &+ 1)
        let floor = (kernelEnd + 0xFFF) & ~0xFFF
        guard size <= top, (top - size) & ~0xFFF >= floor else {
            throw BootError.doesNotFit(path: path, what: "initrd", address: floor, size: size)
        }
        return (top - size) & ~0xFFF
    }

    static func writeGDT(to memory: GuestMemory) throws {
        for (i, e) in BootSegments.gdt.enumerated() {
            try memory.writeInteger(e, at: GuestAddress(GuestLayout.gdt + UInt64(i * 8)))
        }
        try memory.writeInteger(UInt64(0), at: GuestAddress(GuestLayout.idt))
    }

    /// Register state of the boot vCPU for `entry`.
    public static func registers(for entry: EntryState) -> (GeneralRegisters, SpecialRegisters) {
        var regs = GeneralRegisters()
        switch entry {
        case let .pvh(e, startInfo):
            regs.rip = e
            regs.rbx = startInfo
            return (regs, BootSegments.protectedMode(gdtBase: GuestLayout.gdt, idtBase: GuestLayout.idt))
        case let .linux64(e, bootParams):
            regs.rip = e
            regs.rsi = bootParams
            regs.rsp = GuestLayout.bootStack
            regs.rbp = GuestLayout.bootStack
            return (regs, BootSegments.longMode(gdtBase: GuestLayout.gdt, idtBase: GuestLayout.idt,
                                                pml4: GuestLayout.pageTables))
        }
    }
}
