import Foundation
import Testing

/// The VMM against freestanding test guests on the real /dev/kvm: fast and precise.
@Suite(.enabled(if: Env.kvmAvailable, Env.noKVMReason))
struct InmateTests {
    func boot(_ inmate: String, vcpus: Int = 1, cmdline: String = "", extra: String = "", timeout: Double = 30) throws -> VMMResult {
        let def = VMM.definition(name: inmate, kernel: try Env.inmate(inmate), vcpus: vcpus, cmdline: cmdline, extra: extra)
        return try VMM.run(config: try VMM.writeDefinition(def), timeout: timeout)
    }

    @Test func helloPrintsMarkerAndPowersOff() throws {
        let r = try boot("hello", cmdline: "greeting=hi")
        #expect(r.status == 0, "stderr: \(r.stderr)")
        #expect(r.console.contains("Hello from inmate"))
        #expect(r.console.contains("cmdline: \"greeting=hi\""))
        #expect(r.console.contains("INMATE hello PASS"))
        #expect(r.stderr.contains("boot marker: guest hello signalled ready"))
        #expect(r.stderr.contains("guest powered off"))
        #expect(r.stderr.contains("PVH entry 0x"))
        // The memory map the guest received describes the RAM we gave it (64 MiB).
        #expect(r.console.contains("memmap 0x000100000-0x003ffffff ram"))
    }

    @Test func consoleCanGoToALogFile() throws {
        let dir = try VMM.tempDir()
        let log = dir.appendingPathComponent("console.log").path
        let def = VMM.definition(name: "hello", kernel: try Env.inmate("hello"))
        let r = try VMM.run(config: try VMM.writeDefinition(def, in: dir), arguments: ["--console-log", log], timeout: 30)
        #expect(r.status == 0)
        #expect(!r.stdout.contains("INMATE hello PASS"))
        #expect(try String(contentsOfFile: log, encoding: .utf8).contains("INMATE hello PASS"))
    }

    @Test func twoVCPUsComeUpThroughInitSipi() throws {
        let r = try boot("smp", vcpus: 2, cmdline: "expect_cpus=2")
        #expect(r.status == 0, "console: \(r.console)\nstderr: \(r.stderr)")
        #expect(r.console.contains("2 CPUs, APIC IDs: 0 1"))
        #expect(r.console.contains("AP 1 up"))
        #expect(r.console.contains("INMATE smp PASS"))
    }

    @Test func fourVCPUs() throws {
        let r = try boot("smp", vcpus: 4, cmdline: "expect_cpus=4")
        #expect(r.status == 0, "console: \(r.console)\nstderr: \(r.stderr)")
        #expect(r.console.contains("4 CPUs, APIC IDs: 0 1 2 3"))
        #expect(r.console.contains("INMATE smp PASS"))
    }

    @Test func resetThroughI8042EndsWithRebootStatus() throws {
        let r = try boot("reset")
        #expect(r.status == 3, "stderr: \(r.stderr)")
        #expect(r.stderr.contains("guest reset (reboot)"))
        #expect(!r.console.contains("FAIL"))
    }

    @Test func tripleFaultEndsWithItsStatusAndReason() throws {
        let r = try boot("triplefault")
        #expect(r.status == 4, "stderr: \(r.stderr)")
        #expect(r.stderr.contains("triple fault on vCPU 0 (KVM_EXIT_SHUTDOWN), RIP 0x"))
    }

    @Test func guestReportedFailureEndsWithFailureStatus() throws {
        // The smp inmate fails (code 2) when told to expect more CPUs than the MP table lists.
        let r = try boot("smp", vcpus: 1, cmdline: "expect_cpus=3 ap_timeout_ms=50")
        #expect(r.status == 6, "stderr: \(r.stderr)")
        #expect(r.stderr.contains("guest reported failure code 2"))
    }

    @Test func cpuidPolicyIsApplied() throws {
        // This host's nested KVM ignores most CPUID bits the VMM sets (docs/inmates.md); cx16 is
        // one it keeps clear, so the check is meaningful on hosts that honour KVM_SET_CPUID2.
        let r = try boot("cpuid", cmdline: "absent=cx16", extra: "\"cpu\": {\"template\": \"host\", \"disable_features\": [\"cx16\"]}")
        #expect(r.status == 0, "console: \(r.console)\nstderr: \(r.stderr)")
        #expect(r.console.contains("INMATE cpuid PASS"))
        #expect(r.stderr.contains("hidden features: cx16"))
    }

