import APIModels
import ArgumentParser
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

// `snapshot`, `snapshots`, `restore` and `clone` (docs/snapshot.md). A snapshot, restore or clone
// of a large guest takes as long as its memory and disks take to write or copy: these commands
// wait up to 15 minutes for the answer instead of the usual 30 s.

let snapshotCommandTimeout = 900

/// `value` with one decimal (rounded), without Foundation's formatting.
func oneDecimal(_ value: Double) -> String {
    let tenths = Int((value * 10).rounded())
    return "\(tenths / 10).\(tenths % 10)"
}

func mebibytes(_ bytes: UInt64) -> String { oneDecimal(Double(bytes) / 1_048_576) }

/// Seconds since the epoch as `2026-12-06 02:15:00Z`.
func utcTime(_ seconds: Double) -> String {
    var t = time_t(seconds)
    var parts = tm()
    gmtime_r(&t, &parts)
    func two(_ v: Int32) -> String { String(v).leftPad(2) }
    let date = "\(Int(parts.tm_year) + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))"
    return date + " \(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec))Z"
}

func jsonBody(_ value: some Encodable) throws -> [UInt8] { Array(try JSONEncoder().encode(value)) }

/// An absolute path for the daemon (it does not know the caller's working directory).
func absolutePath(_ path: String) -> String {
    if path.hasPrefix("/") { return path }
    var buf = [CChar](repeating: 0, count: 4096)
    guard getcwd(&buf, buf.count) != nil else { return path }
    let cwd = String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return cwd + "/" + path
}

struct Snapshot: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Save a running VM to a snapshot directory (its definition, machine state and memory); it runs on, or stops with --stop.",
        discussion: "Default directory: /var/lib/rtvisor/snapshots/NAME/<UTC time>/ (mode 0700: it holds the guest's memory). docs/snapshot.md.")
    @OptionGroup var options: CommonOptions
    @OptionGroup var vm: NameArgument
    @Option(help: "Write the snapshot into this new directory (its parent must exist).", completion: .directory)
    var to: String?
    @Flag(help: "Stop the VM once it is saved (it stays stopped: no restart policy applies).")
    var stop = false

    func run() throws {
        let body = try jsonBody(SnapshotOptions(to: to.map(absolutePath), stop: stop))
        try options.call("POST", "/v1/vms/\(pathComponent(vm.name))/snapshot", body: body, as: SnapshotResult.self,
                         timeoutSeconds: snapshotCommandTimeout) { r in
            let s = r.snapshot
            print("\(r.name): saved to \(s.directory) [\(r.state.rawValue)]")
            let memory = "memory \(mebibytes(r.memoryDataBytes)) of \(s.memoryMiB.map(String.init) ?? "?") MiB written"
            print("  state \(r.stateBytes) bytes, \(memory), \(mebibytes(s.bytesOnDisk)) MiB on disk, vCPUs paused \(oneDecimal(r.pausedMilliseconds)) ms")
        }
    }
}

struct Snapshots: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the snapshots in /var/lib/rtvisor/snapshots (of one VM, or all).",
        discussion: "ON DISK counts the blocks the files take (the memory file is sparse); SIZE what they would take without holes.")
    @OptionGroup var options: CommonOptions
    @Argument(help: "Only this VM's snapshots.", completion: .custom { _, _, _ in vmNamesForCompletion() })
    var name: String?

    func run() throws {
        let target = "/v1/snapshots" + (name.map { "?vm=" + pathComponent($0) } ?? "")
        try options.call("GET", target, as: SnapshotList.self) { list in
            if list.snapshots.isEmpty { print("no snapshots in \(list.root)\(name.map { " for VM \($0)" } ?? "")"); return }
            table(["DIRECTORY", "VM", "CREATED", "VCPUS", "MEMORY MiB", "ON DISK MiB", "SIZE MiB", "DEFINITION", "VERSION", "ERROR"], list.snapshots.map { s in
                [s.directory, s.vm ?? "-", s.createdAt.map(utcTime) ?? "-", s.vcpus.map(String.init) ?? "-", s.memoryMiB.map(String.init) ?? "-",
                 mebibytes(s.bytesOnDisk), mebibytes(s.apparentBytes), s.definitionDigest ?? "-", s.rtvisorVersion ?? "-", s.error ?? "-"]
            })
        }
    }
}

struct Restore: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Resume a snapshot as a supervised VM (installed as a definition; it boots normally on its next start).",
        discussion: "The snapshot directory must be root's and writable by nobody else (rtvisord's own snapshots are). docs/snapshot.md.")
    @OptionGroup var options: CommonOptions
    @Argument(help: "The snapshot directory.", completion: .directory)
    var directory: String
    @Option(help: "Name of the restored VM (default: the snapshot's).")
    var name: String?

    func run() throws {
        let body = try jsonBody(RestoreRequest(directory: absolutePath(directory), name: name))
        try options.call("POST", "/v1/snapshots/restore", body: body, as: RestoredVM.self, timeoutSeconds: snapshotCommandTimeout) { r in
            print("\(r.name): \(r.message) [running]")
            print("  definition \(r.definitionFile) (the VM boots normally when it is next started)")
        }
    }
}

struct Clone: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Start N copies of a running VM (snapshotted first) or of a snapshot (--from): new names, MACs, taps; copied writable disks.",
        discussion: "Clone i is PREFIX + i (default NAME-clone1…). Writable disks are reflinked where the file system can, else copied, into /var/lib/rtvisor/clones/CLONE/; read-only disks are shared. docs/snapshot.md, \"Clones\".")
    @OptionGroup var options: CommonOptions
    @OptionGroup var vm: NameArgument
    @Option(help: "How many clones (1–64).")
    var count: Int
    @Option(help: "Name clones PREFIX1, PREFIX2, … (default NAME-clone).")
    var prefix: String?
    @Option(help: "Clone this snapshot directory instead of snapshotting the running VM.", completion: .directory)
    var from: String?

    func validate() throws {
        guard CloneRequest.countRange.contains(count) else { throw ValidationError("--count must be 1–64") }
    }

    func run() throws {
        let body = try jsonBody(CloneRequest(count: count, prefix: prefix, from: from.map(absolutePath)))
        try options.call("POST", "/v1/vms/\(pathComponent(vm.name))/clone", body: body, as: CloneResult.self,
                         timeoutSeconds: snapshotCommandTimeout) { r in
            print("\(r.clones.count) clone\(r.clones.count == 1 ? "" : "s") of \(r.origin) running from snapshot \(r.snapshot)")
            for c in r.clones {
                print("\(c.vm.name): PID \(c.vm.pid), definition \(c.vm.definitionFile)")
                for d in c.disks { print("  disk \(d.path) (\(d.mode.rawValue)\(d.mode == .shared ? "" : " of \(d.source)"))") }
                for n in c.nets { print("  net tap \(n.tap), MAC \(n.mac)") }
            }
        }
    }
}
