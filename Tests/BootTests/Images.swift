@testable import Boot

/// Little-endian byte assembly for synthetic kernel images.
struct Bytes {
    var data: [UInt8] = []

    mutating func u8(_ v: UInt8) { data.append(v) }
    mutating func u16(_ v: UInt16) { append(v) }
    mutating func u32(_ v: UInt32) { append(v) }
    mutating func u64(_ v: UInt64) { append(v) }
    mutating func append<T: FixedWidthInteger>(_ v: T) {
        for i in 0..<MemoryLayout<T>.size { data.append(UInt8(truncatingIfNeeded: v >> (8 * i))) }
    }
    mutating func bytes(_ b: [UInt8]) { data += b }
    mutating func pad(to alignment: Int) { while data.count % alignment != 0 { data.append(0) } }

    static func put<T: FixedWidthInteger>(_ v: T, at offset: Int, in data: inout [UInt8]) {
        for i in 0..<MemoryLayout<T>.size { data[offset + i] = UInt8(truncatingIfNeeded: v >> (8 * i)) }
    }

    static func get<T: FixedWidthInteger>(_: T.Type, at offset: Int, in data: [UInt8]) -> T {
        var v: T = 0
        for i in 0..<MemoryLayout<T>.size { v |= T(data[offset + i]) << (8 * i) }
        return v
    }
}

/// Builds ELF32/ELF64 x86 executables: header, program headers, one PT_NOTE with the given notes,
/// then one PT_LOAD per segment.
struct ELFBuilder {
    struct Note { var name: String; var type: UInt32; var desc: [UInt8] }
    struct Load { var paddr: UInt64; var data: [UInt8]; var memsz: UInt64 }

    var is64 = true
    var machine: UInt16? = nil
    var entry: UInt64 = 0x10_0000
    var notes: [Note] = []
    var loads: [Load] = []
    /// Extra program headers of a type the loader ignores (PT_GNU_STACK), placed first.
    var ignoredHeaders = 0

    static let ptLoad: UInt32 = 1
    static let ptNote: UInt32 = 4
    static let ptGNUStack: UInt32 = 0x6474_E551

    /// A "Xen" PHYS32_ENTRY (type 18) note, as Linux (8-byte desc) or an inmate (4-byte desc) emits it.
    static func pvhNote(_ entry: UInt64, descBytes: Int = 4) -> Note {
        var b = Bytes()
        if descBytes == 8 { b.u64(entry) } else { b.u32(UInt32(entry)) }
        return Note(name: "Xen", type: 18, desc: b.data)
    }
    static let linuxNote = Note(name: "Linux", type: 6, desc: Array("6.12.0".utf8) + [0])
    static let gnuNote = Note(name: "GNU", type: 3, desc: [UInt8](repeating: 0xAB, count: 20))

    var headerSize: Int { is64 ? 64 : 52 }
    var phentsize: Int { is64 ? 56 : 32 }
    var phnum: Int { ignoredHeaders + (notes.isEmpty ? 0 : 1) + loads.count }

    func noteBytes() -> [UInt8] {
        var b = Bytes()
        for n in notes {
            let name = Array(n.name.utf8) + [0]
            b.u32(UInt32(name.count)); b.u32(UInt32(n.desc.count)); b.u32(n.type)
            b.bytes(name); b.pad(to: 4)
            b.bytes(n.desc); b.pad(to: 4)
        }
        return b.data
    }

    /// Offsets of interesting parts, for truncation tests.
    struct Layout { var programHeaders: Int; var notes: Int; var noteSize: Int; var loads: [Int]; var total: Int }

    func layout() -> Layout {
        let ph = headerSize
        let notesAt = ph + phnum * phentsize
        let noteSize = noteBytes().count
        var offset = notesAt + noteSize
        var loadOffsets: [Int] = []
        for l in loads {
            while offset % 16 != 0 { offset += 1 }
            loadOffsets.append(offset)
            offset += l.data.count
        }
        return Layout(programHeaders: ph, notes: notesAt, noteSize: noteSize, loads: loadOffsets, total: offset)
    }

