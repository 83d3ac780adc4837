import APIModels
import Config
import Daemon
import Foundation
import Testing
import TestSupport
import VMMInterface

/// A snapshot directory as rtvisord and the VMM leave it: definition.json (a kernel and one
/// disk), a valid state file, a sparse memory file with one page of data.
enum SnapshotFixture {
    struct Made {
        let directory: String
        let kernel: String
        let disk: String
        let header: SnapshotHeader
    }

    static func make(in base: String, name: String = "web", vcpus: Int = 1, memoryMiB: Int = 16, diskBytes: Int = 8192) throws -> Made {
        let kernel = try makeKernel(in: base)
        let disk = base + "/\(name)-disk.img"
        FileManager.default.createFile(atPath: disk, contents: Data(repeating: 0x11, count: diskBytes))
        let dir = base + "/snap-\(name)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let definition = "{\"name\": \"\(name)\", \"vcpus\": \(vcpus), \"memory_mib\": \(memoryMiB), \"kernel\": \"\(kernel)\", \"disks\": [{\"path\": \"\(disk)\"}], \"restart\": \"always\"}"
        try write(definition, to: SnapshotLayout.definition(in: dir))
        let header = SnapshotHeader(vm: name, createdAt: 1_800_000_000, vcpus: vcpus, memoryBytes: UInt64(memoryMiB) << 20, cpuTemplate: "emulating-kvm",
                                    cpuidDigest: "00000000deadbeef", definitionDigest: ContentDigest.fnv1a(Array(definition.utf8)), diskBytes: [UInt64(diskBytes)])
        let state = try SnapshotStateFile.encode(header: header, body: Array("{\"machine\": \"state\"}".utf8))
        FileManager.default.createFile(atPath: SnapshotLayout.state(in: dir), contents: Data(state))
        try writeSparse(SnapshotLayout.memory(in: dir), size: UInt64(memoryMiB) << 20)
        for file in [SnapshotLayout.definition(in: dir), SnapshotLayout.state(in: dir), SnapshotLayout.memory(in: dir)] { chmod(file, 0o600) }
        return Made(directory: dir, kernel: kernel, disk: disk, header: header)
    }

    /// `size` bytes of holes but for one 4 KiB page of data at 1 MiB.
    static func writeSparse(_ path: String, size: UInt64) throws {
        FileManager.default.createFile(atPath: path, contents: nil)
        let h = try #require(FileHandle(forWritingAtPath: path))
        try h.truncate(atOffset: size)
        try h.seek(toOffset: 1 << 20)
        try h.write(contentsOf: Data(repeating: 0xAA, count: 4096))
        try h.close()
    }

    static func flipByte(_ path: String, at offset: Int) throws {
        var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        bytes[offset] ^= 0xFF
        try bytes.write(to: URL(fileURLWithPath: path))
    }
}

/// The message of the error `body` throws (a `ControlError`'s is its text), nil if none.
func conflictMessage(_ body: () throws -> Void) -> String? {
    do { try body(); return nil } catch { return "\(error)" }
}

@Suite struct SnapshotDirectoryTests {
    @Test func defaultDirectoriesAreNamedByUTCTime() {
        // 2026-12-06 02:15:00 UTC
        let date = Date(timeIntervalSince1970: 1_796_523_300)
        #expect(SnapshotDirectory.timestamp(date) == "20261206T021500Z")
        #expect(SnapshotDirectory.defaultPath(root: "/var/lib/rtvisor/snapshots", vm: "web", at: date) == "/var/lib/rtvisor/snapshots/web/20261206T021500Z")
    }

