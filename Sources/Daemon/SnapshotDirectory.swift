import APIModels
import Config
import Foundation
import Posix
import SystemPackage
import VMMInterface

/// The daemon's side of a snapshot directory (docs/snapshot.md, `SnapshotLayout`): naming and
/// creating one for a snapshot, and checking one before a restore or clone starts anything. The
/// VMM checks everything again when it resumes; these checks exist so that a bad snapshot is
/// refused with its reason before any definition is installed or any process started.
public enum SnapshotDirectory {
    /// `20261206T021500Z`: UTC, sortable, no characters a shell or a path would mind.
    public static func timestamp(_ date: Date) -> String {
        var t = time_t(date.timeIntervalSince1970)
        var parts = tm()
        gmtime_r(&t, &parts)
        return String(format: "%04d%02d%02dT%02d%02d%02dZ", Int(parts.tm_year) + 1900, Int(parts.tm_mon) + 1, Int(parts.tm_mday),
                      Int(parts.tm_hour), Int(parts.tm_min), Int(parts.tm_sec))
    }

    /// Where a snapshot of `vm` taken at `date` goes by default: `ROOT/VM/TIMESTAMP`.
    public static func defaultPath(root: String, vm: String, at date: Date) -> String {
        root + "/" + vm + "/" + timestamp(date)
    }

    /// A path from an API request (`to`, a restore's or clone's directory): absolute, without
    /// `.`/`..` components or NUL, at most PATH_MAX. The API front checks it (400) and so does the
    /// daemon, which does not trust the front.
    public static func pathProblem(_ path: String, field: String) -> String? {
        guard path.hasPrefix("/") else { return "\(field) must be an absolute path, got \"\(path)\"" }
        guard path.utf8.count < 4096, !path.utf8.contains(0) else { return "\(field) is not a usable path" }
        let parts = path.split(separator: "/")
        guard !parts.isEmpty else { return "\(field) must name a directory below /, got \"\(path)\"" }
        if parts.contains(where: { $0 == "." || $0 == ".." }) { return "\(field) must not contain . or .. components, got \"\(path)\"" }
        return nil
    }

    /// `to` for a snapshot: a valid path that does not exist yet, in a directory that does.
    public static func checkTarget(_ path: String) throws(ControlError) {
        if let problem = pathProblem(path, field: "to") { throw .conflict(problem) }
        let trimmed = path.hasSuffix("/") ? String(path.dropLast()) : path
        var st = stat()
        if lstat(trimmed, &st) == 0 { throw .conflict("\(trimmed) already exists: a snapshot goes into a new directory") }
        let parent = parentDirectory(trimmed)
        guard stat(parent, &st) == 0 else { throw .conflict("the parent directory \(parent) of \(trimmed): \(errnoMessage())") }
        guard st.st_mode & S_IFMT == S_IFDIR else { throw .conflict("the parent \(parent) of \(trimmed) is not a directory") }
    }

    static func parentDirectory(_ path: String) -> String {
        guard let slash = path.lastIndex(of: "/"), slash != path.startIndex else { return "/" }
        return String(path[..<slash])
    }

    /// A new snapshot directory and its files, created for the VMM (which opens no path).
    public struct Created: Sendable {
        public let directory: String
        public let state: FileDescriptor
        public let memory: FileDescriptor
        public func closeFiles() { try? state.close(); try? memory.close() }
    }

    /// Creates `directory` (mode 0700: it will hold guest memory) in its existing parent, with
    /// `definition.json` written and `state` and `memory` created empty (O_EXCL, 0600), all
    /// relative to descriptors of the directories involved, never following a symlink a
    /// non-root user could put in their place. Nothing is left behind on failure.
    public static func create(_ directory: String, definition: [UInt8]) throws(ControlError) -> Created {
        let trimmed = directory.hasSuffix("/") ? String(directory.dropLast()) : directory
        let parent = parentDirectory(trimmed), name = String(trimmed[trimmed.index(after: trimmed.lastIndex(of: "/")!)...])
        let parentFD = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard parentFD >= 0 else { throw .failed("cannot open \(parent): \(errnoMessage())") }
        defer { close(parentFD) }
        guard mkdirat(parentFD, name, 0o700) == 0 else {
            throw errno == EEXIST ? .conflict("\(trimmed) already exists: a snapshot goes into a new directory")
                                  : .failed("cannot create \(trimmed): \(errnoMessage())")
        }
        do throws(ControlError) {
            let dirFD = openat(parentFD, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            guard dirFD >= 0 else { throw ControlError.failed("cannot open \(trimmed): \(errnoMessage())") }
            defer { close(dirFD) }
            // The umask may have taken bits away; none may be added.
            fchmod(dirFD, 0o700)
            func file(_ path: String) throws(ControlError) -> FileDescriptor {
                let fd = openat(dirFD, String(path.split(separator: "/").last!), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
                guard fd >= 0 else { throw .failed("cannot create \(path): \(errnoMessage())") }
                return FileDescriptor(rawValue: fd)
            }
            let definitionFile = try file(SnapshotLayout.definition(in: trimmed))
            do { try writeAll(definitionFile.rawValue, definition) } catch {
                try? definitionFile.close()
                throw ControlError.failed("cannot write \(SnapshotLayout.definition(in: trimmed)): \(error)")
            }
            try? definitionFile.close()
            let state = try file(SnapshotLayout.state(in: trimmed))
            do { return Created(directory: trimmed, state: state, memory: try file(SnapshotLayout.memory(in: trimmed))) } catch {
                try? state.close()
                throw error
            }
        } catch {
            remove(trimmed)
            throw error
        }
    }

    /// The default place for `vm`'s snapshot: `ROOT/VM/TIMESTAMP` (`-2`, `-3`… when two are
    /// taken within a second), the directories above it created mode 0700.
    public static func createDefault(root: String, vm: String, at date: Date, definition: [UInt8]) throws(ControlError) -> Created {
        let parent = root + "/" + vm
        do { try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700]) } catch {
            throw .failed("cannot create \(parent): \(error.localizedDescription)")
        }
        let base = defaultPath(root: root, vm: vm, at: date)
        for attempt in 1...100 {
            do { return try create(attempt == 1 ? base : "\(base)-\(attempt)", definition: definition) } catch {
                if case .conflict = error { continue }
                throw error
            }
        }
        throw .failed("cannot find a free name for a snapshot in \(parent)")
    }

