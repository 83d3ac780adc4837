import CLinux
import Logging
import Posix
import Realtime
import Sandbox
import Synchronization
import VMM
import VMMInterface
#if canImport(Glibc)
import Glibc
#endif

/// The privilege drop of rtvisor-vmm (docs/sandbox.md): once the machine exists (every device,
/// image, tap, KVM and VFIO fd open) and before any other thread runs, the VMM enters its jail.
enum JailSetup {
    /// Open descriptors now (/proc/self/fd), to size RLIMIT_NOFILE.
    static func openDescriptors() -> Int { max(0, HostFiles.list("/proc/self/fd").count - 1) }

    /// Enters the jail; returns what to log. A real-time VM first gets its janitor: a process that
    /// stays root to place the VM's real-time threads on request and to undo the partition when
    /// this process ends.
    static func enter(machine: Machine, uid: UInt32, writableFiles: [String], journal: Bool, logger: Logger) throws -> String {
        var plan = machine.jailPlan(uid: uid, writableFiles: writableFiles, journal: journal, openFileDescriptors: openDescriptors())
        var notes: [String] = []
        if let grant = machine.realtimeGrant {
            let broker = try startJanitor(vm: machine.definition.name, grant: grant)
            machine.handRealtimeReleaseToJanitor { try broker.release() }
            machine.handRealtimeHandOverToJanitor { try broker.handOver() }
            machine.setRealtimePlacementBroker { tid, cpu, priority in try broker.place(tid: tid, cpu: cpu, priority: priority) }
            // Locked memory beyond RLIMIT_MEMLOCK needs CAP_IPC_LOCK: raise the limit while root can
            // (CAP_SYS_RESOURCE); where it cannot, keep what is locked (guest RAM, everything
            // mapped so far) and stop locking future mappings, which would otherwise fail.
            if let i = plan.limits.firstIndex(where: { $0.name == "RLIMIT_MEMLOCK" }) {
                var r = rlimit(rlim_cur: rlim_t(plan.limits[i].value), rlim_max: rlim_t(plan.limits[i].value))
                if setrlimit(__rlimit_resource_t(UInt32(plan.limits[i].resource)), &r) != 0 {
                    plan.limits.remove(at: i)
                    mlockall(MCL_CURRENT)
                    notes.append("RLIMIT_MEMLOCK cannot be raised here (no CAP_SYS_RESOURCE): memory locked so far stays locked, later mappings are not locked")
                }
            }
        }
        try Jail.enter(plan)
        let caps = Jail.capabilities()
        return "jail: uid/gid \(plan.uid), root \(plan.root) (tmpfs) with \(plan.visible.count) paths, capabilities \(caps.map { "effective 0x\(String($0.effective, radix: 16))" } ?? "?"), no_new_privs, "
            + plan.limits.map { "\($0.name)=\($0.value == UInt64.max ? "unlimited" : String($0.value))" }.joined(separator: " ")
            + notes.map { "; " + $0 }.joined()
    }

    /// The janitor's requests besides placement ("TID CPU PRIORITY").
    enum JanitorRequest {
        /// Undo the partition now (the VM stopped).
        static let release = "release"
        /// Leave the partition for the next VMM of the VM (the guest reset; `--keep-realtime-partition-on-reset`).
        static let handOver = "hand-over"
    }

    /// The VMM's end of the janitor's socket: one request at a time, answered "ok" or an error.
    final class JanitorClient: @unchecked Sendable {
        let fd: Int32
        /// One request at a time: the janitor answers in order on one socket.
        let lock = Mutex(())
        init(fd: Int32) { self.fd = fd }
        func place(tid: Int32, cpu: Int, priority: Int) throws {
            let answer = try ask("\(tid) \(cpu) \(priority)")
            guard answer == "ok" else { throw JailError(description: "real-time janitor: \(answer)") }
        }
        /// At stop, after the vCPU threads ended: the partition undone before this process exits,
        /// so whoever starts the next real-time VM finds the CPUs free.
        func release() throws -> String {
            let answer = try ask(JanitorRequest.release)
            guard answer.hasPrefix("released") else { throw JailError(description: "real-time janitor: \(answer)") }
            return answer
        }
        /// At the end after a guest reset, when the next VMM adopts the partition: the janitor
        /// marks it handed over and then leaves it alone, whenever this process exits.
        func handOver() throws -> String {
            let answer = try ask(JanitorRequest.handOver)
            guard answer.hasPrefix("kept") || answer.hasPrefix("released") else { throw JailError(description: "real-time janitor: \(answer)") }
            return answer
        }
        func ask(_ text: String) throws -> String {
            try lock.withLock { _ in
                var request = Array(text.utf8)
                guard request.withUnsafeMutableBytes({ write(fd, $0.baseAddress, $0.count) }) == request.count else {
                    throw JailError(description: "real-time janitor: request failed: \(errnoMessage())")
                }
                var reply = [UInt8](repeating: 0, count: 512)
                let n = (try? retryInterrupted { read(fd, &reply, reply.count) }) ?? -1
                return n > 0 ? String(decoding: reply[0..<n], as: UTF8.self) : "no answer (janitor gone)"
            }
        }
    }

