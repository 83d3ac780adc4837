import CKVM
import CSandbox
import Testing
@testable import Sandbox
#if canImport(Glibc)
import Glibc
#endif

/// The compiled programs, decoded: every thread kind's BPF answers as its policy says, and
/// nothing else gets through (issue 17: compiled once, so the program itself is what is tested).
@Suite struct FilterProgramTests {
    static let allow: UInt32 = 0x7FFF_0000, trap: UInt32 = 0x0003_0000, log: UInt32 = 0x7FFC_0000, errno: UInt32 = 0x0005_0000

    func program(_ kind: ThreadKind, trapping: Bool = true, passthrough: Bool = false) throws -> ClassicBPF {
        let p = try FilterProgram.compile(SeccompPolicy.rules(for: kind, passthrough: passthrough),
                                          defaultAction: trapping ? csandbox_act_trap() : csandbox_act_log())
        #expect(p.instructionCount > 0 && p.bytes.count == 8 * p.instructionCount)
        return ClassicBPF(p.bytes)
    }

    func nr(_ name: String) -> Int32 { Int32(csandbox_syscall_number(name)) }

    func expected(_ action: RuleAction) -> UInt32 {
        switch action {
        case .allow: Self.allow
        case let .fail(e): Self.errno | UInt32(e)
        }
    }

    @Test(arguments: ThreadKind.allCases)
    func everyListedSyscallIsAnsweredAsItsRuleSays(kind: ThreadKind) throws {
        let bpf = try program(kind)
        for rule in SeccompPolicy.rules(for: kind) {
            guard let checks = rule.anyOf else {
                #expect(try bpf.run(ClassicBPF.data(nr: nr(rule.name))) == expected(rule.action), "\(kind) \(rule.name)")
                continue
            }
            for c in checks {
                var args = [UInt64](repeating: 0, count: 6)
                // Bits outside the mask do not matter.
                args[Int(c.argument)] = c.value | ~c.mask
                #expect(try bpf.run(ClassicBPF.data(nr: nr(rule.name), args: args)) == expected(rule.action), "\(kind) \(rule.name) \(c.label)")
            }
        }
    }

    @Test(arguments: ThreadKind.allCases)
    func argumentsNoCheckListsAreRefused(kind: ThreadKind) throws {
        let bpf = try program(kind)
        for rule in SeccompPolicy.rules(for: kind) where rule.action == .allow {
            guard let checks = rule.anyOf, checks.allSatisfy({ $0.mask == 0xFFFF_FFFF || $0.mask == .max }) else { continue }
            let argument = Int(checks[0].argument)
            let listed = Set(checks.filter { Int($0.argument) == argument }.map { $0.value & 0xFFFF_FFFF })
            let other = (UInt64(0xDEAD_BEEF)...).first { !listed.contains($0) }!
            var args = [UInt64](repeating: 0, count: 6)
            args[argument] = other
            #expect(try bpf.run(ClassicBPF.data(nr: nr(rule.name), args: args)) == Self.trap, "\(kind) \(rule.name) with arg\(argument) = \(other)")
        }
    }

    @Test(arguments: ThreadKind.allCases)
    func unlistedSyscallsTrapOrAreLogged(kind: ThreadKind) throws {
        let listed = Set(SeccompPolicy.rules(for: kind).map(\.name))
        let enforcing = try program(kind), logging = try program(kind, trapping: false)
        for name in ["execve", "fork", "ptrace", "mount", "setns", "init_module", "bpf", "kill", "userfaultfd", "socket", "connect"] where !listed.contains(name) {
            #expect(try enforcing.run(ClassicBPF.data(nr: nr(name))) == Self.trap, "\(kind) \(name)")
            #expect(try logging.run(ClassicBPF.data(nr: nr(name))) == Self.log, "\(kind) \(name) (log mode)")
        }
    }

    @Test func noNewExecutableMemoryAndSignalsOnlyWithinTheProcess() throws {
        let bpf = try program(.vcpu)
        let protExec = UInt64(PROT_EXEC), protRW = UInt64(PROT_READ | PROT_WRITE)
        #expect(try bpf.run(ClassicBPF.data(nr: nr("mprotect"), args: [0x1000, 4096, protRW])) == Self.allow)
        #expect(try bpf.run(ClassicBPF.data(nr: nr("mprotect"), args: [0x1000, 4096, protRW | protExec])) == Self.trap)
        #expect(try bpf.run(ClassicBPF.data(nr: nr("tgkill"), args: [UInt64(getpid()), 7, 12])) == Self.allow)
        #expect(try bpf.run(ClassicBPF.data(nr: nr("tgkill"), args: [1, 1, 9])) == Self.trap)
    }

    @Test func anotherArchitectureIsKilled() throws {
        let bpf = try program(.vmm)
        let i386: UInt32 = 0x4000_0003
        let action = try bpf.run(ClassicBPF.data(nr: nr("write"), arch: i386))
        #expect(action != Self.allow && action != Self.trap)
    }

    @Test func passthroughAddsItsIoctlsOnlyWhenAsked() throws {
        let plain = try program(.vcpu), vfio = try program(.vcpu, passthrough: true)
        let reset = UInt64(CKVM_VFIO_DEVICE_RESET)
        #expect(try plain.run(ClassicBPF.data(nr: nr("ioctl"), args: [3, reset])) == Self.trap)
        #expect(try vfio.run(ClassicBPF.data(nr: nr("ioctl"), args: [3, reset])) == Self.allow)
    }

    @Test func compilingTwiceGivesTheSameProgram() throws {
        let rules = SeccompPolicy.rules(for: .io)
        #expect(try FilterProgram.compile(rules, defaultAction: csandbox_act_trap()) == FilterProgram.compile(rules, defaultAction: csandbox_act_trap()))
    }
}