    @Test func aDefaultSnapshotGetsAPrivateDirectoryAndEmptyFiles() throws {
        let root = try makeTemporaryDirectory("snapdir") + "/snapshots"
        let date = Date(timeIntervalSince1970: 1_796_523_300)
        let created = try SnapshotDirectory.createDefault(root: root, vm: "web", at: date, definition: Array("{\"name\":\"web\"}".utf8))
        created.closeFiles()
        #expect(created.directory == root + "/web/20261206T021500Z")
        var st = stat()
        #expect(stat(created.directory, &st) == 0 && st.st_mode & 0o7777 == 0o700 && st.st_uid == geteuid())
        #expect(stat(root + "/web", &st) == 0 && st.st_mode & 0o077 == 0, "the VM's snapshot directory is readable by others")
        #expect(try String(contentsOfFile: SnapshotLayout.definition(in: created.directory), encoding: .utf8) == "{\"name\":\"web\"}")
        for file in [SnapshotLayout.state(in: created.directory), SnapshotLayout.memory(in: created.directory)] {
            #expect(stat(file, &st) == 0 && st.st_size == 0 && st.st_mode & 0o7777 == 0o600, "\(file)")
        }
        // A second one within the same second does not collide.
        let second = try SnapshotDirectory.createDefault(root: root, vm: "web", at: date, definition: [])
        second.closeFiles()
        #expect(second.directory == root + "/web/20261206T021500Z-2")
    }

    @Test func theTargetMustBeNewAbsoluteAndInAnExistingDirectory() throws {
        let dir = try makeTemporaryDirectory("snapto")
        #expect(conflictMessage { try SnapshotDirectory.checkTarget("snaps/one") } == "to must be an absolute path, got \"snaps/one\"")
        #expect(conflictMessage { try SnapshotDirectory.checkTarget(dir + "/../etc/x") }?.contains("must not contain . or .. components") == true)
        #expect(conflictMessage { try SnapshotDirectory.checkTarget(dir) } == "\(dir) already exists: a snapshot goes into a new directory")
        #expect(conflictMessage { try SnapshotDirectory.checkTarget(dir + "/missing/one") } == "the parent directory \(dir)/missing of \(dir)/missing/one: No such file or directory")
        try write("x", to: dir + "/file")
        #expect(conflictMessage { try SnapshotDirectory.checkTarget(dir + "/file/one") } == "the parent \(dir)/file of \(dir)/file/one is not a directory")
        #expect(conflictMessage { try SnapshotDirectory.checkTarget(dir + "/one") } == nil)
        let created = try SnapshotDirectory.create(dir + "/one/", definition: [])
        created.closeFiles()
        #expect(created.directory == dir + "/one")
        // Created exclusively: a second snapshot into it is refused.
        #expect(conflictMessage { _ = try SnapshotDirectory.create(dir + "/one", definition: []) } == "\(dir)/one already exists: a snapshot goes into a new directory")
    }
}

@Suite struct SnapshotCatalogTests {
    /// A good snapshot, one whose state file is corrupt and one without a state file are all
    /// listed; the two bad ones with their errors.
    @Test func listingShowsGoodAndBrokenSnapshots() throws {
        let base = try makeTemporaryDirectory("catalog")
        let root = base + "/snapshots"
        let good = try SnapshotFixture.make(in: base)
        try FileManager.default.createDirectory(atPath: root + "/web", withIntermediateDirectories: true)
        try FileManager.default.moveItem(atPath: good.directory, toPath: root + "/web/20261206T021500Z")
        let corrupt = root + "/web/20261206T021600Z", missing = root + "/db/20261206T021700Z"
        try FileManager.default.copyItem(atPath: root + "/web/20261206T021500Z", toPath: corrupt)
        try SnapshotFixture.flipByte(SnapshotLayout.state(in: corrupt), at: 0)
        try FileManager.default.createDirectory(atPath: missing, withIntermediateDirectories: true)
        try write("{}", to: SnapshotLayout.definition(in: missing))

        let all = SnapshotCatalog.list(root: root)
        #expect(all.map(\.directory) == [missing, root + "/web/20261206T021500Z", corrupt])
        let ok = all[1]
        #expect(ok.error == nil && ok.vm == "web" && ok.vcpus == 1 && ok.memoryMiB == 16 && ok.createdAt == 1_800_000_000)
        #expect(ok.definitionDigest == good.header.definitionDigest && ok.rtvisorVersion == RtvisorRelease.version && ok.formatVersion == SnapshotStateFile.formatVersion)
        // The sparse memory file: 16 MiB apparent, a page or so on disk.
        #expect(ok.apparentBytes > 16 << 20 && ok.bytesOnDisk < 1 << 20, "\(ok.bytesOnDisk) bytes on disk of \(ok.apparentBytes)")
        #expect(all[2].vm == nil && all[2].error?.contains("not an rtvisor snapshot state file (no RTVSNAP magic)") == true, "\(all[2])")
        #expect(all[0].error?.contains("\(SnapshotLayout.state(in: missing)): No such file or directory") == true, "\(all[0])")
        #expect(SnapshotCatalog.list(root: root, vm: "db").map(\.directory) == [missing])
        #expect(SnapshotCatalog.list(root: root, vm: "nope").isEmpty)
        #expect(SnapshotCatalog.list(root: base + "/none").isEmpty)
    }

