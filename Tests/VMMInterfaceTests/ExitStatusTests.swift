import SystemPackage
import Testing
import VMMInterface
#if canImport(Glibc)
import Glibc
#endif

@Suite struct ExitStatusTests {
    /// docs/exit-status.md's table.
    @Test(arguments: [
        (VMMExitStatus.guestPoweredOff, Int32(0)), (.vmmError, 1), (.guestReset, 3), (.tripleFault, 4), (.internalError, 5),
        (.guestFailure, 6), (.vcpuFailure, 7), (.usage, 64), (.signal(15), 143), (.signal(9), 137), (.signal(31), 159),
    ])
    func documentedCodes(_ status: VMMExitStatus, _ code: Int32) {
        #expect(status.code == code)
        #expect(VMMExitStatus(code: code) == status)
    }

    @Test func everyCodeRoundTrips() {
        for code in Int32(-1)...Int32(300) { #expect(VMMExitStatus(code: code).code == code) }
        #expect(VMMExitStatus(code: 2) == .other(2))
    }
}

@Suite struct ExitReportTests {
    @Test func lineRoundTrips() {
        let r = VMMExitReport(status: .tripleFault, reason: "triple fault on vCPU 0 (KVM_EXIT_SHUTDOWN), RIP 0x100377")
        #expect(r.line == "4 triple fault on vCPU 0 (KVM_EXIT_SHUTDOWN), RIP 0x100377\n")
        #expect(VMMExitReport(parsing: r.line) == r)
    }

    @Test func aReasonStaysOneLine() {
        let r = VMMExitReport(status: .vmmError, reason: "first\nsecond")
        #expect(r.line == "1 first second\n")
        #expect(VMMExitReport(parsing: r.line)?.reason == "first second")
    }

    /// What csandbox.c's SIGSYS handler writes (SeccompTests checks the real one).
    @Test func theSigsysHandlersReportParses() throws {
        let text = "159 seccomp: thread vcpu0 (vcpu filter) of VM web made forbidden syscall 41 (socket)\n"
        let r = try #require(VMMExitReport(parsing: text))
        #expect(r.status == .signal(SIGSYS))
        #expect(r.reason.hasPrefix(VMMExitReport.seccompPrefix))
        #expect(VMMExitReport.seccompSyscall(in: r.reason) == "socket")
        #expect(VMMExitReport.seccompSyscall(in: "rtvisor-vmm killed by signal 31 (SIGSYS): " + r.reason) == "socket")
        #expect(VMMExitReport.seccompSyscall(in: "guest powered off") == nil)
    }

    @Test func garbageIsNotAReport() {
        #expect(VMMExitReport(parsing: "") == nil)
        #expect(VMMExitReport(parsing: "powered off") == nil)
        #expect(VMMExitReport(parsing: "0") == VMMExitReport(status: .guestPoweredOff, reason: ""))
    }

    @Test func writeThenReadThroughAFile() throws {
        let dir = "/tmp/rtvisor-exit-report-\(getpid())"
        mkdir(dir, 0o700)
        defer { unlink(dir + "/exit-status"); rmdir(dir) }
        let r = VMMExitReport(status: .guestReset, reason: "guest reset (reboot)")
        try r.write(to: dir + "/exit-status")
        #expect(VMMExitReport.read(dir + "/exit-status") == r)
        #expect(access(dir + "/exit-status.tmp", F_OK) != 0)
        #expect(VMMExitReport.read(dir + "/missing") == nil)
    }
}
