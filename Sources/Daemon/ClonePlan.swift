import APIModels
import CDaemonSupport
import Config
import Foundation
import Posix
import VMMInterface

/// What clones of a VM get that must differ from their origin (docs/snapshot.md, "Clones"):
/// names, MAC addresses, tap interfaces and their own copies of writable disks. Pure where it
/// can be, so the rules are tested without a VM.
public enum ClonePlan {
    /// A VM name as definitions allow it: 1–64 letters, digits, '-' and '_'.
    public static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.count <= 64 && name.unicodeScalars.allSatisfy {
            ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) || $0 == "-" || $0 == "_"
        }
    }

    /// Clone i (1…count) is `PREFIX` + i, PREFIX being `ORIGIN-clone` unless given.
    public static func names(origin: String, prefix: String?, count: Int) throws(ControlError) -> [String] {
        guard CloneRequest.countRange.contains(count) else {
            throw .conflict("count must be \(CloneRequest.countRange.lowerBound)–\(CloneRequest.countRange.upperBound), got \(count)")
        }
        let base = prefix ?? origin + "-clone"
        let names = (1...count).map { base + String($0) }
        if let bad = names.first(where: { !isValidName($0) }) {
            throw .conflict("clone name \"\(bad)\" is not a VM name (1–64 letters, digits, '-' and '_'): choose another prefix")
        }
        return names
    }

    /// A locally administered unicast MAC derived from the clone's name (and the interface's
    /// index), as a definition without `mac` gets: stable, and different from the origin's.
    public static func mac(vm: String, index: Int) -> [UInt8] { NetSettings.stableMAC(vmName: vm, index: index) }

    /// A tap name for the clone's interface `index`: `rtv` and 10 hex digits of a hash of the
    /// clone's name (13 characters; IFNAMSIZ allows 15), rehashed until it is not in `taken` (the
    /// taps of every defined VM, the host's interfaces, the clones planned before).
    public static func tap(vm: String, index: Int, taken: Set<String>) -> String {
        for attempt in 0..<1000 {
            let digest = ContentDigest.fnv1a(Array("\(vm)/\(index)/\(attempt)".utf8))
            let name = "rtv" + digest.prefix(10)
            if !taken.contains(name) { return name }
        }
        // 1000 collisions of a 40-bit hash: only a test's `taken` can do that.
        return "rtv" + String(UInt32.random(in: 0...UInt32.max), radix: 16)
    }

    /// The interfaces the host has (a tap a clone names that exists already would be shared).
    public static func hostInterfaces(sysClassNet: String = "/sys/class/net") -> Set<String> {
        Set(HostFiles.list(sysClassNet))
    }

    /// Where clone `vm` keeps its copy of disk `index` (`CLONES/VM/INDEX-BASENAME`: two disks may
    /// share a base name).
    public static func diskPath(clones: String, vm: String, index: Int, source: String) -> String {
        clones + "/" + vm + "/" + String(index) + "-" + (source.split(separator: "/").last.map(String.init) ?? "disk")
    }
}

/// Copies a writable disk for a clone: a reflink where the file system shares extents (btrfs,
/// XFS with reflink, bcachefs; instant, copy on write), else the data extents (holes stay holes,
/// so a sparse image stays sparse).
public enum DiskCopy {
    public struct CopyError: Error, CustomStringConvertible {
        public let description: String
    }

    /// `destination` is created (O_EXCL, mode 0600); on failure it is removed again.
    public static func copy(from source: String, to destination: String) throws(CopyError) -> CloneDiskMode {
        let src = open(source, O_RDONLY | O_CLOEXEC)
        guard src >= 0 else { throw CopyError(description: "cannot open \(source): \(errnoMessage())") }
        defer { close(src) }
        var st = stat()
        guard fstat(src, &st) == 0, st.st_mode & S_IFMT == S_IFREG else {
            throw CopyError(description: "\(source) is not a regular file: only image files can be copied for a clone")
        }
        let dst = open(destination, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard dst >= 0 else { throw CopyError(description: "cannot create \(destination): \(errnoMessage())") }
        var done = false
        defer {
            close(dst)
            if !done { unlink(destination) }
        }
        if cdaemon_ficlone(dst, src) == 0 {
            done = true
            return .reflink
        }
        let size = Int64(st.st_size)
        guard ftruncate(dst, off_t(size)) == 0 else { throw CopyError(description: "\(destination): ftruncate: \(errnoMessage())") }
        var offset: Int64 = 0
        while offset < size {
            let data = cdaemon_seek_data(src, offset)
            if data < 0 {
                if errno == ENXIO { break }  // only a hole is left
                // No SEEK_DATA here: the rest is data as far as anyone can tell.
                try copyRange(src, dst, offset, size - offset, source, destination)
                break
            }
            var hole = cdaemon_seek_hole(src, data)
            if hole < 0 || hole > size { hole = size }
            try copyRange(src, dst, data, hole - data, source, destination)
            offset = hole
        }
        guard fsync(dst) == 0 else { throw CopyError(description: "\(destination): fsync: \(errnoMessage())") }
        done = true
        return .copy
    }

    static func copyRange(_ src: Int32, _ dst: Int32, _ offset: Int64, _ length: Int64, _ source: String, _ destination: String) throws(CopyError) {
        guard length > 0 else { return }
        if cdaemon_copy_range(src, dst, offset, length) != 0 {
            throw CopyError(description: "copying \(source) to \(destination) at \(offset): \(errnoMessage())")
        }
    }
}
