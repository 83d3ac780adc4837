/// KVM exit kinds as the VMM counts them per vCPU (`VMMStatistics`); the raw values are the
/// keys of `VCPUStats.exits` in the API.
public enum VMExitKind: String, Codable, Sendable, CaseIterable {
    case io, mmio, interrupted, halt, shutdown
    case systemEvent = "system-event", internalError = "internal-error", failEntry = "fail-entry", other
}

/// The VMM's own counters, read by rtvisord over the control socket (`VMMControl.Request.statistics`,
/// control protocol 5): totals since the VMM started. Devices are in the definition's order.
public struct VMMStatistics: Codable, Sendable, Equatable {
    public struct VCPU: Codable, Sendable, Equatable {
        public var index: Int
        /// Exits by `VMExitKind` raw value; kinds that never happened are left out.
        public var exits: [String: UInt64]
        public init(index: Int, exits: [String: UInt64]) { self.index = index; self.exits = exits }
    }
    public struct Disk: Codable, Sendable, Equatable {
        public var readOps: UInt64, writeOps: UInt64, flushOps: UInt64
        public var readBytes: UInt64, writeBytes: UInt64, errors: UInt64
        /// Sum of the requests' service times on the host, nanoseconds.
        public var serviceNanoseconds: UInt64
        public init(readOps: UInt64, writeOps: UInt64, flushOps: UInt64, readBytes: UInt64, writeBytes: UInt64, errors: UInt64,
                    serviceNanoseconds: UInt64) {
            self.readOps = readOps; self.writeOps = writeOps; self.flushOps = flushOps; self.readBytes = readBytes
            self.writeBytes = writeBytes; self.errors = errors; self.serviceNanoseconds = serviceNanoseconds
        }
    }
    public struct NIC: Codable, Sendable, Equatable {
        /// Seen from the guest: rx is what the guest received.
        public var rxFrames: UInt64, rxBytes: UInt64, txFrames: UInt64, txBytes: UInt64
        public var rxDrops: UInt64, txDrops: UInt64
        public init(rxFrames: UInt64, rxBytes: UInt64, txFrames: UInt64, txBytes: UInt64, rxDrops: UInt64, txDrops: UInt64) {
            self.rxFrames = rxFrames; self.rxBytes = rxBytes; self.txFrames = txFrames; self.txBytes = txBytes
            self.rxDrops = rxDrops; self.txDrops = txDrops
        }
    }
    public var vcpus: [VCPU]
    public var disks: [Disk]
    public var nics: [NIC]
    public init(vcpus: [VCPU], disks: [Disk], nics: [NIC]) { self.vcpus = vcpus; self.disks = disks; self.nics = nics }
}
