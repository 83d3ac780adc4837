import KVM
import Memory
import Posix
import SystemPackage
import VMMInterface
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

public struct MigrationError: Error, CustomStringConvertible {
    public let description: String
    /// After `go` was sent without `running` coming back: the target may run the VM, so this one
    /// stays paused (never both running); whoever drives the migration resolves it.
    public let outcomeUnknown: Bool
    init(_ description: String, outcomeUnknown: Bool = false) { self.description = description; self.outcomeUnknown = outcomeUnknown }
}

/// Live migration, source side (docs/migration.md): pre-copy rounds of dirty pages while the
/// guest runs, then the last round and the machine state with it paused.
extension Machine {
    /// `consoleBacklog`: the console's recent output, taken paused and sent with the state.
    /// `progress`: told after each pre-copy round.
    public func migrate(_ request: MigrationRequest, over socket: FileDescriptor, consoleBacklog: (() -> [UInt8])? = nil,
                        progress: ((MigrationProgress) -> Void)? = nil) throws -> MigrationReport {
        guard passthrough.isEmpty else {
            throw MigrationError("VM \(definition.name) has passthrough devices: their state lives in the host device, which cannot move (docs/migration.md)")
        }
        guard definition.channels.isEmpty else {
            throw MigrationError("VM \(definition.name) has shared-memory channels: their memory and doorbells stay with the other peers on this host (docs/channels.md)")
        }
        guard runState == .running else { throw MigrationError("VM \(definition.name) is paused: resume it first") }
        let channel = MigrationChannel(socket: socket)
        let started = monotonicNanoseconds()
        /// Tells the target it is over (it discards what it got) and says why to the caller.
        func abandon(_ reason: String) -> MigrationError {
            try? channel.send(.abandon(reason))
            return MigrationError(reason)
        }
        // A same-host upgrade passes RAM (when it is memfds) and taps as descriptors.
        let handover = request.handover == true ? try handoverFiles(socket) : nil
        try channel.send(.hello(version: MigrationMessage.version, rtvisorVersion: RtvisorRelease.version))
        let header = SnapshotHeader(vm: definition.name, createdAt: Date().timeIntervalSince1970, vcpus: definition.vcpus,
                                    memoryBytes: memory.totalSize, cpuTemplate: cpuTemplate.rawValue, cpuidDigest: cpuidDigest,
                                    definitionDigest: ContentDigest.fnv1a(request.definitionJSON), diskBytes: diskBytes)
        try channel.send(.config(MigrationConfig(definitionJSON: request.definitionJSON, header: header, sourceHost: hostName,
                                                 handover: handover != nil ? true : nil)))
        if let handover { try channel.send(.handover(handover.manifest), files: handover.files) }
        switch try channel.receive() {
        case .accepted: break
        case let .refused(reason): throw MigrationError("the target refused the VM: \(reason)")
        case let other: throw MigrationError("the target answered \(other.name) to the configuration")
        }
        // Memory that went over as memfds is the target's too: nothing to copy, nothing to track.
        let memoryShared = handover.map { $0.manifest.memoryRegions > 0 } ?? false

        // Dirty logging is turned on with the vCPUs out of the guest: on the development host's
        // nested KVM, turning it on under running vCPUs logged 1 of some 800 pages the guest
        // wrote (measured; docs/migration.md); paused for the memory-slot update, every write is.
        let tracker = DirtyTracker(vm: vm, memory: memory)
        // The state's first encoding and decoding in a process are twice as slow as the next ones
        // (Codable metadata, conformance lookups: measured 0.5 vs 0.2 ms): both ends warm up on a
        // preview taken now, outside the downtime (a pause of a few hundred microseconds).
        try pause()
        let preview: MachineState
        do {
            if !memoryShared { try tracker.start() }
            preview = try captureState()
        } catch { resume(); throw error }
        resume()
        try channel.send(.preview(try SnapshotCodec.encode(preview)))
        var goSent = false
        var pausedAt: UInt64? = nil
        // Where the downtime goes, step by step (logged with the result).
        var downtime = StartupTrace(enabled: false)
        func pauseForTheEnd() throws {
            let now = monotonicNanoseconds()
            pausedAt = now
            downtime = StartupTrace(enabled: true, origin: now)
            try pause()
            downtime.mark("pause")
        }
        var disksReleased = false
        defer {
            if !memoryShared { tracker.stop() }
            // Anything short of `go` leaves the VM running here, with its disks.
            if !goSent && disksReleased {
                for d in diskImages {
                    do { try d.lock() } catch { logger.error("migration failed and disk \(d.path) cannot be locked again: \(error)") }
                }
            }
            if !goSent && pausedAt != nil { resume() }
        }
        /// Paused: the machine state goes, the disks' locks are let go (shared storage, or this
        /// host: the target takes them when it runs the VM).
        func sendState() throws {
            let captured = try captureState()
            downtime.mark("capture")
            let state = try SnapshotCodec.encode(captured)
            downtime.mark("encode")
            for d in diskImages { d.unlock() }
            disksReleased = true
            if let backlog = consoleBacklog?(), !backlog.isEmpty { try channel.send(.console(backlog)) }
            try channel.send(.state(state))
            downtime.mark("send \(state.count >> 10) KiB")
        }
        let pacer = request.maxBandwidthMiBps.map { BandwidthPacer(bytesPerSecond: Double($0) * 1_048_576) }
        var rounds: [MigrationReport.Round] = []
        func round(_ dirty: [[UInt64]]?) throws -> MigrationReport.Round {
            let t0 = monotonicNanoseconds()
            let (pages, bytes) = try sendPages(dirty, over: channel, pacer: pacer)
            return MigrationReport.Round(pages: pages, bytes: bytes, milliseconds: Double(monotonicNanoseconds() - t0) / 1e6)
        }
        if memoryShared {
            try pauseForTheEnd()
            try sendState()
        } else {
            // Round 0: every page that is not zero (the target's RAM starts zeroed).
            rounds.append(try round(nil))
            logger.info("migration of \(definition.name): round 0, \(rounds[0].pages) pages in \(Int(rounds[0].milliseconds)) ms")
        }
        while !memoryShared {
            let last = rounds[rounds.count - 1]
            let dirty = try tracker.collect()
            let pending = dirty.reduce(0) { $0 + $1.reduce(0) { $0 + $1.nonzeroBitCount } }
            // Bytes per millisecond of the last round; what is dirty now would take this long.
            let rate = last.milliseconds > 0 ? Double(last.bytes) / last.milliseconds : Double.infinity
            let estimate = Double(pending * 4096) / max(rate, 1)
            let elapsed = Double(monotonicNanoseconds() - started) / 1e6
            progress?(MigrationProgress(round: rounds.count - 1, dirtyPages: pending, bytesSent: channel.bytesSent,
                                        mebibytesPerSecond: rate * 1000 / 1_048_576, expectedDowntimeMilliseconds: estimate,
                                        elapsedMilliseconds: elapsed))
            if let timeout = request.timeoutSeconds, elapsed > Double(timeout) * 1000 {
                throw abandon("\(rounds.count) rounds in \(Int(elapsed / 1000)) s and still \(pending) dirty pages: the timeout of \(timeout) s is over, given up, the VM keeps running here")
            }
            if estimate <= Double(request.downtimeMilliseconds) || rounds.count > request.maxRounds {
                guard estimate <= Double(request.downtimeMilliseconds) || request.force else {
                    throw abandon("\(rounds.count) rounds and still \(pending) dirty pages (about \(Int(estimate)) ms to send, the limit is \(request.downtimeMilliseconds) ms): given up, the VM keeps running here")
                }
                // What is dirty now goes while the guest runs on; then the last round, paused:
                // what was written meanwhile, and the state. Pausing right after collecting the
                // dirty log took ~1 ms more half of the time here (the vCPU busy with the
                // re-protected pages: measured 0.13 vs 1.1 ms); after a live round it does not.
                rounds.append(try round(dirty))
                try pauseForTheEnd()
                let final = try tracker.collect()
                logger.info("migration of \(definition.name): last round, \(pending) pages sent live before the pause, \(final.reduce(0) { $0 + $1.reduce(0) { $0 + $1.nonzeroBitCount } }) with it")
                rounds.append(try round(final))
                downtime.mark("last round")
                try sendState()
                break
            }
            rounds.append(try round(dirty))
            logger.info("migration of \(definition.name): round \(rounds.count - 1), \(rounds[rounds.count - 1].pages) pages, \(pending) were dirty")
        }
        switch try channel.receive() {
        case .ready: break
        case let .failed(reason): throw MigrationError("the target could not load the VM: \(reason)")
        case let other: throw MigrationError("the target answered \(other.name) to the state")
        }
        downtime.mark("target loads")
        try channel.send(.go)
        goSent = true
        do {
            guard case .running = try channel.receive() else { throw MigrationError("no running") }
        } catch {
            throw MigrationError("the target did not confirm that it runs the VM (\(error)): it may; this VMM keeps it paused (docs/migration.md: resolving an unknown outcome)", outcomeUnknown: true)
        }
        let now = monotonicNanoseconds()
        downtime.mark("go, running", now: now)
        logger.info("migration of \(definition.name): downtime (ms): \(downtime.steps.map { "\($0.name) \(StartupTrace.ms($0.nanoseconds))" }.joined(separator: ", "))")
        let report = MigrationReport(rounds: rounds, memoryHandedOver: memoryShared, totalBytes: channel.bytesSent, totalMilliseconds: Double(now - started) / 1e6,
                                     downtimeMilliseconds: Double(now - (pausedAt ?? now)) / 1e6)
        logger.notice("migration of \(definition.name): paused at monotonic \(pausedAt ?? 0) ns")
        logger.notice("migration of \(definition.name) complete: \(rounds.count) rounds, \(report.totalBytes >> 20) MiB, \(Int(report.totalMilliseconds)) ms, downtime \(Self.ms(UInt64(report.downtimeMilliseconds * 1e6))) ms")
        return report
    }

