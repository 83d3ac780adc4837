import CKVM
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// One memory slot: guest-physical range backed by host memory.
public struct MemoryRegionSpec: Sendable, Equatable {
    public let slot: UInt32
    public let guestAddress: UInt64
    public let size: UInt64
    public let hostAddress: UInt64
    public init(slot: UInt32, guestAddress: UInt64, size: UInt64, hostAddress: UInt64) {
        self.slot = slot; self.guestAddress = guestAddress; self.size = size; self.hostAddress = hostAddress
    }
}

/// Memory slots being registered on a thread of their own. A VM's first memory slot costs the
/// kernel an SRCU grace period (5–9 ms on this nested host, whatever its size), which the VMM
/// overlaps with building devices, loading the guest and creating vCPUs; none of those needs the
/// slots, only KVM_RUN does. `wait()` must return before a vCPU runs.
public final class PendingMemoryRegions: @unchecked Sendable {
    private var handle: OpaquePointer?
    private let regions: [MemoryRegionSpec]

    init(handle: OpaquePointer, regions: [MemoryRegionSpec]) { self.handle = handle; self.regions = regions }

    /// Joins the registering thread; throws the first region's failure as KVM_SET_USER_MEMORY_REGION
    /// would have thrown it. Later calls return at once.
    public func wait() throws {
        guard let h = handle else { return }
        handle = nil
        var failed: Int32 = -1
        let error = ckvm_memory_regions_wait(h, &failed)
        if error != 0 {
            let slot = failed >= 0 && Int(failed) < regions.count ? " (slot \(regions[Int(failed)].slot))" : ""
            throw KVMError("KVM_SET_USER_MEMORY_REGION" + slot, Errno(rawValue: error))
        }
    }

    deinit { try? wait() }
}

extension VirtualMachine {
    /// Starts registering `regions` (in order) on a background thread; see `PendingMemoryRegions`.
    public func setUserMemoryRegionsInBackground(_ regions: [MemoryRegionSpec]) throws -> PendingMemoryRegions {
        let raw = regions.map { r in
            var region = kvm_userspace_memory_region()
            region.slot = r.slot
            region.guest_phys_addr = r.guestAddress
            region.memory_size = r.size
            region.userspace_addr = r.hostAddress
            return region
        }
        guard let handle = raw.withUnsafeBufferPointer({ ckvm_memory_regions_start(fd.rawValue, $0.baseAddress, Int32($0.count)) }) else {
            throw KVMError("starting the memory slot thread", Errno(rawValue: errno))
        }
        return PendingMemoryRegions(handle: handle, regions: regions)
    }
}
