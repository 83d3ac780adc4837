import CLinux
import Foundation
import Testing
@testable import VirtioBlock

/// A disk image is exclusive against QEMU as against another rtvisor VM (issue 16): rtvisor
/// takes QEMU's byte-range image locks besides its flock.
@Suite struct ImageLockTests {
    static let qemu = "/usr/bin/qemu-system-x86_64"

    /// What `process` wrote to `pipe` until it closed it, or until `seconds` passed (then the
    /// process is killed: a QEMU that did not refuse the image would otherwise wait forever).
    static func output(of process: Process, _ pipe: Pipe, within seconds: Double) -> String {
        final class Box: @unchecked Sendable { var data = Data() }
        let box = Box(), done = DispatchSemaphore(value: 0)
        Thread { box.data = pipe.fileHandleForReading.readDataToEndOfFile(); done.signal() }.start()
        if done.wait(timeout: .now() + seconds) == .timedOut {
            kill(process.processIdentifier, SIGKILL)
            done.wait()
            return "(still running after \(seconds) s) " + String(decoding: box.data, as: UTF8.self)
        }
        return String(decoding: box.data, as: UTF8.self)
    }

    /// Another open file description, as another process would hold (OFD locks are per description).
    func otherHolder(_ path: String) -> Int32 { open(path, O_RDWR | O_CLOEXEC) }

    @Test func aWritableImageHoldsQEMUsWriteLockBytes() throws {
        let image = TempImage(sectors: 8)
        let disk = try BlockImage(path: image.path, readOnly: false)
        let other = otherHolder(image.path)
        defer { close(other) }
        // What QEMU tests before it opens an image for writing: both bytes are taken.
        #expect(clinux_ofd_lock(other, 101, 1, 1) == 1, "write permission held")
        #expect(clinux_ofd_lock(other, 201, 1, 1) == 1, "write not shared")
        _ = disk
    }

    @Test func anImageQEMUWritesIsRefusedReadWriteAndReadOnly() throws {
        let image = TempImage(sectors: 8)
        let qemuLike = otherHolder(image.path)
        defer { close(qemuLike) }
        #expect(clinux_ofd_lock(qemuLike, 101, 0, 0) == 0)
        #expect(clinux_ofd_lock(qemuLike, 201, 0, 0) == 0)
        for readOnly in [false, true] {
            #expect {
                _ = try BlockImage(path: image.path, readOnly: readOnly)
            } throws: { e in (e as? BlockImageError)?.reason.contains("by its image locks") == true }
        }
    }

    @Test func twoReadOnlyUsersShareAnImage() throws {
        let image = TempImage(sectors: 8)
        let a = try BlockImage(path: image.path, readOnly: true)
        let b = try BlockImage(path: image.path, readOnly: true)
        #expect(a.size == b.size)
        #expect(throws: BlockImageError.self) { _ = try BlockImage(path: image.path, readOnly: false) }
    }

    /// Against the real peer: QEMU 7.2 refuses an image a VM runs on, and rtvisor refuses one
    /// QEMU runs on.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: qemu), "qemu-system-x86_64 is not installed"))
    func qemuAndRtvisorExcludeEachOther() throws {
        let image = TempImage(sectors: 2048)
        func startQEMU() throws -> (Process, Pipe) {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: Self.qemu)
            p.arguments = ["-M", "pc", "-accel", "tcg", "-nodefaults", "-display", "none", "-S", "-monitor", "none",
                           "-drive", "file=\(image.path),format=raw,if=virtio"]
            let err = Pipe()
            p.standardError = err
            p.standardOutput = FileHandle.nullDevice
            try p.run()
            return (p, err)
        }
        // rtvisor first: QEMU gives up with its lock error.
        do {
            let disk = try BlockImage(path: image.path, readOnly: false)
            let (q, err) = try startQEMU()
            // QEMU exits at once, which closes its stderr (Foundation's waitUntilExit is not
            // reliable for a child that quick here, so the end of its output is what we wait for).
            let text = Self.output(of: q, err, within: 20)
            kill(q.processIdentifier, SIGKILL)
            #expect(text.contains("Failed to get \"write\" lock"), "\(text)")
            _ = disk
        }
        // QEMU first: rtvisor refuses once QEMU holds its locks.
        let (q, _) = try startQEMU()
        defer { kill(q.processIdentifier, SIGKILL) }
        let probe = otherHolder(image.path)
        defer { close(probe) }
        let deadline = Date().addingTimeInterval(20)
        while clinux_ofd_lock(probe, 101, 1, 1) != 1 && Date() < deadline && q.isRunning { usleep(20_000) }
        #expect(throws: BlockImageError.self) { _ = try BlockImage(path: image.path, readOnly: false) }
        #expect(throws: BlockImageError.self) { _ = try BlockImage(path: image.path, readOnly: true) }
    }
}
