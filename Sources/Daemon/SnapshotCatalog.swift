import APIModels
import Foundation
import Posix
import VMMInterface

/// `GET /v1/snapshots`: the snapshots under the daemon's snapshot directory (`ROOT/VM/TIMESTAMP`),
/// each described by its state file's header (read from its first bytes, not the whole file)
/// and the space its files take. One bad directory is listed with its error; it never hides the
/// others.
public enum SnapshotCatalog {
    /// Every snapshot of `vm` (or of every VM), oldest first within a VM, VMs by name.
    public static func list(root: String, vm: String? = nil) -> [SnapshotInfo] {
        let vms = vm.map { [$0] } ?? HostFiles.list(root).sorted()
        var out: [SnapshotInfo] = []
        for name in vms {
            let dir = root + "/" + name
            guard HostFiles.isDirectory(dir) else { continue }
            for entry in HostFiles.list(dir).sorted() where HostFiles.isDirectory(dir + "/" + entry) {
                out.append(info(directory: dir + "/" + entry))
            }
        }
        return out
    }

    /// One directory: its header's fields, or why there is none; sizes of the files present.
    public static func info(directory: String) -> SnapshotInfo {
        var info = SnapshotInfo(directory: directory)
        var missing: [String] = []
        for file in [SnapshotLayout.definition(in: directory), SnapshotLayout.state(in: directory), SnapshotLayout.memory(in: directory)] {
            var st = stat()
            guard lstat(file, &st) == 0 else { missing.append(String(file.split(separator: "/").last!)); continue }
            // st_blocks counts 512-byte units whatever the file system's block size.
            info.bytesOnDisk += UInt64(st.st_blocks) * 512
            info.apparentBytes += UInt64(st.st_size)
        }
        do {
            let header = try readHeader(SnapshotLayout.state(in: directory))
            info.vm = header.vm
            info.createdAt = header.createdAt
            info.vcpus = header.vcpus
            info.memoryMiB = Int(header.memoryBytes >> 20)
            info.definitionDigest = header.definitionDigest
            info.rtvisorVersion = header.rtvisorVersion
            info.formatVersion = header.formatVersion
            if !missing.isEmpty { info.error = "missing: \(missing.joined(separator: ", "))" }
        } catch {
            info.error = error.description
        }
        return info
    }

    /// The header only: the fixed prefix, then as many bytes as it says the header takes.
    public static func readHeader(_ statePath: String) throws(SnapshotFormatError) -> SnapshotHeader {
        let fd = open(statePath, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { throw SnapshotFormatError("\(statePath): \(errnoMessage())") }
        defer { close(fd) }
        var prefix = try read(fd, upTo: 4096, path: statePath)
        if let end = SnapshotStateFile.headerEnd(prefix), end > prefix.count, end <= (1 << 20) + 64 {
            prefix += try read(fd, upTo: end - prefix.count, path: statePath)
        }
        return try SnapshotStateFile.decodeHeader(prefix, file: statePath)
    }

    static func read(_ fd: Int32, upTo count: Int, path: String) throws(SnapshotFormatError) -> [UInt8] {
        let handle = FileHandle(fileDescriptor: fd, closeOnDealloc: false)
        var out: [UInt8] = []
        while out.count < count {
            let chunk: Data?
            do { chunk = try handle.read(upToCount: count - out.count) } catch { throw SnapshotFormatError("\(path): \(error.localizedDescription)") }
            guard let chunk, !chunk.isEmpty else { break }
            out += chunk
        }
        return out
    }
}
