import Memory

/// A parsed ELF kernel (`vmlinux` or a test inmate): its loadable segments and entry points.
public struct ELFKernel: Sendable {
    public struct Segment: Sendable, Equatable {
        public let fileOffset: Int
        public let fileSize: Int
        public let physicalAddress: UInt64
        public let memorySize: UInt64
    }

    public let segments: [Segment]
    /// `e_entry`; for vmlinux this is the physical address of `startup_64`.
    public let entry: UInt64
    /// The 32-bit entry from the PVH note (XEN_ELFNOTE_PHYS32_ENTRY), if the image has one.
    public let pvhEntry: UInt64?
    public let is64Bit: Bool
    /// Owners of the image's ELF notes ("Xen", "Linux", "GNU", …).
    public let noteNames: Set<String>

    static let elfMagic: [UInt8] = [0x7F, 0x45, 0x4C, 0x46]
    static let ptLoad: UInt32 = 1
    static let ptNote: UInt32 = 4
    static let xenElfNotePhys32Entry: UInt32 = 18
    static let emX86_64: UInt16 = 62
    static let em386: UInt16 = 3

    public static func isELF(_ image: ImageFile) -> Bool { image.bytes.starts(with: elfMagic) }

    public init(parsing image: ImageFile) throws {
        let p = image.path
        guard Self.isELF(image) else { throw BootError.unrecognisedFormat(path: p) }
        _ = try image.slice(0, 52, "ELF header")
        let elfClass = image.bytes[4]
        guard elfClass == 1 || elfClass == 2 else { throw BootError.unsupported(path: p, reason: "ELF class \(elfClass)") }
        guard image.bytes[5] == 1 else { throw BootError.unsupported(path: p, reason: "big-endian ELF") }
        let is64 = elfClass == 2
        let machine = try image.integer(UInt16.self, at: 18, "e_machine")
        guard machine == (is64 ? Self.emX86_64 : Self.em386) else {
            throw BootError.unsupported(path: p, reason: "ELF machine \(machine) is not x86")
        }
        let entry: UInt64
        let phoff: Int, phentsize: Int, phnum: Int
        if is64 {
            _ = try image.slice(0, 64, "ELF64 header")
            entry = try image.integer(UInt64.self, at: 24, "e_entry")
            phoff = Int(clamping: try image.integer(UInt64.self, at: 32, "e_phoff"))
            phentsize = Int(try image.integer(UInt16.self, at: 54, "e_phentsize"))
            phnum = Int(try image.integer(UInt16.self, at: 56, "e_phnum"))
        } else {
            entry = UInt64(try image.integer(UInt32.self, at: 24, "e_entry"))
            phoff = Int(try image.integer(UInt32.self, at: 28, "e_phoff"))
            phentsize = Int(try image.integer(UInt16.self, at: 42, "e_phentsize"))
            phnum = Int(try image.integer(UInt16.self, at: 44, "e_phnum"))
        }
        guard phentsize >= (is64 ? 56 : 32) else { throw BootError.unsupported(path: p, reason: "program header size \(phentsize)") }
        guard phnum > 0 else { throw BootError.unsupported(path: p, reason: "no program headers") }
        // phnum and phentsize are 16-bit, so this product cannot overflow; phoff is checked first.
        guard phoff >= 0, phoff <= image.count, phnum * phentsize <= image.count - phoff else {
            throw BootError.truncated(path: p, what: "program headers (\(phnum) × \(phentsize) bytes at offset \(phoff))")
        }

        var segments: [Segment] = []
        var pvh: UInt64? = nil
        var noteNames = Set<String>()
        for i in 0..<phnum {
            let h = phoff + i * phentsize
            let type = try image.integer(UInt32.self, at: h, "program header \(i)")
            let offset: Int, filesz: Int, paddr: UInt64, memsz: UInt64
            if is64 {
                offset = Int(clamping: try image.integer(UInt64.self, at: h + 8, "program header \(i)"))
                paddr = try image.integer(UInt64.self, at: h + 24, "program header \(i)")
                filesz = Int(clamping: try image.integer(UInt64.self, at: h + 32, "program header \(i)"))
                memsz = try image.integer(UInt64.self, at: h + 40, "program header \(i)")
            } else {
                offset = Int(try image.integer(UInt32.self, at: h + 4, "program header \(i)"))
                paddr = UInt64(try image.integer(UInt32.self, at: h + 12, "program header \(i)"))
                filesz = Int(try image.integer(UInt32.self, at: h + 16, "program header \(i)"))
                memsz = UInt64(try image.integer(UInt32.self, at: h + 20, "program header \(i)"))
            }
            switch type {
            case Self.ptLoad:
                _ = try image.slice(offset, filesz, "segment \(i) (\(filesz) bytes at file offset \(offset))")
                guard memsz >= UInt64(filesz) else { throw BootError.unsupported(path: p, reason: "segment \(i) memsz < filesz") }
                segments.append(Segment(fileOffset: offset, fileSize: filesz, physicalAddress: paddr, memorySize: memsz))
            case Self.ptNote:
                let notes = try image.slice(offset, filesz, "note segment \(i)")
                let found = try Self.scanNotes(notes, image: image)
                if let e = found.pvhEntry { pvh = e }
                noteNames.formUnion(found.names)
            default:
                continue
            }
        }
        guard !segments.isEmpty else { throw BootError.unsupported(path: p, reason: "no loadable segments") }
        self.segments = segments
        self.entry = entry
        self.pvhEntry = pvh
        self.is64Bit = is64
        self.noteNames = noteNames
    }

