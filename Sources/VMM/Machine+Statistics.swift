import Config
import VMMInterface
import VirtioBlock
import VirtioNet

extension Machine {
    /// The counters rtvisord's statistics read (`VMMControl.Request.statistics`): exits per vCPU
    /// from the vCPU threads' own counters, disks and NICs from their devices, in the
    /// definition's order. Reading takes each device's statistics lock briefly, nothing else.
    public func statistics() -> VMMStatistics {
        var disks: [VMMStatistics.Disk] = []
        var nics: [VMMStatistics.NIC] = []
        for transport in pciDevices {
            if let blk = transport.device as? VirtioBlock {
                let s = blk.statistics
                disks.append(.init(readOps: UInt64(s.readRequests), writeOps: UInt64(s.writeRequests), flushOps: UInt64(s.flushes),
                                   readBytes: s.bytesRead, writeBytes: s.bytesWritten, errors: UInt64(s.errors),
                                   serviceNanoseconds: s.serviceNanoseconds))
            } else if let net = transport.device as? VirtioNet {
                let s = net.statistics
                nics.append(.init(rxFrames: UInt64(s.rxFrames), rxBytes: s.rxBytes, txFrames: UInt64(s.txFrames), txBytes: s.txBytes,
                                  rxDrops: UInt64(s.rxDropped), txDrops: UInt64(s.txDropped)))
            }
        }
        return VMMStatistics(vcpus: exitCounters.enumerated().map { .init(index: $0.offset, exits: $0.element.snapshot) },
                             disks: disks, nics: nics)
    }
}

extension Machine {
    /// The descriptors rtvisord passed for channel `name`, still open at the numbers its
    /// `--channel` gave (the memory mapping and the doorbells' eventfds keep them): the memory,
    /// then every peer's doorbells. nil for a channel without them (file-backed, no doorbells).
    public func channelDescriptors(_ name: String) -> [Int32]? {
        guard let attachment = options.channels.first(where: { $0.name == name }), case let .descriptor(memory) = attachment.memory,
              let first = attachment.doorbells, let channel = definition.channels.first(where: { $0.name == name }) else { return nil }
        return [memory] + (0..<Int32(ChannelSettings.maxPeers * channel.vectors)).map { first + $0 }
    }
}
