@testable import Posix
import SystemPackage
import Testing
#if canImport(Glibc)
import Glibc
#endif

@Suite struct SyscallTests {
    /// The texts tests and docs quote ("…: No such file or directory") come from here.
    @Test func errnoMessageIsStrerrorsText() {
        #expect(errnoMessage(ENOENT) == "No such file or directory")
        #expect(errnoMessage(EPERM) == "Operation not permitted")
        #expect(errnoMessage(EBUSY) == String(cString: strerror(EBUSY)))
        // The default argument is the errno of the moment of the call.
        let current = { () -> String in errno = EACCES; return errnoMessage() }()
        #expect(current == "Permission denied")
    }

    @Test func retryInterruptedCallsAgainAfterEINTROnly() throws {
        var calls = 0
        let result = try retryInterrupted { () -> Int in
            calls += 1
            if calls < 3 { errno = EINTR; return -1 }
            return 7
        }
        #expect(result == 7 && calls == 3)

        calls = 0
        #expect(throws: Errno.badFileDescriptor) {
            try retryInterrupted { () -> Int32 in calls += 1; errno = EBADF; return -1 }
        }
        #expect(calls == 1)
    }

    @Test func writeAllWritesEveryByte() throws {
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        defer { close(fds[0]) }
        let bytes = (0..<10_000).map { UInt8(truncatingIfNeeded: $0) }
        try writeAll(fds[1], bytes)
        close(fds[1])
        var back: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while let n = try? retryInterrupted({ read(fds[0], &buf, buf.count) }), n > 0 { back += buf[0..<n] }
        #expect(back == bytes)
        #expect(throws: Errno.badFileDescriptor) { try writeAll(-1, [1]) }
    }

    @Test func hostFilesWritesOnceAndReportsTheFileAndErrno() throws {
        let path = "/tmp/rtvisor-posix-test-\(getpid())"
        defer { unlink(path) }
        try HostFiles.write(path, "1 2\n")
        #expect(HostFiles.read(path) == "1 2\n")
        #expect(HostFiles.line(path) == "1 2")
        #expect(throws: HostFileError(path: "/nonexistent/x", value: "v", errno: ENOENT)) { try HostFiles.write("/nonexistent/x", "v") }
        #expect(HostFileError(path: "/p", value: "v", errno: ENOENT).description == "cannot write \"v\" to /p: No such file or directory")
    }
}
