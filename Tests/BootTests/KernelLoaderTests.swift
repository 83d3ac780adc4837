import Testing
@testable import Boot
import Arch
import Memory

private let MiB: UInt64 = 1 << 20

private func initrd(_ size: Int, path: String = "/images/initrd.cpio") -> ImageFile {
    ImageFile(path: path, bytes: (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 17 &+ 3) })
}

private func cString(_ memory: GuestMemory, at address: UInt64, max: Int = 0x1_0000) throws -> String {
    var bytes: [UInt8] = []
    for i in 0..<max {
        let b = try memory.read(1, at: GuestAddress(address + UInt64(i)))[0]
        if b == 0 { break }
        bytes.append(b)
    }
    return String(decoding: bytes, as: UTF8.self)
}

@Suite("KernelLoader.looksLikeLinux")
struct LooksLikeLinuxTests {
    @Test func linuxNoteOrBzImageMeansLinux() {
        #expect(KernelLoader.looksLikeLinux(ELFBuilder.vmlinux().image()))
        #expect(KernelLoader.looksLikeLinux(ELFBuilder.vmlinux(pvh: true).image()))
        #expect(KernelLoader.looksLikeLinux(BzImageBuilder().image()))
    }

    @Test func inmatesAndGarbageAreNotLinux() {
        #expect(!KernelLoader.looksLikeLinux(ELFBuilder.pvhInmate().image()))
        #expect(!KernelLoader.looksLikeLinux(ELFBuilder.pvhInmate(is64: false).image()))
        #expect(!KernelLoader.looksLikeLinux(ImageFile(path: "x", bytes: Array("Linux".utf8))))
        #expect(!KernelLoader.looksLikeLinux(ImageFile(path: "x", bytes: [])))
        // A truncated vmlinux cannot be parsed, so it is not claimed to be Linux.
        let full = ELFBuilder.vmlinux().build()
        #expect(!KernelLoader.looksLikeLinux(ImageFile(path: "x", bytes: Array(full.prefix(100)))))
    }
}

@Suite("KernelLoader.load PVH")
struct PVHLoadTests {
    let memory: GuestMemory
    init() throws { memory = try GuestMemory.standard(bytes: 64 * MiB) }