    public static func remove(_ directory: String) { try? FileManager.default.removeItem(atPath: directory) }

    /// Who may own a snapshot the daemon restores: root and the daemon's own uid.
    public static var trustedOwners: Set<uid_t> { [0, geteuid()] }

    /// A snapshot's files as a restore or clone reads them: the definition and the state file
    /// whole, the memory file's size.
    public struct Files: Sendable {
        public let directory: String
        public let definition: [UInt8]
        public let state: [UInt8]
        public let memoryBytes: UInt64
    }

    /// State files are small (registers and device state); anything this large is not one.
    static let maxStateBytes = 256 << 20
    /// Definitions are a few hundred bytes; the API takes at most 1 MiB of anything.
    static let maxDefinitionBytes = 1 << 20

    /// Reads a snapshot for a restore or clone, which runs its definition as root, disks and
    /// all: the directory and its three files must be root's (or the daemon's) and writable by
    /// nobody else, so a member of the API group cannot have a VM started that writes a file of
    /// their choosing (docs/daemon.md, "Snapshots, restore and clones"). rtvisord's own snapshots
    /// are (mode 0700, files 0600). The files are opened through one descriptor of the directory,
    /// never following a symlink, and checked on the descriptors they are read from: a directory
    /// swapped in after the check is not the one read.
    public static func read(_ directory: String, owners: Set<uid_t> = trustedOwners) throws(ControlError) -> Files {
        if let problem = pathProblem(directory, field: "the snapshot directory") { throw .conflict(problem) }
        let trimmed = directory.hasSuffix("/") ? String(directory.dropLast()) : directory
        let dirFD = open(trimmed, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard dirFD >= 0 else {
            let e = errno
            if e == ENOENT { throw .notFound("no snapshot at \(trimmed): No such file or directory") }
            // O_DIRECTORY answers a symlink with ENOTDIR before O_NOFOLLOW's ELOOP.
            var st = stat()
            let link = e == ELOOP || (lstat(trimmed, &st) == 0 && st.st_mode & S_IFMT == S_IFLNK)
            throw .conflict(link ? "\(trimmed) is a symbolic link: a snapshot is restored only from its real directory and files"
                                 : e == ENOTDIR ? "\(trimmed) is not a directory" : "\(trimmed): \(errnoMessage(e))")
        }
        defer { close(dirFD) }
        try check(dirFD, trimmed, directory: true, owners: owners)
        func file(_ path: String, limit: Int?) throws(ControlError) -> (bytes: [UInt8], size: UInt64) {
            let name = String(path.split(separator: "/").last!)
            // O_NONBLOCK: a FIFO in a file's place must not hang the open.
            let fd = openat(dirFD, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
            guard fd >= 0 else {
                let e = errno
                throw .conflict(e == ELOOP ? "\(path) is a symbolic link: a snapshot is restored only from its real directory and files"
                                          : "\(path): \(errnoMessage(e)) (not a complete snapshot)")
            }
            defer { close(fd) }
            let size = try check(fd, path, directory: false, owners: owners)
            guard let limit else { return ([], size) }
            guard size <= UInt64(limit) else { throw .conflict("\(path): \(size) bytes is more than such a file holds (at most \(limit))") }
            do { return (try readToEnd(fd), size) } catch { throw .conflict("\(path): \(error)") }
        }
        let definition = try file(SnapshotLayout.definition(in: trimmed), limit: maxDefinitionBytes).bytes
        let state = try file(SnapshotLayout.state(in: trimmed), limit: maxStateBytes).bytes
        let memory = try file(SnapshotLayout.memory(in: trimmed), limit: nil).size
        return Files(directory: trimmed, definition: definition, state: state, memoryBytes: memory)
    }

    /// Type, owner and mode of an open snapshot directory or file; its size.
    @discardableResult
    static func check(_ fd: Int32, _ path: String, directory isDirectory: Bool, owners: Set<uid_t>) throws(ControlError) -> UInt64 {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw .conflict("\(path): \(errnoMessage())") }
        guard st.st_mode & S_IFMT == (isDirectory ? S_IFDIR : S_IFREG) else { throw .conflict("\(path) is not a \(isDirectory ? "directory" : "regular file")") }
        guard owners.contains(st.st_uid) else {
            throw .conflict("\(path) belongs to uid \(st.st_uid): a snapshot is restored only from root's files (its definition decides which disks the VM writes)")
        }
        guard st.st_mode & 0o022 == 0 else {
            throw .conflict("\(path) is writable by its group or others (mode \(String(st.st_mode & 0o7777, radix: 8))): a snapshot is restored only from files only root can change")
        }
        return UInt64(st.st_size)
    }

    /// The checks of `read` without the contents (tests, and a quick look).
    public static func checkTrusted(_ directory: String, owners: Set<uid_t> = trustedOwners) throws(ControlError) {
        _ = try read(directory, owners: owners)
    }

    /// The snapshot's definition for a restore: relative paths made absolute against the
    /// snapshot directory, renamed to `name` if given, validated with its files. Errors name the
    /// file and JSON path.
    public static func definition(of files: Files, renamedTo name: String?) throws(ControlError) -> (json: DefinitionJSON, definition: VMDefinition) {
        let file = SnapshotLayout.definition(in: files.directory)
        do {
            var json = try DefinitionJSON(files.definition, file: file)
            json.makePathsAbsolute(base: files.directory)
            if let name { json.rename(to: name) }
            return (json, try json.validated(base: files.directory))
        } catch let e as DefinitionError {
            throw .invalid(e)
        } catch {
            throw .conflict("\(file): \(error)")
        }
    }

    /// What the VMM would refuse first, checked here so nothing starts: a state file that is not
    /// whole (checksum, truncation, version), a vCPU count or memory size other than the
    /// definition's, a memory file of the wrong size, a disk whose size changed, passthrough.
    public static func verify(_ files: Files, against definition: VMDefinition) throws(ControlError) -> SnapshotHeader {
        let directory = files.directory
        let header: SnapshotHeader
        do { header = try SnapshotStateFile.decode(files.state, file: SnapshotLayout.state(in: directory)).header } catch {
            throw .conflict("snapshot \(directory): \(error)")
        }
        func refuse(_ why: String) -> ControlError { .conflict("snapshot \(directory): \(why)") }
        guard definition.passthrough.isEmpty else { throw refuse("a VM with passthrough devices cannot be restored (their state lives in the host device)") }
        guard header.vcpus == definition.vcpus else { throw refuse("saved with \(header.vcpus) vCPUs, the definition has \(definition.vcpus)") }
        let ram = UInt64(definition.memoryMiB) << 20
        guard header.memoryBytes == ram else {
            throw refuse("saved with \(header.memoryBytes >> 20) MiB of memory, the definition has \(definition.memoryMiB) MiB")
        }
        guard files.memoryBytes == ram else {
            throw refuse("\(SnapshotLayout.memory(in: directory)) has \(files.memoryBytes) bytes, the VM's memory is \(ram) (\(definition.memoryMiB) MiB): it is not this snapshot's memory file")
        }
        guard header.diskBytes.count == definition.disks.count else {
            throw refuse("saved with \(header.diskBytes.count) disks, the definition has \(definition.disks.count)")
        }
        var st = stat()
        for (i, (saved, disk)) in zip(header.diskBytes, definition.disks).enumerated() {
            guard stat(disk.path, &st) == 0 else { throw refuse("$.disks[\(i)].path \(disk.path): \(errnoMessage())") }
            // A block device's size is the VMM's to check (it opens it anyway).
            if st.st_mode & S_IFMT == S_IFREG && UInt64(st.st_size) != saved {
                throw refuse("$.disks[\(i)] \(disk.path) has \(st.st_size) bytes, \(saved) when the VM was saved: the guest's view of it would be wrong")
            }
        }
        return header
    }

    /// `read`, `definition` and `verify`: everything a restore or clone checks before it installs
    /// or starts anything.
    public static func prepare(_ directory: String, renamedTo name: String?) throws(ControlError) -> (json: DefinitionJSON, definition: VMDefinition) {
        let files = try read(directory)
        let loaded = try definition(of: files, renamedTo: name)
        _ = try verify(files, against: loaded.definition)
        return loaded
    }
}
