import Config
import KVM
import Memory
import Posix
import SystemPackage
import VMMInterface
#if canImport(Glibc)
import Glibc
#endif
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

public struct SnapshotError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// Pause, resume and snapshot of a running machine (docs/snapshot.md). One caller at a time (the
/// control server's thread); a stop may come from anywhere meanwhile.
extension Machine {
    public var runState: VMMRunState { runControl.withLock { $0 } }

    /// Stops the vCPUs after their current exit, then the devices' own threads. Idempotent.
    public func pause() throws {
        try runControl.withLock { state in
            guard state == .running else { return }
            guard pauseGate.pause(vcpus, abandon: { stop.isStopping }) else { throw SnapshotError("the VM is stopping") }
            ioNotifier?.pause()
            for d in pciDevices { d.pause() }
            state = .paused
        }
    }

    public func resume() {
        runControl.withLock { state in
            guard state == .paused else { return }
            for d in pciDevices { d.resume() }
            ioNotifier?.resume()
            // The guest's kvmclock learns it was stopped, so its soft-lockup watchdog does not fire.
            for v in vcpus { v.notifyClockPaused() }
            pauseGate.resume()
            state = .running
        }
    }

    /// Saves the VM into `stateFile` and `memoryFile` (empty, writable), pausing it for the time
    /// it takes, then resumes, stops or stays paused as asked.
    public func snapshot(_ request: SnapshotRequest, stateFile: FileDescriptor, memoryFile: FileDescriptor) throws -> SnapshotSummary {
        guard passthrough.isEmpty else {
            throw SnapshotError("VM \(definition.name) has passthrough devices: their state lives in the host device, which cannot be saved (docs/snapshot.md)")
        }
        guard definition.channels.isEmpty else {
            throw SnapshotError("VM \(definition.name) has shared-memory channels: their memory belongs to the other peers too, which cannot be saved with it (docs/channels.md)")
        }
        let wasPaused = runState == .paused
        let started = monotonicNanoseconds()
        try pause()
        var resumeAfter = !wasPaused && request.then == .resume
        defer { if resumeAfter { resume() } }
        let summary: SnapshotSummary
        do {
            let state = try captureState()
            let body = try SnapshotCodec.encode(state)
            let header = SnapshotHeader(vm: definition.name, createdAt: Date().timeIntervalSince1970, vcpus: definition.vcpus,
                                        memoryBytes: memory.totalSize, cpuTemplate: cpuTemplate.rawValue, cpuidDigest: cpuidDigest,
                                        definitionDigest: ContentDigest.fnv1a(request.definitionJSON), diskBytes: diskBytes)
            let file = try SnapshotStateFile.encode(header: header, body: body)
            do { try writeAll(stateFile.rawValue, file) } catch { throw SnapshotError("writing the state file: \(error)") }
            let data: UInt64
            do { data = try memory.writeImage(to: memoryFile) } catch { throw SnapshotError("writing the memory file: \(error)") }
            summary = SnapshotSummary(header: header, stateBytes: file.count, memoryDataBytes: data,
                                      pausedMilliseconds: Double(monotonicNanoseconds() - started) / 1e6)
        } catch {
            resumeAfter = !wasPaused
            throw error
        }
        logger.notice("snapshot of \(definition.name): \(summary.stateBytes) bytes of state, \(summary.memoryDataBytes >> 20) MiB of \(memory.totalSize >> 20) MiB memory written, paused \(Int(summary.pausedMilliseconds)) ms")
        // With `.stop` the VM stays paused: the caller answers its peer first, then calls
        // `stopAfterSnapshot()` (stopping now would end the process before the answer is out).
        return summary
    }

    /// Ends the VM after `snapshot(then: .stop)`: the VMM exits with `savedAndStopped`.
    public func stopAfterSnapshot() {
        stop.request(.savedAndStopped)
        pauseGate.resume()
    }

    /// KVM's state, then the devices'. Called with the VM paused.
    func captureState() throws -> MachineState {
        let msrs = try system.msrIndexList()
        let vmState = try vm.captureState()
        let vcpuStates = try vcpus.map { try $0.captureState(msrIndices: msrs, system: system) }
        return MachineState(vm: vmState, vcpus: vcpuStates, devices: deviceStates())
    }
}

/// Reading a snapshot directory for a restore: every check that can refuse it runs before a VM exists.
enum SnapshotReader {
    struct Loaded {
        let header: SnapshotHeader
        let state: MachineState
        let memoryFile: FileDescriptor
    }