    @Test(arguments: [true, false])
    func pvhBootWithInitrd(is64: Bool) throws {
        let kernel = ELFBuilder.pvhInmate(is64: is64)
        let rd = initrd(10_000)
        let cmdline = "console=ttyS0 inmate.test=1"
        let entry = try KernelLoader.load(BootImages(kernel: kernel.image(), initrd: rd, commandLine: cmdline),
                                          into: memory, vcpus: 2)
        #expect(entry == .pvh(entry: 0x10_0040, startInfo: 0x6000))

        // Kernel image.
        #expect(try memory.read(256, at: GuestAddress(0x10_0000)) == kernel.loads[0].data)

        // hvm_start_info.
        let si: UInt64 = 0x6000
        #expect(try memory.readInteger(UInt32.self, at: GuestAddress(si)) == 0x336E_C578)
        #expect(try memory.readInteger(UInt32.self, at: GuestAddress(si + 4)) == 1)       // version
        #expect(try memory.readInteger(UInt32.self, at: GuestAddress(si + 8)) == 0)       // flags
        #expect(try memory.readInteger(UInt32.self, at: GuestAddress(si + 12)) == 1)      // nr_modules
        #expect(try memory.readInteger(UInt64.self, at: GuestAddress(si + 16)) == 0x6040) // modlist_paddr
        #expect(try memory.readInteger(UInt64.self, at: GuestAddress(si + 24)) == 0x2_0000) // cmdline_paddr
        #expect(try memory.readInteger(UInt64.self, at: GuestAddress(si + 32)) == 0)      // rsdp_paddr
        #expect(try memory.readInteger(UInt64.self, at: GuestAddress(si + 40)) == 0x6080) // memmap_paddr
        #expect(try memory.readInteger(UInt32.self, at: GuestAddress(si + 48)) == 4)      // memmap_entries

        // Command line, NUL-terminated.
        #expect(try cString(memory, at: 0x2_0000) == cmdline)
        #expect(try memory.read(1, at: GuestAddress(0x2_0000 + UInt64(cmdline.utf8.count))) == [0])

        // Module list: the initrd, page-aligned, below the end of RAM, above the kernel.
        let rdAddress = try memory.readInteger(UInt64.self, at: GuestAddress(0x6040))
        let rdSize = try memory.readInteger(UInt64.self, at: GuestAddress(0x6048))
        #expect(rdSize == 10_000)
        #expect(rdAddress % 4096 == 0)
        #expect(rdAddress + rdSize <= 64 * MiB)
        #expect(rdAddress >= 0x10_2000)
        #expect(rdAddress == (64 * MiB - 10_000) & ~0xFFF, "placed as high as possible")
        #expect(try memory.readInteger(UInt64.self, at: GuestAddress(0x6050)) == 0) // module cmdline
        #expect(try memory.read(10_000, at: GuestAddress(rdAddress)) == rd.bytes)

        // Memory map as PVH entries (24 bytes each).
        let expected = MemoryMapEntry.map(for: memory)
        for (i, e) in expected.enumerated() {
            let o = 0x6080 + UInt64(i * 24)
            #expect(try memory.readInteger(UInt64.self, at: GuestAddress(o)) == e.address)
            #expect(try memory.readInteger(UInt64.self, at: GuestAddress(o + 8)) == e.size)
            #expect(try memory.readInteger(UInt32.self, at: GuestAddress(o + 16)) == e.kind.rawValue)
        }

        // MP table with the vCPU count.
        #expect(try memory.read(4, at: GuestAddress(0x9_FC00)) == Array("_MP_".utf8))
        #expect(try memory.read(MPTable(cpus: 2).bytes(at: 0x9_FC00).count, at: GuestAddress(0x9_FC00))
            == MPTable(cpus: 2).bytes(at: 0x9_FC00))

        // Boot GDT at 0x500 (entry 4, the TSS, is checked in EntryRegistersTests), null IDT.
        for (i, d) in BootSegments.gdt.enumerated() where i < 4 {
            #expect(try memory.readInteger(UInt64.self, at: GuestAddress(0x500 + UInt64(i * 8))) == d)
        }
        #expect(try memory.readInteger(UInt64.self, at: GuestAddress(GuestLayout.idt)) == 0)

        // No zero page or page tables for PVH.
        #expect(try memory.read(4, at: GuestAddress(0x7202)) == [0, 0, 0, 0])
        #expect(try memory.readInteger(UInt64.self, at: GuestAddress(0x9000)) == 0)
    }

    @Test func pvhWithoutInitrdHasNoModules() throws {
        let entry = try KernelLoader.load(BootImages(kernel: ELFBuilder.pvhInmate().image(), initrd: nil, commandLine: ""),
                                          into: memory, vcpus: 1)
        #expect(entry == .pvh(entry: 0x10_0040, startInfo: 0x6000))
        #expect(try memory.readInteger(UInt32.self, at: GuestAddress(0x600C)) == 0)
        #expect(try memory.readInteger(UInt64.self, at: GuestAddress(0x6010)) == 0)
        #expect(try memory.read(1, at: GuestAddress(0x2_0000)) == [0])
    }

    @Test func vmlinuxWithPVHNoteBootsPVH() throws {
        let entry = try KernelLoader.load(BootImages(kernel: ELFBuilder.vmlinux(pvh: true).image(), initrd: nil, commandLine: "x"),
                                          into: memory, vcpus: 1)
        #expect(entry == .pvh(entry: 0x100_0100, startInfo: 0x6000))
    }
}