    /// Walks ELF notes (namesz, descsz, type, name, desc; each padded to 4 bytes).
    static func scanNotes(_ notes: ArraySlice<UInt8>, image: ImageFile) throws -> (pvhEntry: UInt64?, names: Set<String>) {
        var names = Set<String>()
        var pvh: UInt64? = nil
        var off = notes.startIndex
        let end = notes.endIndex
        while off + 12 <= end {
            let namesz = Int(try image.integer(UInt32.self, at: off, "note"))
            let descsz = Int(try image.integer(UInt32.self, at: off + 4, "note"))
            let type = try image.integer(UInt32.self, at: off + 8, "note")
            let nameOff = off + 12
            let descOff = nameOff + ((namesz + 3) & ~3)
            let next = descOff + ((descsz + 3) & ~3)
            guard namesz >= 0, descsz >= 0, next <= end, next > off else {
                throw BootError.truncated(path: image.path, what: "ELF note")
            }
            let name = image.bytes[nameOff..<(nameOff + namesz)].prefix { $0 != 0 }
            names.insert(String(decoding: name, as: UTF8.self))
            if Array(name) == Array("Xen".utf8), type == xenElfNotePhys32Entry {
                if descsz >= 8 { pvh = try image.integer(UInt64.self, at: descOff, "PVH entry note") }
                else if descsz >= 4 { pvh = UInt64(try image.integer(UInt32.self, at: descOff, "PVH entry note")) }
            }
            off = next
        }
        return (pvh, names)
    }

    /// Copies the segments into guest memory; returns the first byte after the highest segment.
    @discardableResult
    public func load(_ image: ImageFile, into memory: GuestMemory) throws -> UInt64 {
        var top: UInt64 = 0
        for (i, s) in segments.enumerated() {
            guard memory.contains(GuestAddress(s.physicalAddress), length: s.memorySize) else {
                throw BootError.doesNotFit(path: image.path, what: "segment \(i)", address: s.physicalAddress, size: s.memorySize)
            }
            let data = try image.slice(s.fileOffset, s.fileSize, "segment \(i)")
            try data.withUnsafeBytes { try memory.write($0, at: GuestAddress(s.physicalAddress)) }
            if s.memorySize > UInt64(s.fileSize) {
                try memory.fill(0, count: Int(s.memorySize) - s.fileSize, at: GuestAddress(s.physicalAddress + UInt64(s.fileSize)))
            }
            top = max(top, s.physicalAddress + s.memorySize)
        }
        return top
    }
}