    func build() -> [UInt8] {
        let lay = layout()
        var b = Bytes()
        // e_ident
        b.bytes([0x7F, 0x45, 0x4C, 0x46, is64 ? 2 : 1, 1, 1, 0])
        b.bytes([UInt8](repeating: 0, count: 8))
        b.u16(2) // ET_EXEC
        b.u16(machine ?? (is64 ? 62 : 3))
        b.u32(1)
        if is64 {
            b.u64(entry); b.u64(UInt64(lay.programHeaders)); b.u64(0)
        } else {
            b.u32(UInt32(entry)); b.u32(UInt32(lay.programHeaders)); b.u32(0)
        }
        b.u32(0) // e_flags
        b.u16(UInt16(headerSize)); b.u16(UInt16(phentsize)); b.u16(UInt16(phnum))
        b.u16(0); b.u16(0); b.u16(0)
        precondition(b.data.count == headerSize)

        func header(type: UInt32, offset: Int, paddr: UInt64, filesz: Int, memsz: UInt64) {
            if is64 {
                b.u32(type); b.u32(7); b.u64(UInt64(offset)); b.u64(paddr | 0xFFFF_FFFF_8000_0000); b.u64(paddr)
                b.u64(UInt64(filesz)); b.u64(memsz); b.u64(0x1000)
            } else {
                b.u32(type); b.u32(UInt32(offset)); b.u32(UInt32(paddr)); b.u32(UInt32(paddr))
                b.u32(UInt32(filesz)); b.u32(UInt32(memsz)); b.u32(7); b.u32(0x1000)
            }
        }
        for _ in 0..<ignoredHeaders { header(type: Self.ptGNUStack, offset: 0, paddr: 0, filesz: 0, memsz: 0) }
        if !notes.isEmpty { header(type: Self.ptNote, offset: lay.notes, paddr: 0, filesz: lay.noteSize, memsz: 0) }
        for (l, offset) in zip(loads, lay.loads) {
            header(type: Self.ptLoad, offset: offset, paddr: l.paddr, filesz: l.data.count, memsz: l.memsz)
        }
        b.bytes(noteBytes())
        for (l, offset) in zip(loads, lay.loads) {
            while b.data.count < offset { b.u8(0) }
            b.bytes(l.data)
        }
        precondition(b.data.count == lay.total)
        return b.data
    }

    func image(_ path: String = "/images/vmlinux") -> ImageFile { ImageFile(path: path, bytes: build()) }

    /// A PVH inmate: 32-bit or 64-bit, code at 1 MiB with a bss, PVH entry 0x100040.
    static func pvhInmate(is64: Bool = true) -> ELFBuilder {
        var b = ELFBuilder()
        b.is64 = is64
        b.entry = 0x10_0000
        b.notes = [pvhNote(0x10_0040)]
        b.loads = [Load(paddr: 0x10_0000, data: (0..<256).map { UInt8(truncatingIfNeeded: $0 ^ 0x5A) }, memsz: 0x2000)]
        return b
    }

    /// A vmlinux-like 64-bit image: Linux note, no PVH note, startup_64 at 16 MiB.
    static func vmlinux(pvh: Bool = false) -> ELFBuilder {
        var b = ELFBuilder()
        b.entry = 0x100_0000
        b.notes = [linuxNote, gnuNote] + (pvh ? [pvhNote(0x100_0100, descBytes: 8)] : [])
        b.loads = [
            Load(paddr: 0x100_0000, data: [UInt8](repeating: 0x90, count: 0x300), memsz: 0x300),
            Load(paddr: 0x120_0000, data: [1, 2, 3, 4, 5, 6, 7, 8], memsz: 0x1_0000),
        ]
        return b
    }
}

/// Builds a minimal bzImage: boot sector with the setup header, setup sectors, protected-mode kernel.
struct BzImageBuilder {
    var setupSects: UInt8 = 4
    var protocolVersion: UInt16 = 0x020F
    var xloadflags: UInt16 = 0x1 | 0x2 // XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G
    var loadflags: UInt8 = 0x01
    var initrdAddrMax: UInt32 = 0x7FFF_FFFF
    var cmdlineSize: UInt32 = 2047
    var kernel: [UInt8] = (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
    /// syssize in 16-byte paragraphs; nil = derived from the kernel length.
    var syssize: UInt32? = nil
    /// The byte at 0x201 (jump offset); Linux's header ends at 0x202 + this.
    var jump: UInt8 = 0x66

    var kernelOffset: Int { (Int(setupSects == 0 ? 4 : setupSects) + 1) * 512 }

    func build() -> [UInt8] {
        var d = [UInt8](repeating: 0, count: kernelOffset)
        d[0x1F1] = setupSects
        Bytes.put(syssize ?? UInt32((kernel.count + 15) / 16), at: 0x1F4, in: &d)
        Bytes.put(UInt16(0xAA55), at: 0x1FE, in: &d)
        d[0x200] = 0xEB
        d[0x201] = jump
        d[0x202..<0x206] = ArraySlice("HdrS".utf8)
        Bytes.put(protocolVersion, at: 0x206, in: &d)
        d[0x211] = loadflags
        Bytes.put(UInt32(0x10_0000), at: 0x214, in: &d) // code32_start
        Bytes.put(initrdAddrMax, at: 0x22C, in: &d)
        Bytes.put(UInt32(0x20_0000), at: 0x230, in: &d) // kernel_alignment
        Bytes.put(xloadflags, at: 0x236, in: &d)
        Bytes.put(cmdlineSize, at: 0x238, in: &d)
        Bytes.put(UInt32(0x0123_4567), at: 0x260, in: &d) // init_size, inside the copied header
        return d + kernel
    }

    func image(_ path: String = "/images/bzImage") -> ImageFile { ImageFile(path: path, bytes: build()) }
}

extension BootError {
    /// The path a `truncated` error names, or nil for another case.
    var truncatedPath: String? {
        if case let .truncated(path, _) = self { return path }
        return nil
    }
    var truncatedWhat: String? {
        if case let .truncated(_, what) = self { return what }
        return nil
    }
}