@Suite("KernelLoader.load Linux 64-bit")
struct Linux64LoadTests {
    let memory: GuestMemory
    init() throws { memory = try GuestMemory.standard(bytes: 64 * MiB) }

    private func zeroPage<T: FixedWidthInteger>(_: T.Type, _ offset: UInt64) throws -> T {
        try memory.readInteger(T.self, at: GuestAddress(0x7000 + offset))
    }

    @Test func vmlinuxWithoutPVHNoteUsesTheZeroPage() throws {
        let rd = initrd(5000)
        let cmdline = "console=ttyS0 root=/dev/ram0"
        let entry = try KernelLoader.load(BootImages(kernel: ELFBuilder.vmlinux().image(), initrd: rd, commandLine: cmdline),
                                          into: memory, vcpus: 1)
        #expect(entry == .linux64(entry: 0x100_0000, bootParams: 0x7000))

        // boot_params.
        #expect(try zeroPage(UInt16.self, 0x1FE) == 0xAA55)
        #expect(try memory.read(4, at: GuestAddress(0x7202)) == Array("HdrS".utf8))
        #expect(try zeroPage(UInt8.self, 0x210) == 0xFF)
        #expect(try zeroPage(UInt32.self, 0x228) == 0x2_0000)
        #expect(try zeroPage(UInt32.self, 0x238) == UInt32(cmdline.utf8.count))
        #expect(try cString(memory, at: 0x2_0000) == cmdline)

        let rdAddress = UInt64(try zeroPage(UInt32.self, 0x218))
        #expect(try zeroPage(UInt32.self, 0x21C) == 5000)
        #expect(try zeroPage(UInt32.self, 0x0C0) == 0)
        #expect(rdAddress % 4096 == 0)
        #expect(rdAddress + 5000 <= 64 * MiB)
        #expect(rdAddress >= 0x121_0000)
        #expect(try memory.read(5000, at: GuestAddress(rdAddress)) == rd.bytes)

        // e820.
        let map = MemoryMapEntry.map(for: memory)
        #expect(try zeroPage(UInt8.self, 0x1E8) == UInt8(map.count))
        for (i, e) in map.enumerated() {
            let o = 0x2D0 + UInt64(i * 20)
            #expect(try zeroPage(UInt64.self, o) == e.address)
            #expect(try zeroPage(UInt64.self, o + 8) == e.size)
            #expect(try zeroPage(UInt32.self, o + 16) == e.kind.rawValue)
        }

        // Identity page tables at 0x9000.
        let tables = IdentityPageTables(base: 0x9000)
        for (p, page) in tables.pages().enumerated() {
            for (j, e) in page.enumerated() where j < 4 || j == 511 {
                #expect(try memory.readInteger(UInt64.self, at: GuestAddress(0x9000 + UInt64(p * 4096 + j * 8))) == e)
            }
        }
        #expect(try memory.readInteger(UInt64.self, at: GuestAddress(0x9000)) == 0xA003)
        #expect(try memory.readInteger(UInt64.self, at: GuestAddress(0xA000)) == 0xB003)
        #expect(try memory.readInteger(UInt64.self, at: GuestAddress(0xB008)) == 0x20_0083)

        // No PVH start info.
        #expect(try memory.readInteger(UInt32.self, at: GuestAddress(0x6000)) == 0)
        // MP table and GDT as for PVH.
        #expect(try memory.read(4, at: GuestAddress(0x9_FC00)) == Array("_MP_".utf8))
        #expect(try memory.readInteger(UInt64.self, at: GuestAddress(0x508)) == BootSegments.code64.gdtEntry)
    }

