import Arch
import KVM
import Memory
import Testing

@Suite struct KVMOpenTests {
    @Test func missingDeviceNamesPathAndHint() {
        #expect {
            _ = try KVMSystem(path: "/nonexistent/kvm")
        } throws: { error in
            let e = error as? KVMError
            return e?.operation == "open(/nonexistent/kvm)" && (e?.description.contains("no KVM on this host") ?? false)
        }
    }
}

@Suite(.enabled(if: (try? KVMSystem()) != nil, "/dev/kvm is not present or not accessible: skipping KVM ioctl tests"))
struct KVMIoctlTests {
    @Test func supportedCPUIDHasBasicLeaves() throws {
        let kvm = try KVMSystem()
        let cpuid = try kvm.supportedCPUID()
        #expect(cpuid.contains { $0.function == 0 })
        #expect(cpuid.contains { $0.function == 1 })
    }

    @Test func errorsNameTheIoctl() throws {
        let vm = try KVMSystem().createVM()
        // Slot memory that is not page aligned is refused by KVM with EINVAL.
        #expect {
            try vm.setUserMemoryRegion(slot: 0, guestAddress: 0x123, size: 4096, hostAddress: 0x1000)
        } throws: { error in
            (error as? KVMError)?.operation == "KVM_SET_USER_MEMORY_REGION" && (error as? KVMError)?.errno == .invalidArgument
        }
    }

    @Test func cpuidTableRoundTrips() throws {
        let kvm = try KVMSystem()
        let vm = try kvm.createVM()
        let vcpu = try vm.createVCPU(id: 0)
        // cx16 and the APIC-ID field are ones every KVM keeps as set; the nested kvm_pvm host
        // here overrides XSAVE/POPCNT/SMAP bits on its own (docs/inmates.md), so those are not
        // checked at this level.
        let policy = CPUIDPolicy(template: .host, disabledFeatures: ["cx16"])
        let table = policy.apply(to: try kvm.supportedCPUID(), vcpuID: 0, vcpuCount: 2, hostEmulatesRing0: false)
        try vcpu.setCPUID(table)
        let back = try vcpu.cpuid()
        let leaf1 = try #require(back.first { $0.function == 1 })
        #expect(leaf1.ecx & (1 << 13) == 0)
        #expect(leaf1.ecx & (1 << 31) != 0)
        #expect((leaf1.ebx >> 16) & 0xFF == 2)
    }
}

@Suite struct SavedMSROrderTests {
    @Test func theTSCComesFirstAsyncPageFaultsAfterTheirVectorAndTheDeadlineLast() {
        let saved = [0x6E0, 0x4B56_4D02, 0x174, 0x10, 0x4B56_4D06, 0xC000_0080].map { SavedMSR(index: UInt32($0), value: 1) }
        #expect(SavedMSR.restoreOrder(saved).map(\.index) == [0x10, 0x174, 0x4B56_4D06, 0xC000_0080, 0x4B56_4D02, 0x6E0])
    }
}
