import Arch
import Config
import Ivshmem
import KVM
import Logging
import Memory
import PCI
import Posix
import Synchronization
import SystemPackage
import VMMInterface
#if canImport(Glibc)
import Glibc
#endif

/// The definition's shared-memory channels as ivshmem devices (docs/channels.md): each channel's
/// memory mapped once and made a KVM memory slot wherever the guest puts BAR2, the doorbell
/// register an ioeventfd per (peer, vector) that writes straight into that peer's eventfd, and
/// this VM's own eventfds irqfds on its MSI-X vectors. A doorbell never wakes a VMM thread.
enum ChannelDevices {
    /// KVM memory slots of the channels' BAR2s: above guest RAM, below passthrough BARs (64…).
    static let firstSlot: UInt32 = 32

    /// Where a hand-started VMM finds a channel nobody passed it (no `--channel`).
    static func defaultFile(_ name: String) -> String { "/dev/shm/rtvisor-channel-\(name)" }

    static func build(_ def: VMDefinition, attachments: [ChannelAttachment], vm: VirtualMachine, router: MsiRouter,
                      backing: MemoryBacking, logger: Logger) throws -> [IvshmemDevice] {
        try def.channels.enumerated().map { index, channel in
            let field = "$.channels[\(index)]"
            let attachment = attachments.first { $0.name == channel.name }
                ?? ChannelAttachment(name: channel.name, memory: .file(defaultFile(channel.name)))
            let memory = try sharedMemory(channel, attachment.memory, field: field, backing: backing)
            var doorbells: [[EventFD]] = []
            if attachment.doorbells != nil {
                doorbells = (0..<ChannelSettings.maxPeers).map { peer in
                    (0..<channel.vectors).map { vector in
                        EventFD(adopting: FileDescriptor(rawValue: attachment.doorbell(peer: peer, vector: vector, vectors: channel.vectors)!))
                    }
                }
            }
            let name = "ivshmem\(index)"
            // Doorbells rung while this VM was not running are stale for the guest that boots now.
            for fd in doorbells.isEmpty ? [] : doorbells[channel.peer] { fd.drain() }
            let host = ChannelHost(name: name, vm: vm, memory: memory, slot: firstSlot + UInt32(index), doorbells: doorbells, logger: logger)
            let vectors = try (0..<channel.vectors).map { vector in
                IRQFDVector(efd: doorbells.isEmpty ? try EventFD() : doorbells[channel.peer][vector], gsi: router.allocateGSI(), router: router, device: name)
            }
            let bells = doorbells.isEmpty ? "no doorbells (\(attachment.encoded))" : "doorbells on ioeventfd/irqfd"
            logger.info("\(name): channel \(channel.name), \(channel.sizeMiB) MiB, peer \(channel.peer), \(channel.vectors) vector\(channel.vectors == 1 ? "" : "s"), \(bells)")
            return IvshmemDevice(name: name, peer: channel.peer, sharedMemorySize: channel.sizeBytes, vectors: channel.vectors,
                                 msiSink: ChannelVectorSink(vectors: vectors), host: host)
        }
    }

    /// The channel's memory, mapped shared (and locked for a real-time VM): the descriptor passed
    /// in, or the named file, created at the channel's size if it is not there.
    static func sharedMemory(_ channel: ChannelSettings, _ memory: ChannelAttachment.Memory, field: String, backing: MemoryBacking) throws -> GuestMemoryRegion {
        let fd: FileDescriptor
        switch memory {
        case let .descriptor(raw):
            fd = FileDescriptor(rawValue: raw)
        case let .file(path):
            do {
                fd = try FileDescriptor.open(FilePath(path), .readWrite, options: [.create, .closeOnExec], permissions: [.ownerReadWrite])
                var st = stat()
                if fstat(fd.rawValue, &st) == 0 && st.st_size == 0 { _ = ftruncate(fd.rawValue, off_t(channel.sizeBytes)) }
            } catch {
                throw VMMError.setup("\(field): \(path): \(error)")
            }
        }
        do {
            return try GuestMemoryRegion(start: GuestAddress(0), size: channel.sizeBytes, sharedFile: fd,
                                         backing: MemoryBacking(populate: backing.populate, lock: backing.lock))
        } catch GuestMemoryError.invalidSize {
            throw VMMError.setup("\(field): the channel's memory (\(memory)) is not \(channel.sizeMiB) MiB")
        } catch {
            throw VMMError.setup("\(field): \(error)")
        }
    }
}