    static func load(_ source: SnapshotSource, definition def: VMDefinition, cpuTemplate: String, cpuidDigest: String) throws -> Loaded {
        let dir = source.directory
        let statePath = SnapshotLayout.state(in: dir)
        guard def.passthrough.isEmpty else { throw VMMError.setup("snapshot \(dir): a VM with passthrough devices cannot be restored (docs/snapshot.md)") }
        guard def.channels.isEmpty else { throw VMMError.setup("snapshot \(dir): a VM with shared-memory channels cannot be restored (docs/channels.md)") }
        let bytes: [UInt8]
        do {
            let fd = try openSnapshotFile(statePath, "snapshot state")
            defer { try? fd.close() }
            bytes = try readToEnd(fd.rawValue)
        } catch let e as VMMError { throw e } catch { throw VMMError.setup("snapshot \(dir): \(statePath): \(error)") }
        let (header, body): (SnapshotHeader, ArraySlice<UInt8>)
        do { (header, body) = try SnapshotStateFile.decode(bytes, file: statePath) } catch { throw VMMError.setup("snapshot \(dir): \(error)") }
        func refuse(_ why: String) -> VMMError { VMMError.setup("snapshot \(dir): \(why)") }
        guard header.vcpus == def.vcpus else { throw refuse("saved with \(header.vcpus) vCPUs, the definition has \(def.vcpus)") }
        let ram = UInt64(def.memoryMiB) << 20
        guard header.memoryBytes == ram else { throw refuse("saved with \(header.memoryBytes >> 20) MiB of memory, the definition has \(def.memoryMiB) MiB") }
        guard header.cpuTemplate == cpuTemplate else { throw refuse("saved with CPU template \(header.cpuTemplate), this host and definition give \(cpuTemplate)") }
        guard header.cpuidDigest == cpuidDigest else {
            throw refuse("saved on a host whose CPUID differs from this one's (digest \(header.cpuidDigest), here \(cpuidDigest)): the guest chose its code paths by those CPU features")
        }
        let state = try SnapshotCodec.decode(body, file: statePath)
        guard state.vcpus.count == def.vcpus else { throw refuse("\(statePath): \(state.vcpus.count) vCPU states for \(def.vcpus) vCPUs") }
        let memoryPath = SnapshotLayout.memory(in: dir)
        let memoryFile = try openSnapshotFile(memoryPath, "snapshot memory")
        var st = stat()
        guard fstat(memoryFile.rawValue, &st) == 0, st.st_mode & S_IFMT == S_IFREG else {
            try? memoryFile.close()
            throw refuse("\(memoryPath): not a regular file")
        }
        guard UInt64(st.st_size) == ram else {
            try? memoryFile.close()
            throw refuse("\(memoryPath): \(GuestMemoryError.imageSize(expected: ram, actual: UInt64(st.st_size)))")
        }
        return Loaded(header: header, state: state, memoryFile: memoryFile)
    }

    /// A snapshot file found by the rules guest files follow (docs/sandbox.md: only root's
    /// symlinks, a regular file) and opened through that one lookup.
    static func openSnapshotFile(_ path: String, _ what: String) throws -> FileDescriptor {
        do { return try GuestFile.locate(path, field: what, allowing: [.regularFile]).open(O_RDONLY) } catch {
            throw VMMError.setup("\(error)")
        }
    }

    /// Disks are the definition's, opened by the guest files phase: each must have the size it had.
    static func checkDisks(_ header: SnapshotHeader, sizes: [UInt64], directory: String) throws {
        guard header.diskBytes.count == sizes.count else {
            throw VMMError.setup("snapshot \(directory): saved with \(header.diskBytes.count) disks, the definition has \(sizes.count)")
        }
        for (i, (saved, now)) in zip(header.diskBytes, sizes).enumerated() where saved != now {
            throw VMMError.setup("snapshot \(directory): $.disks[\(i)] has \(now) bytes, \(saved) when the VM was saved: the guest's view of it would be wrong")
        }
    }

    /// Guest RAM from the memory file: copied into fresh memory, or mapped copy-on-write.
    static func memory(_ loaded: Loaded, mode: RestoreMemoryMode, backing: MemoryBacking, directory: String) throws -> GuestMemory {
        do {
            switch mode {
            case .copy:
                let memory = try GuestMemory.standard(bytes: loaded.header.memoryBytes, backing: backing)
                try memory.readImage(from: loaded.memoryFile)
                return memory
            case .map:
                guard !backing.hugePages else {
                    throw VMMError.setup("snapshot \(directory): --restore-memory map cannot use huge pages (realtime.huge_pages); restore with copy")
                }
                return try GuestMemory.mappingImage(loaded.memoryFile, bytes: loaded.header.memoryBytes, backing: backing)
            }
        } catch let e as VMMError { throw e } catch {
            throw VMMError.setup("snapshot \(directory): guest memory: \(error)")
        }
    }
}
