#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A snapshot directory (docs/snapshot.md): the VM definition, editable like any other; the
/// state file (header + machine state + checksum); guest memory as one sparse file.
public enum SnapshotLayout {
    public static func definition(in directory: String) -> String { directory + "/definition.json" }
    public static func state(in directory: String) -> String { directory + "/state" }
    public static func memory(in directory: String) -> String { directory + "/memory" }
}

/// What the state file says about itself, readable without decoding the machine state: what
/// `rtvisorctl snapshots` lists and what a restore checks first.
public struct SnapshotHeader: Codable, Sendable, Equatable {
    public var formatVersion: Int
    public var rtvisorVersion: String
    public var vm: String
    /// Seconds since the epoch.
    public var createdAt: Double
    public var vcpus: Int
    public var memoryBytes: UInt64
    /// The CPU template and a digest of the CPUID tables it gave the vCPUs on the host that saved
    /// the VM: a restore on a host whose CPUID differs is refused (the guest chose its code paths
    /// by those bits).
    public var cpuTemplate: String
    public var cpuidDigest: String
    /// A digest of the VM definition as it was when saved.
    public var definitionDigest: String
    /// Each disk's size in bytes, in definition order: a disk that changed size is refused.
    public var diskBytes: [UInt64]

    public init(rtvisorVersion: String = RtvisorRelease.version, vm: String, createdAt: Double, vcpus: Int, memoryBytes: UInt64,
                cpuTemplate: String, cpuidDigest: String, definitionDigest: String, diskBytes: [UInt64]) {
        self.formatVersion = SnapshotStateFile.formatVersion
        self.rtvisorVersion = rtvisorVersion; self.vm = vm; self.createdAt = createdAt; self.vcpus = vcpus
        self.memoryBytes = memoryBytes; self.cpuTemplate = cpuTemplate; self.cpuidDigest = cpuidDigest
        self.definitionDigest = definitionDigest; self.diskBytes = diskBytes
    }
}

public struct SnapshotFormatError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The state file: magic, format version, the header's and the body's lengths, the header (JSON),
/// the machine state (JSON, opaque here: the VMM's), and a CRC-32 of everything before it.
///
///     "RTVSNAP\0" | u32 version | u32 header length | u64 body length | header | body | u32 CRC-32
public enum SnapshotStateFile {
    public static let magic: [UInt8] = Array("RTVSNAP".utf8) + [0]
    /// Bumped whenever the machine state's encoding changes in a way an older reader would
    /// misread; a file of another version is refused, never guessed at.
    /// 2: a vCPU's CPUID table and MSRs packed (`VCPUState`).
    public static let formatVersion = 2
    static let prefixLength = 8 + 4 + 4 + 8

    public static func encode(header: SnapshotHeader, body: [UInt8]) throws -> [UInt8] {
        let h = Array(try JSONEncoder().encode(header))
        var out = magic
        append(&out, UInt32(formatVersion))
        append(&out, UInt32(h.count))
        append(&out, UInt64(body.count))
        out += h
        out += body
        append(&out, CRC32.checksum(out))
        return out
    }

    /// The header and body of a complete state file; every way a file can be wrong (not a state
    /// file, another version, cut short, altered) is its own error naming what was found.
    public static func decode(_ bytes: [UInt8], file: String = "state") throws(SnapshotFormatError) -> (header: SnapshotHeader, body: ArraySlice<UInt8>) {
        let (header, headerEnd, bodyLength) = try decodePrefix(bytes, file: file)
        let expected = headerEnd + bodyLength + 4
        guard bytes.count == expected else {
            throw SnapshotFormatError(bytes.count < expected
                ? "\(file): truncated: \(bytes.count) bytes, the header announces \(expected)"
                : "\(file): \(bytes.count - expected) bytes of trailing garbage after the state")
        }
        let stored = load32(bytes, expected - 4)
        let computed = CRC32.checksum(bytes[0..<(expected - 4)])
        guard stored == computed else {
            throw SnapshotFormatError("\(file): checksum mismatch (stored 0x\(String(stored, radix: 16)), computed 0x\(String(computed, radix: 16))): the file is corrupted")
        }
        return (header, bytes[headerEnd..<(headerEnd + bodyLength)])
    }

    /// Just the header (for listings), from the first bytes of the file.
    public static func decodeHeader(_ prefix: [UInt8], file: String = "state") throws(SnapshotFormatError) -> SnapshotHeader {
        try decodePrefix(prefix, file: file).0
    }

    /// How many leading bytes hold the header, once the fixed prefix is known (nil: not yet).
    public static func headerEnd(_ prefix: [UInt8]) -> Int? {
        guard prefix.count >= prefixLength else { return nil }
        return prefixLength + Int(load32(prefix, 12))
    }

    static func decodePrefix(_ bytes: [UInt8], file: String) throws(SnapshotFormatError) -> (SnapshotHeader, Int, Int) {
        guard bytes.count >= prefixLength, Array(bytes[0..<8]) == magic else {
            throw SnapshotFormatError("\(file): not an rtvisor snapshot state file (no RTVSNAP magic)")
        }
        let version = Int(load32(bytes, 8))
        guard version == formatVersion else {
            throw SnapshotFormatError("\(file): snapshot format version \(version); this rtvisor (\(RtvisorRelease.version)) reads version \(formatVersion)")
        }
        let headerLength = Int(load32(bytes, 12))
        let bodyLength64 = load64(bytes, 16)
        guard headerLength <= 1 << 20, bodyLength64 <= 1 << 32 else {
            throw SnapshotFormatError("\(file): implausible lengths (header \(headerLength), state \(bodyLength64) bytes): the file is corrupted")
        }
        let headerEnd = prefixLength + headerLength
        guard bytes.count >= headerEnd else { throw SnapshotFormatError("\(file): truncated inside the header") }
        let header: SnapshotHeader
        do { header = try JSONDecoder().decode(SnapshotHeader.self, from: Data(bytes[prefixLength..<headerEnd])) } catch {
            throw SnapshotFormatError("\(file): the header is not valid: \(error)")
        }
        return (header, headerEnd, Int(bodyLength64))
    }

    static func append<T: FixedWidthInteger>(_ out: inout [UInt8], _ v: T) {
        for i in 0..<MemoryLayout<T>.size { out.append(UInt8(truncatingIfNeeded: v >> (8 * i))) }
    }
    static func load32(_ b: [UInt8], _ at: Int) -> UInt32 {
        (0..<4).reduce(UInt32(0)) { $0 | UInt32(b[at + $1]) << (8 * UInt32($1)) }
    }
    static func load64(_ b: [UInt8], _ at: Int) -> UInt64 {
        (0..<8).reduce(UInt64(0)) { $0 | UInt64(b[at + $1]) << (8 * UInt64($1)) }
    }
}

/// CRC-32 (IEEE 802.3, the zlib one): detects a damaged file; not a defence against a forged one
/// (a snapshot directory is only as trusted as the permissions that guard it, docs/snapshot.md).
public enum CRC32 {
    static let table: [UInt32] = (0..<256).map { n in
        var c = UInt32(n)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    public static func checksum(_ bytes: some Collection<UInt8>) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        for b in bytes { c = table[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
        return c ^ 0xFFFF_FFFF
    }
}

/// FNV-1a 64-bit as 16 hex digits: an identity for CPUID tables and definitions (equal or not),
/// not a cryptographic hash.
public enum ContentDigest {
    public static func fnv1a(_ bytes: some Collection<UInt8>) -> String {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01B3 }
        let s = String(h, radix: 16)
        return String(repeating: "0", count: 16 - s.count) + s
    }
}