    @Test func aMissingMemoryFileIsNamed() throws {
        let made = try SnapshotFixture.make(in: try makeTemporaryDirectory("catalog2"))
        try FileManager.default.removeItem(atPath: SnapshotLayout.memory(in: made.directory))
        #expect(SnapshotCatalog.info(directory: made.directory).error == "missing: memory")
    }
}

@Suite struct RestoreCheckTests {
    @Test func aGoodSnapshotPassesAndItsDefinitionIsRenamed() throws {
        let made = try SnapshotFixture.make(in: try makeTemporaryDirectory("restore"))
        let files = try SnapshotDirectory.read(made.directory)
        let (json, definition) = try SnapshotDirectory.definition(of: files, renamedTo: "copy")
        #expect(definition.name == "copy" && json.name == "copy" && definition.disks.map(\.path) == [made.disk])
        #expect(try SnapshotDirectory.verify(files, against: definition) == made.header)
        #expect(try SnapshotDirectory.prepare(made.directory, renamedTo: nil).definition.name == "web")
    }

    @Test func theDefinitionsErrorsNameFileAndField() throws {
        let made = try SnapshotFixture.make(in: try makeTemporaryDirectory("restore-def"))
        let file = SnapshotLayout.definition(in: made.directory)
        func definition(renamedTo name: String?) throws { _ = try SnapshotDirectory.prepare(made.directory, renamedTo: name) }
        #expect(conflictMessage { try definition(renamedTo: "bad name") }
            == "\(file): $.name: must be 1–64 characters of letters, digits, '-' and '_', got \"bad name\"")
        try write("{\"name\": \"web\", \"memory_mib\": 16, \"kernel\": \"\(made.kernel)\", \"vcpuz\": 1}", to: file)
        #expect(conflictMessage { try definition(renamedTo: nil) } == "\(file): $.vcpuz: unknown key (did you mean \"vcpus\"?)")
        // The problems travel as data too (the API's Error.problems).
        #expect(throws: ControlError.invalidDefinition("\(file): $.vcpuz: unknown key (did you mean \"vcpus\"?)",
                                                       [DefinitionProblem(file: file, path: "$.vcpuz", reason: "unknown key (did you mean \"vcpus\"?)")])) {
            try definition(renamedTo: nil)
        }
        try write("{\"name\": ", to: file)
        #expect(conflictMessage { try definition(renamedTo: nil) }?.hasPrefix("\(file): $: invalid JSON") == true)
        try FileManager.default.removeItem(atPath: file)
        #expect(conflictMessage { try definition(renamedTo: nil) } == "\(file): No such file or directory (not a complete snapshot)")
    }

    @Test func theStateFileAndSizesAreCheckedBeforeAnythingStarts() throws {
        let made = try SnapshotFixture.make(in: try makeTemporaryDirectory("restore-state"), vcpus: 2)
        let (_, definition) = try SnapshotDirectory.prepare(made.directory, renamedTo: nil)
        func verify(_ d: VMDefinition) throws { _ = try SnapshotDirectory.verify(try SnapshotDirectory.read(made.directory), against: d) }
        var other = definition
        other.vcpus = 1
        #expect(conflictMessage { try verify(other) } == "snapshot \(made.directory): saved with 2 vCPUs, the definition has 1")
        other = definition
        other.memoryMiB = 32
        #expect(conflictMessage { try verify(other) } == "snapshot \(made.directory): saved with 16 MiB of memory, the definition has 32 MiB")
        // A disk that grew.
        try Data(repeating: 0, count: 9000).write(to: URL(fileURLWithPath: made.disk))
        #expect(conflictMessage { try verify(definition) }?.contains("$.disks[0] \(made.disk) has 9000 bytes, 8192 when the VM was saved") == true)
        try Data(repeating: 0, count: 8192).write(to: URL(fileURLWithPath: made.disk))
        // A memory file of another size.
        try SnapshotFixture.writeSparse(SnapshotLayout.memory(in: made.directory), size: 8 << 20)
        #expect(conflictMessage { try verify(definition) }?.contains("has 8388608 bytes, the VM's memory is 16777216") == true)
        try SnapshotFixture.writeSparse(SnapshotLayout.memory(in: made.directory), size: 16 << 20)
        #expect(conflictMessage { try verify(definition) } == nil)
        // One altered byte in the machine state: the checksum.
        let state = SnapshotLayout.state(in: made.directory)
        let size = try #require(try FileManager.default.attributesOfItem(atPath: state)[.size] as? Int)
        try SnapshotFixture.flipByte(state, at: size - 8)
        #expect(conflictMessage { try verify(definition) }?.contains("checksum mismatch") == true)
        // Cut short.
        let bytes = try Data(contentsOf: URL(fileURLWithPath: state))
        try bytes.prefix(bytes.count - 10).write(to: URL(fileURLWithPath: state))
        #expect(conflictMessage { try verify(definition) }?.contains("truncated") == true)
    }

    /// A restore runs the snapshot's definition as root: only root's, unwritable snapshots.
    @Test(.enabled(if: geteuid() == 0, "chown needs root")) func onlyRootsSnapshotsAreRestored() throws {
        let made = try SnapshotFixture.make(in: try makeTemporaryDirectory("restore-trust"))
        let dir = made.directory
        #expect(conflictMessage { try SnapshotDirectory.checkTrusted(dir + "-nope") } == "no snapshot at \(dir)-nope: No such file or directory")
        chmod(dir, 0o777)
        #expect(conflictMessage { try SnapshotDirectory.checkTrusted(dir) }?.contains("\(dir) is writable by its group or others (mode 777)") == true)
        chmod(dir, 0o700)
        let definition = SnapshotLayout.definition(in: dir)
        #expect(chown(definition, 65534, 65534) == 0)
        #expect(conflictMessage { try SnapshotDirectory.checkTrusted(dir) }?.hasPrefix("\(definition) belongs to uid 65534") == true)
        #expect(chown(definition, 0, 0) == 0)
        try SnapshotDirectory.checkTrusted(dir, owners: [0])
        #expect(conflictMessage { try SnapshotDirectory.checkTrusted(dir, owners: [1]) } != nil)
        // A symlink in the file's place.
        let memory = SnapshotLayout.memory(in: dir)
        try FileManager.default.moveItem(atPath: memory, toPath: dir + "/elsewhere")
        try FileManager.default.createSymbolicLink(atPath: memory, withDestinationPath: dir + "/elsewhere")
        #expect(conflictMessage { try SnapshotDirectory.checkTrusted(dir) } == "\(memory) is a symbolic link: a snapshot is restored only from its real directory and files")
        try FileManager.default.removeItem(atPath: memory)
        #expect(conflictMessage { try SnapshotDirectory.checkTrusted(dir) } == "\(memory): No such file or directory (not a complete snapshot)")
        // The directory itself a symlink to a good snapshot: refused too.
        try FileManager.default.createSymbolicLink(atPath: dir + "-link", withDestinationPath: dir)
        #expect(conflictMessage { try SnapshotDirectory.checkTrusted(dir + "-link") } == "\(dir)-link is a symbolic link: a snapshot is restored only from its real directory and files")
    }
}