    @Test func bzImageBootUsesItsSetupHeaderAndInitrdLimit() throws {
        var bz = BzImageBuilder()
        bz.initrdAddrMax = 0x1FF_FFFF // 32 MiB − 1, below the 64 MiB RAM end
        let entry = try KernelLoader.load(BootImages(kernel: bz.image(), initrd: initrd(8192), commandLine: "quiet"),
                                          into: memory, vcpus: 4)
        #expect(entry == .linux64(entry: 0x10_0200, bootParams: 0x7000))
        #expect(try memory.read(4096, at: GuestAddress(0x10_0000)) == bz.kernel)
        #expect(try zeroPage(UInt8.self, 0x1F1) == 4)
        #expect(try zeroPage(UInt16.self, 0x206) == 0x020F)
        #expect(try zeroPage(UInt32.self, 0x260) == 0x0123_4567)
        #expect(try zeroPage(UInt8.self, 0x211) == 0x81)
        #expect(try zeroPage(UInt32.self, 0x228) == 0x2_0000)
        let rdAddress = UInt64(try zeroPage(UInt32.self, 0x218))
        #expect(rdAddress == 0x200_0000 - 8192)
        #expect(try zeroPage(UInt32.self, 0x21C) == 8192)
        let mp = MPTable(cpus: 4).bytes(at: 0x9_FC00)
        #expect(try memory.read(mp.count, at: GuestAddress(0x9_FC00)) == mp)
    }

    @Test func bzImageCommandLineLimitComesFromTheHeader() throws {
        var bz = BzImageBuilder()
        bz.cmdlineSize = 255
        let ok = String(repeating: "a", count: 255)
        #expect(throws: Never.self) {
            try KernelLoader.load(BootImages(kernel: bz.image(), initrd: nil, commandLine: ok), into: memory, vcpus: 1)
        }
        let long = String(repeating: "a", count: 256)
        #expect(throws: BootError.commandLineTooLong(length: 256, max: 255)) {
            try KernelLoader.load(BootImages(kernel: bz.image(), initrd: nil, commandLine: long), into: memory, vcpus: 1)
        }
    }
}

@Suite("KernelLoader.load errors")
struct LoadErrorTests {
    @Test func commandLineLimit() throws {
        let memory = try GuestMemory.standard(bytes: 16 * MiB)
        let atLimit = String(repeating: "x", count: 0xFFFF)
        #expect(throws: Never.self) {
            try KernelLoader.load(BootImages(kernel: ELFBuilder.pvhInmate().image(), initrd: nil, commandLine: atLimit),
                                  into: memory, vcpus: 1)
        }
        #expect(try memory.read(1, at: GuestAddress(0x2_0000 + 0xFFFF)) == [0])