    /// `rtvisor-vmm --realtime-janitor 'NAME|PID|CPUS|MAXPRIO|ATTACHFILE'` with one end of a
    /// SOCK_SEQPACKET pair as its stdin; the other end only this process holds, so the janitor's
    /// read returns 0 at this process's exit, however it ends.
    static func startJanitor(vm: String, grant: (cpus: [Int], maxPriority: Int, attachFile: String?)) throws -> JanitorClient {
        var fds: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            throw JailError(description: "janitor socket: \(errnoMessage())")
        }
        defer { close(fds[1]) }
        var target = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &target, target.count - 1)
        let path = n > 0 ? String(cString: target) : "/proc/self/exe"
        let spec = RealtimeJanitorSpec(vm: vm, vmmPID: getpid(), cpus: grant.cpus, maxPriority: grant.maxPriority, attachFile: grant.attachFile)
        let words: [String] = [path] + spec.arguments
        let argv: [UnsafeMutablePointer<CChar>?] = words.map { word in word.withCString { strdup($0) } } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        guard clinux_spawn_with_stdin(&pid, path, argv, fds[1]) == 0 else {
            close(fds[0])
            throw JailError(description: "starting the real-time janitor: \(errnoMessage())")
        }
        return JanitorClient(fd: fds[0])
    }

    /// The janitor's body (root, outside the jail): place the VMM's real-time threads when asked,
    /// only its own threads, only on its CPUs and up to its priority; when the VMM is gone, undo
    /// its partition, unless the VMM released it already or handed it over to the next VMM.
    static func runJanitor(spec: String) -> Never {
        guard let parsed = RealtimeJanitorSpec(encoded: spec) else {
            writeStderr("rtvisor-vmm: real-time janitor: bad specification \(spec)\n"); exit(2)
        }
        let vm = parsed.vm, vmmPid = parsed.vmmPID, maxPriority = parsed.maxPriority, cpus = Set(parsed.cpus), attachFile = parsed.attachFile ?? ""
        var buf = [UInt8](repeating: 0, count: 256)
        // Once the partition is undone or handed over, it is no longer this janitor's to undo.
        var settled = false
        func reply(_ text: String) {
            var bytes = Array(text.utf8)
            _ = bytes.withUnsafeMutableBytes { write(0, $0.baseAddress, $0.count) }
        }
        while let n = try? retryInterrupted({ read(0, &buf, buf.count) }), n > 0 {
            if buf[0..<n].elementsEqual(JanitorRequest.release.utf8) {
                let done = releaseRealtimePartition(vm: vm)
                settled = true
                reply("released: \(done ?? "nothing left to undo")")
                continue
            }
            if buf[0..<n].elementsEqual(JanitorRequest.handOver.utf8) {
                settled = true
                if PartitionState.handOver(vm: vm) { reply("kept for the next VMM (guest reset)") }
                else { reply("released (nothing to hand over): \(releaseRealtimePartition(vm: vm) ?? "nothing left to undo")") }
                continue
            }
            let words = String(decoding: buf[0..<n], as: UTF8.self).split(separator: " ").compactMap { Int($0) }
            var answer = "ok"
            if words.count != 3 { answer = "malformed request" }
            else if !HostFiles.exists("/proc/\(vmmPid)/task/\(words[0])") { answer = "thread \(words[0]) is not VMM \(vmmPid)'s" }
            else if !cpus.contains(words[1]) { answer = "CPU \(words[1]) is not one of VM \(vm)'s real-time CPUs" }
            else if words[2] < 1 || words[2] > maxPriority { answer = "priority \(words[2]) outside 1–\(maxPriority)" }
            else {
                let tid = Int32(words[0])
                do {
                    if !attachFile.isEmpty { try HostFiles.write(attachFile, "\(tid)") }
                    try ThreadScheduling.setAffinity([words[1]], tid: tid)
                    try ThreadScheduling.setFIFO(priority: words[2], tid: tid)
                } catch {
                    answer = "\(error)"
                }
            }
            reply(answer)
        }
        if settled { exit(0) }
        // The VMM ended without asking (killed): its threads are gone, undo the partition now.
        usleep(100_000)
        if let done = releaseRealtimePartition(vm: vm) {
            writeStderr("rtvisor-vmm: real-time janitor: VM \(vm): \(done)\n")
        }
        exit(0)
    }
}