/// The MSI-X vectors of a channel device: its own doorbell eventfds on irqfd.
struct ChannelVectorSink: MsiVectorSink {
    let vectors: [IRQFDVector]
    func route(vector: Int, message: MsiMessage?) { vectors[vector].route(message) }
    /// A vector unmasked with its pending bit set: the eventfd, still signalled, delivers it.
    func fire(vector: Int) { vectors[vector].efd.signal() }
}

/// KVM's side of one channel device: BAR2's memory slot and the doorbell ioeventfds.
final class ChannelHost: IvshmemHost {
    let name: String
    let vm: VirtualMachine
    let memory: GuestMemoryRegion
    let slot: UInt32
    /// Every peer's eventfds by [peer][vector]; empty without doorbells.
    let doorbells: [[EventFD]]
    let logger: Logger
    /// Where the ioeventfds are registered now (the Doorbell register's guest-physical address).
    private let doorbellAt = Mutex<UInt64?>(nil)
    private let slotAt = Mutex<UInt64?>(nil)

    init(name: String, vm: VirtualMachine, memory: GuestMemoryRegion, slot: UInt32, doorbells: [[EventFD]], logger: Logger) {
        self.name = name; self.vm = vm; self.memory = memory; self.slot = slot; self.doorbells = doorbells; self.logger = logger
    }

    func registersMoved(to address: UInt64?) {
        guard !doorbells.isEmpty else { return }
        doorbellAt.withLock { current in
            let each = doorbells.enumerated().flatMap { peer, fds in fds.enumerated().map { (peer, $0, $1) } }
            if let old = current {
                for (peer, vector, fd) in each {
                    try? vm.unregisterIOEventFD(fd.fd, address: old, length: 4, datamatch: UInt64(IvshmemDevice.doorbell(peer: peer, vector: vector)))
                }
                current = nil
            }
            guard let address else { return }
            let doorbell = address + IvshmemDevice.Register.doorbell.rawValue
            do {
                for (peer, vector, fd) in each {
                    try vm.registerIOEventFD(fd.fd, address: doorbell, length: 4, datamatch: UInt64(IvshmemDevice.doorbell(peer: peer, vector: vector)))
                }
                current = doorbell
            } catch {
                // The trap path (`ring`) still delivers every doorbell, one exit each.
                logger.error("\(name): doorbell ioeventfds at 0x\(String(doorbell, radix: 16)): \(error)")
                for (peer, vector, fd) in each {
                    try? vm.unregisterIOEventFD(fd.fd, address: doorbell, length: 4, datamatch: UInt64(IvshmemDevice.doorbell(peer: peer, vector: vector)))
                }
            }
        }
    }

    func sharedMemoryMoved(to address: UInt64?) {
        slotAt.withLock { current in
            do {
                if current != nil { try vm.setUserMemoryRegion(slot: slot, guestAddress: 0, size: 0, hostAddress: 0); current = nil }
                if let address {
                    try vm.setUserMemoryRegion(slot: slot, guestAddress: address, size: memory.size, hostAddress: memory.hostAddress)
                    current = address
                }
            } catch {
                logger.error("\(name): shared memory at 0x\(String(address ?? 0, radix: 16)): \(error)")
            }
        }
    }

    func ring(peer: Int, vector: Int) {
        guard peer < doorbells.count, vector < doorbells[peer].count else { return }
        doorbells[peer][vector].signal()
    }
}
