import CDaemonSupport
import Config
import Foundation
import Testing
import VMMInterface
@testable import Daemon

/// rtvisord's side of the channels (docs/channels.md): one memfd, sealed at its size, and one
/// eventfd per (peer, vector) per channel, made once and handed to every peer's VMM.
@Suite struct ChannelStoreTests {
    @Test func theFirstPeerCreatesTheChannelAndTheNextGetsTheSameDescriptors() throws {
        var store = ChannelStore()
        let plc = ChannelSettings(name: "plc-hmi", sizeMiB: 4, peer: 0, vectors: 2)
        let first = try store.launch([plc], firstDescriptor: 3)
        #expect(first.fds.count == 1 + ChannelSettings.maxPeers * 2)
        #expect(first.attachments == [ChannelAttachment(name: "plc-hmi", memory: .descriptor(3), doorbells: 4)])
        let hmi = ChannelSettings(name: "plc-hmi", sizeMiB: 4, peer: 1, vectors: 2)
        // After an incoming migration's socket (fd 3), the channel starts at 4.
        let second = try store.launch([hmi], firstDescriptor: 4)
        #expect(second.fds == first.fds)
        #expect(second.attachments == [ChannelAttachment(name: "plc-hmi", memory: .descriptor(4), doorbells: 5)])
        #expect(store.channels.count == 1)
    }

    @Test func theMemoryIsSealedAtItsSize() throws {
        var store = ChannelStore()
        let memory = try store.launch([ChannelSettings(name: "c", sizeMiB: 1, peer: 0)], firstDescriptor: 3).fds[0]
        var st = stat()
        #expect(fstat(memory, &st) == 0 && st.st_size == 1 << 20)
        let seals = fcntlGetSeals(memory)
        let wanted: Int32 = 0x0001 | 0x0002 | 0x0004   // F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW
        #expect(seals & wanted == wanted, "seals 0x\(String(seals, radix: 16))")
        #expect(seals & 0x0008 == 0, "writes stay allowed (F_SEAL_WRITE)")
        #expect(ftruncate(memory, 4096) != 0 && errno == EPERM)
    }

    @Test func aChannelThatExistsWithAnotherSizeIsRefused() throws {
        var store = ChannelStore()
        _ = try store.launch([ChannelSettings(name: "c", sizeMiB: 4, peer: 0, vectors: 2)], firstDescriptor: 3)
        #expect(throws: ChannelRefusal("channel \"c\" exists with 4 MiB and 2 vectors, this definition wants 8 MiB and 2: its memory lives as long as rtvisord")) {
            try store.launch([ChannelSettings(name: "c", sizeMiB: 8, peer: 1, vectors: 2)], firstDescriptor: 3)
        }
    }
}