    /// On a host KVM that emulates ring 0 (kvm_pvm), popcnt and cmpxchg16b are missing from its
    /// emulator: the VMM must end with status 5 and name the instruction, its bytes, RIP and the
    /// CPU feature to hide. On hardware-virtualised KVM the instructions run and the inmate passes.
    @Test(arguments: [("popcnt", "f3 48 0f b8 c7", "popcnt: hide CPU feature \"popcnt\""),
                      ("cmpxchg16b", "f0 48 0f c7", "cmpxchg16b: hide CPU feature \"cx16\"")])
    func emulationFailureIsReportedWithInstructionAndFeature(insn: String, bytes: String, hint: String) throws {
        let r = try boot("badinsn", cmdline: "insn=\(insn)")
        if FileManager.default.fileExists(atPath: "/sys/module/kvm_pvm") {
            #expect(r.status == 5, "stderr: \(r.stderr)")
            #expect(r.stderr.contains("KVM internal error on vCPU 0: emulation failure (suberror 1), RIP 0x"))
            #expect(r.stderr.contains("instruction bytes \(bytes)"))
            #expect(r.stderr.contains(hint))
        } else {
            #expect(r.status == 0, "stderr: \(r.stderr)")
            #expect(r.console.contains("badinsn: \(insn) ran"))
        }
    }

    @Test func sigtermStopsTheVMWithSignalStatus() throws {
        // A guest that runs for a long time (a large pioloop), stopped by SIGTERM.
        let def = VMM.definition(name: "long", kernel: try Env.inmate("pioloop"), cmdline: "count=100000000")
        let path = try VMM.writeDefinition(def)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Env.vmmBinary)
        p.arguments = ["--config", path, "--no-console-input"]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        usleep(500_000)
        p.terminate()
        p.waitUntilExit()
        #expect(p.terminationReason == .exit)
        #expect(p.terminationStatus == 128 + SIGTERM)
    }
}

/// Bad input fails fast with a clear error naming the file, field and reason.
@Suite struct DefinitionErrorTests {
    @Test func typoInDefinitionNamesFileKeyAndSuggestion() throws {
        let path = try VMM.writeDefinition(#"{"name": "t", "memroy_mib": 64, "kernel": "/bin/true"}"#)
        let r = try VMM.run(config: path, timeout: 10)
        #expect(r.status == 1)
        #expect(r.stderr.contains("\(path): $.memroy_mib: unknown key (did you mean \"memory_mib\"?)"))
        #expect(r.stderr.contains("\(path): $.memory_mib: is required"))
        #expect(r.seconds < 5)
    }

    @Test func missingInitrdIsNamed() throws {
        let path = try VMM.writeDefinition(#"{"name": "t", "memory_mib": 64, "kernel": "/bin/true", "initrd": "/nonexistent/initrd.cpio"}"#)
        let r = try VMM.run(config: path, timeout: 10)
        #expect(r.status == 1)
        #expect(r.stderr.contains("$.initrd: /nonexistent/initrd.cpio: No such file or directory"))
    }

    @Test(.enabled(if: Env.kvmAvailable, Env.noKVMReason))
    func truncatedKernelFailsFast() throws {
        let full = try Data(contentsOf: URL(fileURLWithPath: try Env.inmate("hello")))
        let dir = try VMM.tempDir()
        let truncated = dir.appendingPathComponent("truncated.elf")
        try full.prefix(full.count / 2).write(to: truncated)
        let path = try VMM.writeDefinition(VMM.definition(name: "trunc", kernel: truncated.path), in: dir)
        let r = try VMM.run(config: path, timeout: 10)
        #expect(r.status == 1)
        #expect(r.stderr.contains("\(truncated.path): truncated image: segment"), "stderr: \(r.stderr)")
    }

    @Test func notAKernelIsRejected() throws {
        let dir = try VMM.tempDir()
        let junk = dir.appendingPathComponent("junk.bin")
        try Data(repeating: 0x90, count: 4096).write(to: junk)
        let path = try VMM.writeDefinition(VMM.definition(name: "junk", kernel: junk.path), in: dir)
        let r = try VMM.run(config: path, timeout: 10)
        #expect(r.status == 1)
        #expect(r.stderr.contains("\(junk.path): not an ELF vmlinux or a bzImage"), "stderr: \(r.stderr)")
    }

    @Test func checkModeValidatesWithoutRunning() throws {
        let path = try VMM.writeDefinition(#"{"name": "ok", "memory_mib": 64, "kernel": "/bin/true"}"#)
        let r = try VMM.run(config: path, arguments: ["--check"], timeout: 10)
        #expect(r.status == 0)
        #expect(r.stdout.contains("OK (ok: 1 vCPU, 64 MiB)"))
    }
}
