import Foundation
import Memory
import TestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif
@testable import Virtio
@testable import VirtioBlock
@testable import VirtioNet

/// What a snapshot file does to saved queues: JSON out and back in, each rebuilt for its device.
func restoredQueues(_ queues: [VirtQueue]?, maxSizes: [UInt16]) throws -> [VirtQueue] {
    let saved = try JSONDecoder().decode([VirtQueue.SavedState].self,
                                         from: JSONEncoder().encode(try #require(queues).map { $0.saveState() }))
    return try zip(saved, maxSizes).map { try VirtQueue(restoring: $0, maxSize: $1) }
}

@Suite("VirtQueue snapshots")
struct VirtQueueStateTests {
    /// Issue 18: a queue rebuilt from its saved state goes on where it stopped: the next pop is
    /// the next avail entry, the next used entry lands after the last, EVENT_IDX state included.
    @Test func indicesSurviveSaveAndRestore() throws {
        let m = QueueDriver.memory()
        var d = QueueDriver(memory: m, size: 8)
        var q = d.deviceQueue(features: VirtioFeature.ringEventIndex | VirtioFeature.ringIndirectDescriptors)
        for _ in 0..<11 {                           // wraps the 8-entry rings
            let (head, _) = d.add([.writable(4)])
            #expect(try q.pop(memory: m)?.head == head)
            try q.addUsed(memory: m, head: head, length: 4)
            _ = try q.shouldNotify(memory: m)
            #expect(d.takeUsed().count == 1)
        }
        let (pendingHead, _) = d.add([.writable(2)])   // available, not popped
        var restored = try #require(try restoredQueues([q], maxSizes: [256]).first)
        #expect(restored.saveState() == q.saveState())
        #expect(restored.nextAvailable == 11 && restored.nextUsed == 11)
        #expect(restored.eventIndex && restored.indirectDescriptors && restored.ready)
        let chain = try #require(try restored.pop(memory: m))
        #expect(chain.head == pendingHead)
        try restored.addUsed(memory: m, head: chain.head, length: 2)
        #expect(d.usedIndex == 12)
        #expect(d.takeUsed().map { [$0.id, $0.length] } == [[UInt32(pendingHead), 2]])
    }

    /// A snapshot file may be corrupt or hostile: a size the device could not have run with is
    /// refused (it would divide by zero or index past the rings).
    @Test(arguments: [UInt16(0), 3, 24, 512])
    func invalidSizeIsRefused(size: UInt16) {
        let saved = VirtQueue.SavedState(size: size, ready: true, descriptorTable: 0x1000, availableRing: 0x2000, usedRing: 0x3000)
        #expect(throws: VirtQueueError.invalidSize(size, max: 256)) { try VirtQueue(restoring: saved, maxSize: 256) }
    }

    /// The RX thread's waiting chain goes back: the same chain pops again.
    @Test func rewindLastPopMakesTheChainAvailableAgain() throws {
        let m = QueueDriver.memory()
        var d = QueueDriver(memory: m, size: 4)
        var q = d.deviceQueue()
        let (head, _) = d.add([.writable(64)])
        #expect(try q.pop(memory: m)?.head == head)
        #expect(try q.pop(memory: m) == nil)
        q.rewindLastPop()
        #expect(try q.pop(memory: m)?.head == head)
    }
}

@Suite("virtio-blk snapshots")
struct VirtioBlockStateTests {
    static func request(_ rig: inout BlockRig, write data: [UInt8], sector: UInt64) -> UInt16 {
        rig.driver.add([.readable(BlockRig.header(P.typeOut, sector: sector)), .readable(data), .writable(1)]).head
    }

    /// Pause waits out the request in flight and holds later notifications until resume.
    @Test func pausedDeviceServesNotificationsOnResume() throws {
        var rig = try BlockRig()
        rig.device.pause()
        rig.device.pause()                                            // idempotent
        _ = Self.request(&rig, write: [UInt8](repeating: 7, count: 512), sector: 1)
        rig.device.queueNotify(0)
        #expect(rig.driver.usedIndex == 0)
        #expect(rig.image.read(sector: 1) == [UInt8](repeating: 0, count: 512))
        rig.device.resume()
        #expect(rig.driver.usedIndex == 1)
        #expect(rig.image.read(sector: 1) == [UInt8](repeating: 7, count: 512))
        rig.device.resume()                                           // nothing more to do
        #expect(rig.driver.usedIndex == 1)
    }

    @Test func neverActivatedDeviceTakesPauseAndResume() throws {
        let image = TempImage(sectors: 8)
        let device = VirtioBlock(name: "blk-idle", image: try BlockImage(path: image.path, readOnly: false))
        device.pause()
        #expect(device.queueStates() == nil)
        device.resume()
        device.queueNotify(0)
    }

    /// Issue 18: requests served, one more made available while paused, queues saved and
    /// restored into a new device over the same memory and image: the guest's next notification
    /// is served from the saved indices, and the data is right.
    @Test func restoredDeviceGoesOnFromTheSavedIndices() throws {
        var rig = try BlockRig()
        for n in 0..<3 {
            _ = Self.request(&rig, write: [UInt8](repeating: UInt8(n + 1), count: 512), sector: UInt64(n))
            rig.device.queueNotify(0)
        }
        #expect(rig.driver.takeUsed().count == 3)
        rig.device.pause()
        let pending = Self.request(&rig, write: [UInt8](repeating: 0x44, count: 1024), sector: 4)
        rig.device.queueNotify(0)                                     // held: the snapshot is being taken
        let queues = try restoredQueues(rig.device.queueStates(), maxSizes: rig.device.queueMaxSizes)
        #expect(queues.map(\.nextUsed) == [3])

        // The same image: a new process would open the file again, this one holds its lock.
        let restored = VirtioBlock(name: "blk-test", image: rig.device.image)
        let interrupt = RecordingInterrupt()
        restored.pause()
        try restored.activate(VirtioActivation(memory: rig.memory, features: 0, queues: queues, interrupt: interrupt))
        #expect(restored.queueStates()?.map { $0.saveState() } == queues.map { $0.saveState() })
        restored.resume()
        // Served on the guest's next notification (the original's was lost with it).
        #expect(rig.driver.usedIndex == 3)
        restored.queueNotify(0)
        #expect(rig.driver.usedIndex == 4)
        #expect(rig.driver.takeUsed().map { [$0.id, $0.length] } == [[UInt32(pending), 1]])
        let (readHead, addresses) = rig.driver.add([.readable(BlockRig.header(P.typeIn, sector: 2)), .writable(2048), .writable(1)])
        restored.queueNotify(0)
        #expect(rig.driver.takeUsed().map { [$0.id, $0.length] } == [[UInt32(readHead), 2049]])
        #expect(try rig.memory.read(2048, at: GuestAddress(addresses[1]))
                == [UInt8](repeating: 3, count: 512) + [UInt8](repeating: 0, count: 512) + [UInt8](repeating: 0x44, count: 1024))
        #expect(try rig.memory.readInteger(UInt8.self, at: GuestAddress(addresses[2])) == P.statusOK)
        #expect(interrupt.queues == [0, 0])
    }
}

@Suite("virtio-net snapshots", .serialized)
struct VirtioNetStateTests {
    /// Waits (up to 5 s) for `condition`.
    static func eventually(_ condition: () -> Bool) -> Bool {
        for _ in 0..<500 {
            if condition() { return true }
            usleep(10_000)
        }
        return condition()
    }

    /// The RX thread pops a receive chain and keeps it while the tap is empty; with EVENT_IDX
    /// the pop shows as avail_event.
    static func rigWithAWaitingReceiveChain() throws -> (NetRig, UInt16) {
        var rig = try NetRig(features: VirtioFeature.ringEventIndex, activate: false)
        let head = rig.rx.add([.writable(2048)]).head
        try rig.device.activate(rig.activation)
        let rx = rig.rx
        #expect(eventually { rx.availEvent == 1 }, "the RX thread took the chain")
        return (rig, head)
    }

    /// Pause stops the RX thread and gives its waiting chain back; frames arriving meanwhile stay
    /// in the tap; resume starts a thread that fills that very chain.
    @Test func pauseStopsTheReceiveThreadWithoutLosingItsChain() throws {
        let (waiting, head) = try Self.rigWithAWaitingReceiveChain()
        var rig = waiting
        defer { rig.device.reset() }
        #expect(rig.device.receiveThreadsRunning == 1)
        rig.device.pause()
        rig.device.pause()
        #expect(rig.device.receiveThreadsRunning == 0)
        #expect(rig.device.queueStates()?.map(\.nextAvailable) == [0, 0])
        rig.fake.send(NetRig.frame(100, fill: 0xA1))
        rig.device.queueNotify(VirtioNet.rxQueue)
        usleep(50_000)
        #expect(rig.rx.usedIndex == 0)
        rig.device.resume()
        #expect(rig.device.receiveThreadsRunning == 1)
        let used = rig.waitForReceived(1)
        #expect(used.map { [$0.id, $0.length] } == [[UInt32(head), 112]])
        rig.device.resume()
        #expect(rig.device.receiveThreadsRunning == 1)
    }

    /// Issue 18: the waiting chain survives pause, save, JSON and restore into a new device; the
    /// new device starts its RX thread only on resume, and frames flow into the saved chain and
    /// the ones after it. Transmit notifications while paused are served on resume.
    @Test func waitingReceiveChainSurvivesARestore() throws {
        let (waiting, head) = try Self.rigWithAWaitingReceiveChain()
        var rig = waiting
        rig.device.pause()
        let tx = rig.tx.add([.readable(NetRig.frame(60, fill: 0x77))]).head
        rig.device.queueNotify(VirtioNet.txQueue)
        #expect(rig.tx.usedIndex == 0, "no transmission while paused")
        let queues = try restoredQueues(rig.device.queueStates(), maxSizes: rig.device.queueMaxSizes)
        #expect(queues.map(\.nextAvailable) == [0, 0])
        rig.device.reset()

        let restored = VirtioNet(name: "net-test", tap: rig.fake.tap, mac: [2, 0, 0, 0, 0, 1])
        defer { restored.reset() }
        restored.pause()
        try restored.activate(VirtioActivation(memory: rig.memory, features: rig.features, queues: queues, interrupt: rig.interrupt))
        #expect(restored.receiveThreadsRunning == 0, "paused: no receive thread yet")
        rig.fake.send(NetRig.frame(100, fill: 0xA1))
        restored.resume()
        #expect(restored.receiveThreadsRunning == 1)
        let used = rig.waitForReceived(1)
        #expect(used.map { [$0.id, $0.length] } == [[UInt32(head), 112]])
        // The transmit side starts from the saved indices too: the frame goes out on the guest's
        // next notification.
        restored.queueNotify(VirtioNet.txQueue)
        #expect(rig.tx.takeUsed().map(\.id) == [UInt32(tx)])
        var frame = [UInt8](repeating: 0, count: 128)
        let n = frame.withUnsafeMutableBytes { recv(rig.fake.peer, $0.baseAddress, $0.count, 0) }
        #expect(n == 72 && frame[12] == 0x77)
        // And frames keep flowing into new buffers.
        let next = rig.rx.add([.writable(2048)]).head
        restored.queueNotify(VirtioNet.rxQueue)
        rig.fake.send(NetRig.frame(200, fill: 0xB2))
        #expect(rig.waitForReceived(1).map { [$0.id, $0.length] } == [[UInt32(next), 212]])
        #expect(rig.interrupt.resetReasons.isEmpty)
    }

    @Test func neverActivatedDeviceTakesPauseAndResume() throws {
        let rig = try NetRig(activate: false)
        rig.device.pause()
        #expect(rig.device.queueStates() == nil)
        rig.device.resume()
        #expect(rig.device.receiveThreadsRunning == 0)
        try rig.device.activate(rig.activation)
        #expect(rig.device.receiveThreadsRunning == 1)
        rig.device.reset()
    }
}