        let tooLong = String(repeating: "x", count: 0x1_0000)
        #expect(throws: BootError.commandLineTooLong(length: 0x1_0000, max: 0xFFFF)) {
            try KernelLoader.load(BootImages(kernel: ELFBuilder.pvhInmate().image(), initrd: nil, commandLine: tooLong),
                                  into: memory, vcpus: 1)
        }
        // Counted in bytes, not characters.
        let multibyte = String(repeating: "\u{E9}", count: 0x8000) // é: 0x10000 UTF-8 bytes
        #expect(throws: BootError.commandLineTooLong(length: 0x1_0000, max: 0xFFFF)) {
            try KernelLoader.load(BootImages(kernel: ELFBuilder.pvhInmate().image(), initrd: nil, commandLine: multibyte),
                                  into: memory, vcpus: 1)
        }
    }

    @Test func initrdLargerThanRAMDoesNotFit() throws {
        let memory = try GuestMemory.standard(bytes: 4 * MiB)
        let rd = initrd(Int(4 * MiB) + 1, path: "/images/huge.cpio")
        let error = try #require(throws: BootError.self) {
            try KernelLoader.load(BootImages(kernel: ELFBuilder.pvhInmate().image(), initrd: rd, commandLine: ""),
                                  into: memory, vcpus: 1)
        }
        guard case let .doesNotFit(path, what, _, size) = error else { Issue.record("\(error)"); return }
        #expect(path == "/images/huge.cpio")
        #expect(what == "initrd")
        #expect(size == 4 * MiB + 1)
    }

    @Test func initrdThatWouldOverlapTheKernelDoesNotFit() throws {
        let memory = try GuestMemory.standard(bytes: 4 * MiB)
        var kernel = ELFBuilder.pvhInmate()
        kernel.loads[0].memsz = 0x28_0000 // kernel + bss up to 3.5 MiB
        // 1 MiB does not fit between 3.5 MiB and 4 MiB.
        #expect(throws: BootError.doesNotFit(path: "/images/initrd.cpio", what: "initrd", address: 0x38_0000, size: MiB)) {
            try KernelLoader.load(BootImages(kernel: kernel.image(), initrd: initrd(Int(MiB)), commandLine: ""),
                                  into: memory, vcpus: 1)
        }
        // Half a MiB exactly fits, directly above the kernel.
        let entry = try KernelLoader.load(BootImages(kernel: kernel.image(), initrd: initrd(Int(MiB / 2)), commandLine: ""),
                                          into: memory, vcpus: 1)
        #expect(entry == .pvh(entry: 0x10_0040, startInfo: 0x6000))
        #expect(try memory.readInteger(UInt64.self, at: GuestAddress(0x6040)) == 0x38_0000)
    }

    @Test func kernelThatDoesNotFitIsReported() throws {
        let memory = try GuestMemory.standard(bytes: 8 * MiB)
        #expect(throws: BootError.doesNotFit(path: "/images/vmlinux", what: "segment 0", address: 0x100_0000, size: 0x300)) {
            try KernelLoader.load(BootImages(kernel: ELFBuilder.vmlinux().image(), initrd: nil, commandLine: ""),
                                  into: memory, vcpus: 1)
        }
    }

    @Test func thirtyTwoBitELFNeedsAPVHNote() throws {
        let memory = try GuestMemory.standard(bytes: 8 * MiB)
        var kernel = ELFBuilder.pvhInmate(is64: false)
        kernel.notes = [ELFBuilder.linuxNote]
        #expect(throws: BootError.unsupported(path: "/k32", reason: "32-bit ELF without a PVH entry note")) {
            try KernelLoader.load(BootImages(kernel: kernel.image("/k32"), initrd: nil, commandLine: ""), into: memory, vcpus: 1)
        }
    }

    @Test func unknownFormatsAreRejected() throws {
        let memory = try GuestMemory.standard(bytes: 8 * MiB)
        let junk = ImageFile(path: "/images/README", bytes: Array("this is not a kernel".utf8) + [UInt8](repeating: 0, count: 4096))
        #expect(throws: BootError.unrecognisedFormat(path: "/images/README")) {
            try KernelLoader.load(BootImages(kernel: junk, initrd: nil, commandLine: ""), into: memory, vcpus: 1)
        }
    }

    @Test func truncatedKernelsNameTheirPath() throws {
        let memory = try GuestMemory.standard(bytes: 8 * MiB)
        let full = ELFBuilder.pvhInmate().build()
        for cut in [10, 60, 100, 200, full.count - 1] {
            let image = ImageFile(path: "/images/cut-\(cut)", bytes: Array(full.prefix(cut)))
            let error = try #require(throws: BootError.self) {
                try KernelLoader.load(BootImages(kernel: image, initrd: nil, commandLine: ""), into: memory, vcpus: 1)
            }
            #expect(error.truncatedPath == "/images/cut-\(cut)", "cut at \(cut): \(error)")
        }
    }
}