    /// What a same-host upgrade passes: guest RAM's memfds (none when a region is a
    /// copy-on-write file mapping: then its pages are copied) and the taps. Only a Unix socket
    /// carries descriptors.
    func handoverFiles(_ socket: FileDescriptor) throws -> (manifest: MigrationHandover, files: [FileDescriptor]) {
        var domain: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(socket.rawValue, SOL_SOCKET, SO_DOMAIN, &domain, &length) == 0, domain == AF_UNIX else {
            throw MigrationError("a handover (same-host upgrade) needs a Unix stream socket: descriptors cannot travel over TCP")
        }
        let ram = memory.sharedFiles ?? []
        if ram.isEmpty { logger.notice("migration of \(definition.name): guest RAM is a mapped snapshot file, its pages are copied") }
        let manifest = MigrationHandover(memoryRegions: ram.count, taps: taps.map { .init(name: $0.name, supportsOffloads: $0.supportsOffloads) })
        return (manifest, ram + taps.map(\.fd))
    }

    /// Ends this VMM after a migration (the target runs the VM): exit status `migrated`.
    public func stopAfterMigration() {
        stop.request(.migrated)
        pauseGate.resume()
    }

    /// Sends the pages of `dirty` (nil: every non-zero page) in frames of up to 1 MiB; a dirty
    /// page that is all zeros goes as a zero range. Returns pages and bytes sent.
    func sendPages(_ dirty: [[UInt64]]?, over channel: MigrationChannel, pacer: BandwidthPacer? = nil) throws -> (Int, UInt64) {
        let before = channel.bytesSent
        var count = 0
        for (region, offset) in zip(memory.regions.indices, memory.imageOffsets) {
            let pages = Int(memory.regions[region].size / 4096)
            // Round 0 skips pages never touched (zero, and reading them would fault them in).
            let touched = dirty == nil ? memory.touched.bitmap(of: memory.regions[region]) : nil
            var batch: [UInt8] = []
            var batchStart = 0
            func flush() throws {
                guard !batch.isEmpty else { return }
                try channel.send(.pages(offset: offset + UInt64(batchStart) * 4096, bytes: batch))
                pacer?.sent(batch.count)
                batch.removeAll(keepingCapacity: true)
            }
            for page in 0..<pages {
                let isDirty = dirty.map { $0[region][page / 64] >> UInt64(page % 64) & 1 != 0 }
                if isDirty == false { try flush(); continue }
                if let touched, touched[page / 64] >> UInt64(page % 64) & 1 == 0 { try flush(); continue }
                let zero = memory.isZeroImagePage(region: region, page: page)
                if zero {
                    try flush()
                    if isDirty == true { try channel.send(.zero(offset: offset + UInt64(page) * 4096, length: 4096)); count += 1 }
                    continue
                }
                if batch.isEmpty { batchStart = page }
                memory.withImagePage(region: region, page: page) { batch += $0 }
                count += 1
                if batch.count >= MigrationMessage.pagesPerFrame * 4096 { try flush() }
            }
            try flush()
        }
        return (count, channel.bytesSent - before)
    }

