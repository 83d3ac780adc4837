import Testing
@testable import Boot
import Memory
import Foundation
import SystemPackage
import TestSupport

@Suite("ELFKernel parsing")
struct ELFParsingTests {
    @Test(arguments: [true, false])
    func pvhInmateParses(is64: Bool) throws {
        let builder = ELFBuilder.pvhInmate(is64: is64)
        let elf = try ELFKernel(parsing: builder.image())
        #expect(elf.is64Bit == is64)
        #expect(elf.entry == 0x10_0000)
        #expect(elf.pvhEntry == 0x10_0040)
        #expect(elf.noteNames == ["Xen"])
        #expect(elf.segments == [ELFKernel.Segment(fileOffset: builder.layout().loads[0], fileSize: 256,
                                                    physicalAddress: 0x10_0000, memorySize: 0x2000)])
    }

    @Test func vmlinuxParsesWithoutPVHEntry() throws {
        let builder = ELFBuilder.vmlinux()
        let elf = try ELFKernel(parsing: builder.image())
        #expect(elf.is64Bit)
        #expect(elf.entry == 0x100_0000)
        #expect(elf.pvhEntry == nil)
        #expect(elf.noteNames == ["Linux", "GNU"])
        let offsets = builder.layout().loads
        #expect(elf.segments == [
            .init(fileOffset: offsets[0], fileSize: 0x300, physicalAddress: 0x100_0000, memorySize: 0x300),
            .init(fileOffset: offsets[1], fileSize: 8, physicalAddress: 0x120_0000, memorySize: 0x1_0000),
        ])
    }

    @Test func eightByteXenNoteGivesTheEntry() throws {
        let elf = try ELFKernel(parsing: ELFBuilder.vmlinux(pvh: true).image())
        #expect(elf.pvhEntry == 0x100_0100)
        #expect(elf.noteNames == ["Linux", "GNU", "Xen"])
    }

    @Test func pvhEntryComesOnlyFromXenType18() throws {
        var b = ELFBuilder.pvhInmate()
        b.notes = [
            .init(name: "Xen", type: 1, desc: [0x11, 0x22, 0x33, 0x44]),        // XEN_ELFNOTE_INFO
            .init(name: "XenX", type: 18, desc: [0x40, 0x00, 0x10, 0x00]),      // wrong owner
            .init(name: "Linux", type: 18, desc: [0x40, 0x00, 0x10, 0x00]),     // wrong owner
        ]
        let elf = try ELFKernel(parsing: b.image())
        #expect(elf.pvhEntry == nil)
        #expect(elf.noteNames == ["Xen", "XenX", "Linux"])
    }

    @Test func ignoredProgramHeadersAreSkipped() throws {
        var b = ELFBuilder.pvhInmate()
        b.ignoredHeaders = 2
        let elf = try ELFKernel(parsing: b.image())
        #expect(elf.segments.count == 1)
        #expect(elf.segments[0].physicalAddress == 0x10_0000)
        #expect(elf.pvhEntry == 0x10_0040)
    }

    @Test func nonELFIsUnrecognised() {
        let image = ImageFile(path: "/k/notelf", bytes: Array("#!/bin/sh\necho hello\n".utf8) + [UInt8](repeating: 0, count: 100))
        #expect(!ELFKernel.isELF(image))
        #expect(throws: BootError.unrecognisedFormat(path: "/k/notelf")) { try ELFKernel(parsing: image) }
        // Fewer bytes than the magic.
        let tiny = ImageFile(path: "/k/tiny", bytes: [0x7F, 0x45, 0x4C])
        #expect(throws: BootError.unrecognisedFormat(path: "/k/tiny")) { try ELFKernel(parsing: tiny) }
    }

    @Test(arguments: [(true, UInt16(3)), (false, UInt16(62)), (true, UInt16(183)), (false, UInt16(40))])
    func wrongMachineIsUnsupported(is64: Bool, machine: UInt16) throws {
        var b = ELFBuilder.pvhInmate(is64: is64)
        b.machine = machine
        let error = try #require(throws: BootError.self) { try ELFKernel(parsing: b.image("/k/arm")) }
        guard case let .unsupported(path, reason) = error else { Issue.record("got \(error)"); return }
        #expect(path == "/k/arm")
        #expect(reason.contains("machine \(machine)"))
    }

    @Test func otherClassesAndBigEndianAreUnsupported() throws {
        var bytes = ELFBuilder.pvhInmate().build()
        bytes[4] = 3
        let classError = try #require(throws: BootError.self) { try ELFKernel(parsing: ImageFile(path: "/k/c3", bytes: bytes)) }
        #expect(classError == .unsupported(path: "/k/c3", reason: "ELF class 3"))

        bytes = ELFBuilder.pvhInmate().build()
        bytes[5] = 2
        let endianError = try #require(throws: BootError.self) { try ELFKernel(parsing: ImageFile(path: "/k/be", bytes: bytes)) }
        #expect(endianError == .unsupported(path: "/k/be", reason: "big-endian ELF"))
    }

    @Test func structuralProblemsAreUnsupported() throws {
        var noHeaders = ELFBuilder()
        noHeaders.notes = []
        #expect(throws: BootError.unsupported(path: "/images/vmlinux", reason: "no program headers")) {
            try ELFKernel(parsing: noHeaders.image())
        }

        var notesOnly = ELFBuilder()
        notesOnly.notes = [ELFBuilder.pvhNote(0x10_0000)]
        #expect(throws: BootError.unsupported(path: "/images/vmlinux", reason: "no loadable segments")) {
            try ELFKernel(parsing: notesOnly.image())
        }

        var shrunk = ELFBuilder.pvhInmate()
        shrunk.loads[0].memsz = 10 // less than the 256 bytes in the file
        #expect(throws: BootError.unsupported(path: "/images/vmlinux", reason: "segment 1 memsz < filesz")) {
            try ELFKernel(parsing: shrunk.image())
        }

        var bytes = ELFBuilder.pvhInmate().build()
        Bytes.put(UInt16(40), at: 54, in: &bytes) // e_phentsize smaller than an Elf64_Phdr
        #expect(throws: BootError.unsupported(path: "/k/ph", reason: "program header size 40")) {
            try ELFKernel(parsing: ImageFile(path: "/k/ph", bytes: bytes))
        }
    }

    @Test(arguments: [true, false])
    func everyTruncationIsReportedWithThePath(is64: Bool) throws {
        let full = ELFBuilder.pvhInmate(is64: is64).build()
        for length in 4..<full.count {
            let image = ImageFile(path: "/srv/vm/inmate-\(length)", bytes: Array(full.prefix(length)))
            let error = try #require(throws: BootError.self, "cut at \(length)") { try ELFKernel(parsing: image) }
            #expect(error.truncatedPath == "/srv/vm/inmate-\(length)", "cut at \(length): \(error)")
        }
        // And the full image parses.
        _ = try ELFKernel(parsing: ImageFile(path: "x", bytes: full))
    }

    @Test func truncationSaysWhatIsMissing() throws {
        let b = ELFBuilder.pvhInmate()
        let full = b.build()
        let lay = b.layout()
        func what(_ length: Int) throws -> String? {
            let error = try #require(throws: BootError.self) {
                try ELFKernel(parsing: ImageFile(path: "/k", bytes: Array(full.prefix(length))))
            }
            return error.truncatedWhat
        }
        #expect(try what(20) == "ELF header")
        #expect(try what(56) == "ELF64 header")
        #expect(try what(lay.programHeaders + 2) == "program headers (\(b.phnum) × \(b.phentsize) bytes at offset \(lay.programHeaders))")
        #expect(try what(lay.notes + 3) == "note segment 0")
        #expect(try what(lay.loads[0] + 100) == "segment 1 (256 bytes at file offset \(lay.loads[0]))")

        let b32 = ELFBuilder.pvhInmate(is64: false)
        let error32 = try #require(throws: BootError.self) {
            try ELFKernel(parsing: ImageFile(path: "/k32", bytes: Array(b32.build().prefix(40))))
        }
        #expect(error32 == .truncated(path: "/k32", what: "ELF header"))
    }

    @Test func malformedNoteIsTruncated() throws {
        let b = ELFBuilder.pvhInmate()
        var bytes = b.build()
        Bytes.put(UInt32(0x1000), at: b.layout().notes, in: &bytes) // namesz runs past the note segment
        #expect(throws: BootError.truncated(path: "/k/note", what: "ELF note")) {
            try ELFKernel(parsing: ImageFile(path: "/k/note", bytes: bytes))
        }
    }
}