@Suite("KernelLoader.registers")
struct EntryRegistersTests {
    @Test func pvhEntryState() {
        let (regs, sregs) = KernelLoader.registers(for: .pvh(entry: 0x10_0040, startInfo: 0x6000))
        #expect(regs.rip == 0x10_0040)
        #expect(regs.rbx == 0x6000)
        #expect(regs.rflags == 0x2)
        #expect(regs.rsi == 0 && regs.rsp == 0)
        #expect(sregs.cr0 & ControlBits.cr0PE != 0)
        #expect(sregs.cr0 & ControlBits.cr0PG == 0)
        #expect(sregs.cr4 == 0)
        #expect(sregs.efer == 0)
        #expect(sregs.cs.selector == 0x10)
        #expect(sregs.cs.db && !sregs.cs.l)
        #expect(sregs.cs.base == 0 && sregs.cs.limit == 0xFFFF_FFFF)
        #expect(sregs.ds == BootSegments.data && sregs.ss == BootSegments.data)
        #expect(sregs.gdt == DescriptorTable(base: 0x500, limit: 39))
        #expect(sregs.idt.base == GuestLayout.idt)
    }

    @Test func linux64EntryState() {
        let (regs, sregs) = KernelLoader.registers(for: .linux64(entry: 0x100_0000, bootParams: 0x7000))
        #expect(regs.rip == 0x100_0000)
        #expect(regs.rsi == 0x7000)
        #expect(regs.rsp == 0x8FF0 && regs.rbp == 0x8FF0)
        #expect(regs.rbx == 0)
        #expect(sregs.efer & ControlBits.eferLME != 0)
        #expect(sregs.efer & ControlBits.eferLMA != 0)
        #expect(sregs.cr0 & ControlBits.cr0PG != 0)
        #expect(sregs.cr0 & ControlBits.cr0PE != 0)
        #expect(sregs.cr4 & ControlBits.cr4PAE != 0)
        #expect(sregs.cr3 == 0x9000)
        #expect(sregs.cs.selector == 0x08)
        #expect(sregs.cs.l && !sregs.cs.db)
        #expect(sregs.gdt.base == 0x500)
    }

    @Test func guestMemoryHoldsTheWholeBootGDT() throws {
        let memory = try GuestMemory.standard(bytes: 8 * MiB)
        try KernelLoader.writeGDT(to: memory)
        for (i, d) in BootSegments.gdt.enumerated() where i < 4 {
            #expect(try memory.readInteger(UInt64.self, at: GuestAddress(0x500 + UInt64(i * 8))) == d)
        }
        #expect(try memory.readInteger(UInt64.self, at: GuestAddress(GuestLayout.idt)) == 0, "the IDT is empty")
        let tss = try memory.readInteger(UInt64.self, at: GuestAddress(0x500 + 4 * 8))
        #expect(tss == BootSegments.tss.gdtEntry)
    }

    @Test func bootLayoutDoesNotOverlap() {
        // The fixed boot structures must not collide with each other.
        let ranges: [(String, UInt64, UInt64)] = [
            ("gdt", GuestLayout.gdt, UInt64(BootSegments.gdt.count * 8)),
            ("idt", GuestLayout.idt, 8),
            ("start_info", GuestLayout.pvhStartInfo, 0x40),
            ("modules", GuestLayout.pvhModuleList, 0x40),
            ("memmap", GuestLayout.pvhMemoryMap, UInt64(GuestLayout.pvhMemoryMapCapacity * 24)),
            ("zero page", GuestLayout.zeroPage, 0x1000),
            ("page tables", GuestLayout.pageTables, UInt64(IdentityPageTables(base: GuestLayout.pageTables).totalSize)),
            ("cmdline", GuestLayout.cmdline, UInt64(GuestLayout.cmdlineMaxSize)),
            ("mp table", GuestLayout.mpTable, 0x400),
        ]
        for (i, a) in ranges.enumerated() {
            for b in ranges[(i + 1)...] where !(a.0 == "gdt" && b.0 == "idt") {
                #expect(a.1 + a.2 <= b.1 || b.1 + b.2 <= a.1, "\(a.0) overlaps \(b.0)")
            }
        }
        #expect(GuestLayout.gdt + UInt64(BootSegments.gdt.count * 8) <= GuestLayout.idt)
        #expect(GuestLayout.bootStack < GuestLayout.pageTables)
        #expect(GuestLayout.bootStack > GuestLayout.zeroPage + 0x1000)
    }
}
