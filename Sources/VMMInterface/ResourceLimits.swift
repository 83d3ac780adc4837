/// A VM's cgroup limits (docs/sandbox.md): written by rtvisord into the VM's cgroup (v2) and by
/// the VMM into its own (v1, or v2 without the daemon), so both must compute the same values.
public enum VMResourceLimits {
    /// Guest RAM plus what the VMM itself may use (runtime, device buffers, page cache of images).
    public static func memoryBytes(guestMiB: Int) -> UInt64 { UInt64(guestMiB + 256 + guestMiB / 8) << 20 }
    /// vCPU threads, one I/O thread per net device, and the VMM's own threads.
    public static func tasks(vcpus: Int, nets: Int) -> Int { vcpus + nets + 33 }
}