@Suite("ELFKernel loading")
struct ELFLoadingTests {
    @Test func segmentsAreCopiedAndBSSIsZeroed() throws {
        let memory = try GuestMemory.standard(bytes: 4 << 20)
        try memory.fill(0xCC, count: 0x3000, at: GuestAddress(0x10_0000))
        let b = ELFBuilder.pvhInmate()
        let image = b.image()
        let elf = try ELFKernel(parsing: image)
        let top = try elf.load(image, into: memory)
        #expect(top == 0x10_2000)
        #expect(try memory.read(256, at: GuestAddress(0x10_0000)) == b.loads[0].data)
        #expect(try memory.read(0x2000 - 256, at: GuestAddress(0x10_0100)) == [UInt8](repeating: 0, count: 0x2000 - 256))
        // Past memsz nothing is touched.
        #expect(try memory.read(16, at: GuestAddress(0x10_2000)) == [UInt8](repeating: 0xCC, count: 16))
    }

    @Test func loadUsesPhysicalNotVirtualAddresses() throws {
        let memory = try GuestMemory.standard(bytes: 32 << 20)
        let b = ELFBuilder.vmlinux()
        let image = b.image()
        let top = try ELFKernel(parsing: image).load(image, into: memory)
        #expect(top == 0x121_0000)
        #expect(try memory.read(0x300, at: GuestAddress(0x100_0000)) == [UInt8](repeating: 0x90, count: 0x300))
        #expect(try memory.read(8, at: GuestAddress(0x120_0000)) == [1, 2, 3, 4, 5, 6, 7, 8])
    }

