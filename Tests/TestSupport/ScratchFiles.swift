#if canImport(Glibc)
import Glibc
#endif

/// A new, empty directory under /tmp, named `prefix-XXXXXX`. /tmp rather than $TMPDIR so that
/// unix socket paths inside it stay well under sun_path's 108 bytes.
public func makeTemporaryDirectory(_ prefix: String = "rtvisor-test") throws -> String {
    var template = Array("/tmp/\(prefix)-XXXXXX".utf8CString)
    guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
        throw ScratchError(description: "mkdtemp /tmp/\(prefix)-XXXXXX: errno \(errno)")
    }
    return String(cString: made)
}

public struct ScratchError: Error, CustomStringConvertible {
    public let description: String
}

/// `mkdir -p`: every missing directory of an absolute path, mode 0755.
public func makeDirectories(_ path: String) {
    var partial = ""
    for part in path.split(separator: "/") { partial += "/" + part; mkdir(partial, 0o755) }
}

/// Creates or truncates `path` (and its missing parent directories) and writes `text`: fake
/// sysfs, procfs and cgroupfs trees.
public func writeFile(_ path: String, _ text: String) {
    makeDirectories(String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)]))
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard fd >= 0 else { return }
    _ = text.withCString { write(fd, $0, strlen($0)) }
    close(fd)
}