    /// This host's name (read at start: `uname` is not in the running VMM's filters).
    static var currentHostName: String {
        var buf = [CChar](repeating: 0, count: 256)
        guard gethostname(&buf, buf.count) == 0 else { return "unknown" }
        return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// `max_bandwidth`: after each frame of pages, sleeps as long as keeps the average since the
/// start at the cap (the link is shared with everything else the host does).
final class BandwidthPacer {
    let bytesPerSecond: Double
    private let started = monotonicNanoseconds()
    private var bytes: Double = 0
    init(bytesPerSecond: Double) { self.bytesPerSecond = bytesPerSecond }

    func sent(_ n: Int) {
        bytes += Double(n)
        let due = bytes / bytesPerSecond * 1e9, elapsed = Double(monotonicNanoseconds() - started)
        guard due > elapsed else { return }
        let ns = Int(due - elapsed)
        var ts = timespec(tv_sec: ns / 1_000_000_000, tv_nsec: ns % 1_000_000_000)
        var left = timespec()
        while nanosleep(&ts, &left) != 0 && errno == EINTR { ts = left }
    }
}

/// The guest's writes (KVM's dirty log on every memory slot) and this process's (`VMMDirtyPages`)
/// during a migration, as one bitmap per region.
struct DirtyTracker {
    let vm: VirtualMachine
    let memory: GuestMemory

    private func setLogging(_ on: Bool) throws {
        for (slot, r) in memory.regions.enumerated() {
            try vm.setUserMemoryRegion(slot: UInt32(slot), guestAddress: r.start.raw, size: r.size, hostAddress: r.hostAddress, logDirty: on)
        }
    }

    func start() throws {
        memory.vmmDirty.start()
        try setLogging(true)
    }

    func stop() {
        memory.vmmDirty.stop()
        try? setLogging(false)
    }

    /// What was written since the last call.
    func collect() throws -> [[UInt64]] {
        var kvm: [[UInt64]] = []
        for (slot, r) in memory.regions.enumerated() { kvm.append(try vm.dirtyLog(slot: UInt32(slot), pages: Int(r.size / 4096))) }
        return try merge(kvm, memory.vmmDirty.take())
    }

    func merge(_ a: [[UInt64]], _ b: [[UInt64]]) throws -> [[UInt64]] {
        guard a.count == b.count, zip(a, b).allSatisfy({ $0.count == $1.count }) else { throw MigrationError("dirty bitmaps of different shapes") }
        return zip(a, b).map { zip($0, $1).map { $0 | $1 } }
    }
}

/// Live migration, target side: a machine built with `MachineStart.incoming` checks what the
/// source says the guest saw, then takes its memory and state from the stream.
extension Machine {
    /// Why this machine cannot take the VM `header` describes, or nil (checked before any memory
    /// moves; the machine itself was built on this host, so disks, taps and real-time CPUs are
    /// there already).
    public func incomingRefusal(_ header: SnapshotHeader) -> String? {
        if header.vcpus != definition.vcpus { return "the VM has \(header.vcpus) vCPUs, the definition here \(definition.vcpus)" }
        if header.memoryBytes != memory.totalSize { return "the VM has \(header.memoryBytes >> 20) MiB, the definition here \(memory.totalSize >> 20) MiB" }
        if header.cpuTemplate != cpuTemplate.rawValue { return "the VM runs CPU template \(header.cpuTemplate), this host gives \(cpuTemplate.rawValue)" }
        if header.cpuidDigest != cpuidDigest {
            return "this host's CPUID differs from the source's (digest \(cpuidDigest), the source \(header.cpuidDigest)): the guest chose its code paths by those CPU features"
        }
        if header.diskBytes != diskBytes { return "disk sizes here \(diskBytes), the VM's \(header.diskBytes)" }
        return nil
    }

    /// Takes pages until the state comes, loads it, and runs nothing until the source says `go`.
    /// Throws (the VM is then discarded) on a broken stream, an `abandon`, or a bad frame.
    /// Returns the console output the source sent, if any.
    @discardableResult
    public func receiveMigration(_ channel: MigrationChannel) throws -> [UInt8]? {
        var pages = 0
        var console: [UInt8]? = nil
        receiving: while true {
            switch try channel.receive() {
            case let .pages(offset, bytes):
                try bytes.withUnsafeBytes { try memory.writeImage(at: offset, bytes: $0) }
                pages += bytes.count / 4096
            case let .zero(offset, length):
                try memory.writeImage(at: offset, bytes: nil, zeroLength: length)
                pages += Int(length / 4096)
            case let .state(body):
                do {
                    let t0 = monotonicNanoseconds()
                    let state = try SnapshotCodec.decode(body[...], file: "migration stream")
                    let t1 = monotonicNanoseconds()
                    try applyState(state, from: "migration")
                    logger.info("migration of \(definition.name): state of \(body.count >> 10) KiB decoded in \(StartupTrace.ms(t1 - t0)) ms, applied in \(StartupTrace.ms(monotonicNanoseconds() - t1)) ms")
                } catch {
                    try? channel.send(.failed("\(error)"))
                    throw error
                }
                break receiving
            case let .console(bytes): console = bytes
            case let .preview(body):
                // Decoded only to warm up the decoder (see `migrate`); what counts comes with `state`.
                _ = try? SnapshotCodec.decode(body[...], file: "migration stream (preview)")
            case let .abandon(reason): throw MigrationError("the source abandoned the migration: \(reason)")
            case let other: throw MigrationError("unexpected \(other.name) in the migration stream")
            }
        }
        try channel.send(.ready)
        guard case .go = try channel.receive() else { throw MigrationError("the source did not say go") }
        // The source let its disks go when it paused for the last round: they are this VMM's
        // now. One that cannot be locked means someone else has it: the VM does not run here.
        for d in diskImages { try d.lock() }
        try channel.send(.running)
        logger.notice("migration of \(definition.name) received: \(pages) pages; the VM runs here")
        return console
    }
}