    @Test func segmentOutsideRAMDoesNotFit() throws {
        let memory = try GuestMemory.standard(bytes: 16 << 20)
        let image = ELFBuilder.vmlinux().image("/boot/vmlinux-big")
        #expect(throws: BootError.doesNotFit(path: "/boot/vmlinux-big", what: "segment 0", address: 0x100_0000, size: 0x300)) {
            try ELFKernel(parsing: image).load(image, into: memory)
        }
    }

    @Test func bssCrossingTheEndOfRAMDoesNotFit() throws {
        let memory = try GuestMemory.standard(bytes: 2 << 20)
        var b = ELFBuilder.pvhInmate()
        b.loads[0].memsz = 0x10_0001 // one byte past 2 MiB
        let image = b.image("/k")
        #expect(throws: BootError.doesNotFit(path: "/k", what: "segment 0", address: 0x10_0000, size: 0x10_0001)) {
            try ELFKernel(parsing: image).load(image, into: memory)
        }
    }
}

@Suite("ImageFile")
struct ImageFileTests {
    @Test func boundsCheckedFieldAccess() throws {
        let image = ImageFile(path: "/p", bytes: [0x01, 0x02, 0x03, 0x04, 0x05])
        #expect(try image.integer(UInt32.self, at: 0, "a") == 0x0403_0201)
        #expect(try image.integer(UInt32.self, at: 1, "a") == 0x0504_0302)
        #expect(try image.integer(UInt8.self, at: 4, "a") == 5)
        #expect(throws: BootError.truncated(path: "/p", what: "the field")) { try image.integer(UInt32.self, at: 2, "the field") }
        #expect(throws: BootError.truncated(path: "/p", what: "neg")) { try image.integer(UInt8.self, at: -1, "neg") }
        #expect(try Array(image.slice(1, 3, "s")) == [2, 3, 4])
        #expect(try image.slice(5, 0, "s").isEmpty)
        #expect(throws: BootError.truncated(path: "/p", what: "s")) { try image.slice(6, 0, "s") }
        #expect(throws: BootError.truncated(path: "/p", what: "s")) { try image.slice(2, 4, "s") }
        #expect(throws: BootError.truncated(path: "/p", what: "s")) { try image.slice(0, -1, "s") }
        #expect(throws: BootError.truncated(path: "/p", what: "s")) { try image.slice(-1, 1, "s") }
        #expect(throws: BootError.truncated(path: "/p", what: "s")) { try image.slice(1, Int.max, "s") }
    }

    /// The loader reads through the descriptor the VMM opened (docs/sandbox.md, "Guest files");
    /// the path only names the file. Finding the file (missing, symlinks, FIFOs) is
    /// GuestFileTests' part.
    @Test func readsThroughADescriptorAndNamesTheFile() throws {
        let dir = URL(fileURLWithPath: try makeTemporaryDirectory("rtvisor-boottests"))
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("kernel").path
        let content = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 * 13) }
        try Data(content).write(to: URL(fileURLWithPath: file))

        let fd = try FileDescriptor.open(file, .readOnly)
        defer { try? fd.close() }
        // Wherever the descriptor's position is, the whole file is read.
        _ = try fd.seek(offset: 4096, from: .start)
        let image = try ImageFile.read(from: fd, path: file)
        #expect(image.path == file)
        #expect(image.bytes == content)
        #expect(image.count == 10_000)

        let directory = try FileDescriptor.open(dir.path, .readOnly)
        defer { try? directory.close() }
        let dirError = try #require(throws: BootError.self) { try ImageFile.read(from: directory, path: dir.path) }
        #expect(dirError == .cannotRead(path: dir.path, reason: "not a regular file"))
        #expect(dirError.description == "\(dir.path): cannot read: not a regular file")
    }

    @Test func errorDescriptionsNameTheFile() {
        #expect(BootError.truncated(path: "/k", what: "ELF header").description == "/k: truncated image: ELF header extends past the end of the file")
        #expect(BootError.unrecognisedFormat(path: "/k").description == "/k: not an ELF vmlinux or a bzImage")
        #expect(BootError.unsupported(path: "/k", reason: "r").description == "/k: unsupported kernel: r")
        #expect(BootError.doesNotFit(path: "/i", what: "initrd", address: 0x1000, size: 5).description
            == "/i: initrd at 0x1000 (5 bytes) does not fit in guest RAM")
        #expect(BootError.commandLineTooLong(length: 10, max: 5).description == "kernel command line is 10 bytes, the limit is 5")
    }
}
