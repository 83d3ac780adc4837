import CKVM
import Testing
@testable import Sandbox

/// A VM with shared-memory channels (docs/channels.md): its vCPU threads move BAR2's memory slot
/// when the guest moves the BAR or turns memory decoding off and on, so their filter allows
/// KVM_SET_USER_MEMORY_REGION; nothing else changes, and no other VM gets it.
struct ChannelPolicyTests {
    func ioctls(_ kind: ThreadKind, channels: Bool, passthrough: Bool = false) -> [UInt64] {
        SeccompPolicy.rules(for: kind, passthrough: passthrough, sharedMemoryBars: channels).first { $0.name == "ioctl" }?.anyOf?.map(\.value) ?? []
    }

    @Test func memorySlotsOnTheVCPUThreadsOnlyWithChannels() {
        let slots = UInt64(CKVM_SET_USER_MEMORY_REGION)
        #expect(ioctls(.vcpu, channels: true).contains(slots))
        #expect(!ioctls(.vcpu, channels: false).contains(slots))
        #expect(Set(ioctls(.vcpu, channels: true)).subtracting(ioctls(.vcpu, channels: false)) == [slots])
        #expect(ioctls(.io, channels: true) == ioctls(.io, channels: false))
        #expect(ioctls(.vmm, channels: true) == ioctls(.vmm, channels: false))
        // With passthrough too, the ioctl is listed once.
        #expect(ioctls(.vcpu, channels: true, passthrough: true).filter { $0 == slots }.count == 1)
    }
}
