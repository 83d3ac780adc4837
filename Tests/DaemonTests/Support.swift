import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Writes through a descriptor opened O_CLOEXEC, then renames into place. Foundation's own
/// atomic write leaves its descriptor inheritable: a fake VMM another test spawns at that moment
/// (`exec sleep 3600`) kept the file open for writing, and the exec of a script written here then
/// failed with ETXTBSY for as long as that sleep lived (seen in SnapshotLifecycleTests about one
/// run in three).
func write(_ text: String, to path: String) throws {
    let temporary = path + ".tmp-\(UInt64.random(in: 0...UInt64.max))"
    let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
    guard fd >= 0 else { throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: temporary]) }
    let bytes = Array(text.utf8)
    var done = 0
    while done < bytes.count {
        let n = bytes[done...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { close(fd); unlink(temporary); throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: path]) }
        done += n
    }
    close(fd)
    guard rename(temporary, path) == 0 else { unlink(temporary); throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: path]) }
}

/// A kernel file that exists (definitions check that kernel paths are readable files).
func makeKernel(in dir: String) throws -> String {
    let k = dir + "/kernel.elf"
    try write("not really a kernel", to: k)
    return k
}

func definitionJSON(name: String, kernel: String, memory: Int = 32, extra: String = "") -> String {
    "{\"name\": \"\(name)\", \"memory_mib\": \(memory), \"kernel\": \"\(kernel)\"\(extra.isEmpty ? "" : ", " + extra)}"
}
