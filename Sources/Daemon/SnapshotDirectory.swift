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

    /// A restore or clone runs the snapshot's definition as root, disks and all: the directory
    /// and its three files must be root's (or the daemon's) and writable by nobody else, so a
    /// member of the API group cannot have a VM started that writes a file of their choosing
    /// (docs/daemon.md, "Snapshots, restore and clones"). rtvisord's own snapshots are (mode 0700, files 0600).
    public static func checkTrusted(_ directory: String, owners: Set<uid_t> = trustedOwners) throws(ControlError) {
        if let problem = pathProblem(directory, field: "the snapshot directory") { throw .conflict(problem) }
        func check(_ path: String, directory isDirectory: Bool) throws(ControlError) {
            var st = stat()
            guard lstat(path, &st) == 0 else {
                let e = errno
                if isDirectory && e == ENOENT { throw .notFound("no snapshot at \(path): No such file or directory") }
                throw .conflict("\(path): \(errnoMessage(e))" + (isDirectory ? "" : " (not a complete snapshot)"))
            }
            let type = st.st_mode & S_IFMT
            if type == S_IFLNK { throw .conflict("\(path) is a symbolic link: a snapshot is restored only from its real directory and files") }
            guard type == (isDirectory ? S_IFDIR : S_IFREG) else { throw .conflict("\(path) is not a \(isDirectory ? "directory" : "regular file")") }
            guard owners.contains(st.st_uid) else {
                throw .conflict("\(path) belongs to uid \(st.st_uid): a snapshot is restored only from root's files (its definition decides which disks the VM writes)")
            }
            guard st.st_mode & 0o022 == 0 else {
                throw .conflict("\(path) is writable by its group or others (mode \(String(st.st_mode & 0o7777, radix: 8))): a snapshot is restored only from files only root can change")
            }
        }
        let trimmed = directory.hasSuffix("/") ? String(directory.dropLast()) : directory
        try check(trimmed, directory: true)
        for file in [SnapshotLayout.definition(in: trimmed), SnapshotLayout.state(in: trimmed), SnapshotLayout.memory(in: trimmed)] {
            try check(file, directory: false)
        }
    }

    /// Reads a snapshot's `definition.json` for a restore: relative paths made absolute against
    /// the snapshot directory, renamed to `name` if given, validated with its files. Errors name
    /// the file and JSON path.
    public static func definition(in directory: String, renamedTo name: String?) throws(ControlError) -> (json: DefinitionJSON, definition: VMDefinition) {
        let file = SnapshotLayout.definition(in: directory)
        guard let data = FileManager.default.contents(atPath: file) else { throw .conflict("\(file): cannot read it: \(errnoMessage())") }
        do {
            var json = try DefinitionJSON(Array(data), file: file)
            json.makePathsAbsolute(base: directory)
            if let name { json.rename(to: name) }
            return (json, try json.validated(base: directory))
        } catch let e as DefinitionError {
            throw .conflict(e.issues.map(\.description).joined(separator: "; "))
        } catch {
            throw .conflict("\(file): \(error)")
        }
    }

    /// State files are small (registers and device state); anything this large is not one.
    static let maxStateBytes = 256 << 20

    /// What the VMM would refuse first, checked here so nothing starts: a state file that is not
    /// whole (checksum, truncation, version), a vCPU count or memory size other than the
    /// definition's, a memory file of the wrong size, a disk whose size changed, passthrough.
    public static func verify(_ directory: String, against definition: VMDefinition) throws(ControlError) -> SnapshotHeader {
        let statePath = SnapshotLayout.state(in: directory)
        let fd = open(statePath, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { throw .conflict("\(statePath): \(errnoMessage())") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_size <= maxStateBytes else {
            throw .conflict("\(statePath): \(st.st_size) bytes is not a state file (at most \(maxStateBytes))")
        }
        let bytes: [UInt8]
        do { bytes = try readToEnd(fd) } catch { throw .conflict("\(statePath): \(error)") }
        let header: SnapshotHeader
        do { header = try SnapshotStateFile.decode(bytes, file: statePath).header } catch { throw .conflict("snapshot \(directory): \(error)") }
        func refuse(_ why: String) -> ControlError { .conflict("snapshot \(directory): \(why)") }
        guard definition.passthrough.isEmpty else { throw refuse("a VM with passthrough devices cannot be restored (their state lives in the host device)") }
        guard header.vcpus == definition.vcpus else { throw refuse("saved with \(header.vcpus) vCPUs, the definition has \(definition.vcpus)") }
        let ram = UInt64(definition.memoryMiB) << 20
        guard header.memoryBytes == ram else {
            throw refuse("saved with \(header.memoryBytes >> 20) MiB of memory, the definition has \(definition.memoryMiB) MiB")
        }
        let memoryPath = SnapshotLayout.memory(in: directory)
        guard stat(memoryPath, &st) == 0 else { throw refuse("\(memoryPath): \(errnoMessage())") }
        guard UInt64(st.st_size) == ram else {
            throw refuse("\(memoryPath) has \(st.st_size) bytes, the VM's memory is \(ram) (\(definition.memoryMiB) MiB): it is not this snapshot's memory file")
        }
        guard header.diskBytes.count == definition.disks.count else {
            throw refuse("saved with \(header.diskBytes.count) disks, the definition has \(definition.disks.count)")
        }
        for (i, (saved, disk)) in zip(header.diskBytes, definition.disks).enumerated() {
            guard stat(disk.path, &st) == 0 else { throw refuse("$.disks[\(i)].path \(disk.path): \(errnoMessage())") }
            // A block device's size is the VMM's to check (it opens it anyway).
            if st.st_mode & S_IFMT == S_IFREG && UInt64(st.st_size) != saved {
                throw refuse("$.disks[\(i)] \(disk.path) has \(st.st_size) bytes, \(saved) when the VM was saved: the guest's view of it would be wrong")
            }
        }
        return header
    }
}
