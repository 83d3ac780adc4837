// virtqueue and blk: the input becomes guest RAM (rings, descriptors, buffers) plus a few queue
// parameters. Whatever the guest wrote, the VMM must not crash, hang, or touch memory outside
// guest RAM.
//
// Input layout (both targets; seeds in Tests/Fuzz/virtqueue-seeds, Tests/Fuzz/blk-seeds):
//   byte 0: queue size = 1 << (b % 9)      bytes 1, 2, 3: descriptor table, avail, used ring >> 8
//   byte 4: bit 0 INDIRECT_DESC, bit 1 EVENT_IDX     bytes 5–7: unused
//   bytes 8…: guest RAM from address 0 (64 KiB, the rest zero)
import Memory
import Virtio
import VirtioBlock
#if canImport(Glibc)
import Glibc
#endif

/// Guest RAM size: small, so random addresses often land inside it.
let ramSize: UInt64 = 0x10000

final class NullInterrupt: VirtioInterrupt {
    func signalUsedQueue(_ queue: Int) {}
    func signalConfigChange() {}
    func deviceNeedsReset(reason: String) {}
}

/// A queue as the transport would configure it from 4 input bytes.
func fuzzQueue(_ b: ArraySlice<UInt8>) -> VirtQueue {
    let b = Array(b)
    var q = VirtQueue(maxSize: 256)
    q.size = UInt16(1) << (b[0] % 9)
    q.descriptorTable = GuestAddress(UInt64(b[1]) << 8)
    q.availableRing = GuestAddress(UInt64(b[2]) << 8)
    q.usedRing = GuestAddress(UInt64(b[3]) << 8)
    q.ready = true
    return q
}

func ringFeatures(_ b: UInt8) -> UInt64 {
    (b & 1 != 0 ? VirtioFeature.ringIndirectDescriptors : 0) | (b & 2 != 0 ? VirtioFeature.ringEventIndex : 0) | VirtioFeature.version1
}

/// Guest RAM, one mapping for the whole run (a fresh mmap per input costs more than the parsing).
let sharedMemory = try! GuestMemory(regions: [try! GuestMemoryRegion(start: GuestAddress(0), size: ramSize)])
let zeroRAM = [UInt8](repeating: 0, count: Int(ramSize))

/// Guest RAM holding `input[from...]`, the rest zero (nothing left from earlier inputs).
func fuzzMemory(_ input: UnsafeRawBufferPointer, from: Int) -> GuestMemory {
    let memory = sharedMemory
    zeroRAM.withUnsafeBytes { try! memory.write($0, at: GuestAddress(0)) }
    if input.count > from {
        try! memory.write(UnsafeRawBufferPointer(rebasing: input[from..<min(input.count, from + Int(ramSize))]), at: GuestAddress(0))
    }
    return memory
}

/// The layout of both targets: guest RAM after 8 header bytes and one queue configured from them;
/// nil when the input is too short or the queue does not validate.
func singleQueue(_ input: UnsafeRawBufferPointer) -> (memory: GuestMemory, queue: VirtQueue, features: UInt64)? {
    guard input.count >= 8 else { return nil }
    let header = Array(input.prefix(8))
    let memory = fuzzMemory(input, from: 8)
    var q = fuzzQueue(header[0..<4])
    let features = ringFeatures(header[4])
    q.setFeatures(features)
    guard (try? q.validate(memory: memory)) != nil else { return nil }
    return (memory, q, features)
}

/// The queue core alone: pop every chain, read and write its buffers through ChainReader and
/// ChainWriter, return it, and check the invariants (buffers inside RAM, at most `size` chains).
func fuzzVirtqueue(_ input: UnsafeRawBufferPointer) -> String {
    guard let setup = singleQueue(input) else { return input.count < 8 ? "too short" : "queue rejected" }
    let memory = setup.memory
    var q = setup.queue
    _ = try? q.pendingCount(memory: memory)
    var popped = 0, bytesRead = 0, bytesWritten: UInt32 = 0
    var error: VirtQueueError?
    while popped < 512 {
        let chain: DescriptorChain
        do {
            guard let c = try q.pop(memory: memory) else { break }
            chain = c
        } catch let e { error = e; break }
        precondition(chain.readable.allSatisfy { memory.contains($0.address, length: UInt64($0.length)) })
        precondition(chain.writable.allSatisfy { memory.contains($0.address, length: UInt64($0.length)) })
        var reader = ChainReader(memory: memory, buffers: chain.readable)
        while reader.remaining > 0, let bytes = try? reader.read(Int(min(reader.remaining, 4096))) { bytesRead += bytes.count }
        var writer = ChainWriter(memory: memory, buffers: chain.writable)
        while writer.remaining > 0, (try? writer.write([UInt8](repeating: 0xA5, count: Int(min(writer.remaining, 4096))))) == true {}
        bytesWritten &+= writer.written
        if popped & 1 == 0 {
            try? q.addUsed(memory: memory, head: chain.head, length: writer.written)
        } else {
            try? q.discard(memory: memory, head: chain.head)
        }
        _ = try? q.shouldNotify(memory: memory)
        popped += 1
    }
    precondition(popped <= Int(q.size), "popped \(popped) chains from a queue of \(q.size)")
    return "\(popped) chain(s), \(bytesRead) bytes read, \(bytesWritten) written" + (error.map { ", stopped: \($0)" } ?? "")
}

/// A disk shared by all iterations (its content does not matter, only that requests are checked).
let disk: BlockImage = {
    var template = Array("/tmp/rtvisor-fuzz-XXXXXX".utf8CString)
    let fd = mkstemp(&template)
    ftruncate(fd, 64 * 512)
    close(fd)
    let path = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    let image = try! BlockImage(path: path, readOnly: false)
    unlink(path)
    return image
}()

/// virtio-blk: requests are parsed and executed against the disk, or refused.
func fuzzBlock(_ input: UnsafeRawBufferPointer) -> String {
    guard let setup = singleQueue(input) else { return input.count < 8 ? "too short" : "queue rejected" }
    let device = VirtioBlock(name: "fuzz", image: disk)
    try! device.activate(VirtioActivation(memory: setup.memory, features: setup.features, queues: [setup.queue], interrupt: NullInterrupt()))
    device.queueNotify(0)
    device.queueNotify(0)
    device.reset()
    let st = device.statistics
    return "blk: \(st.readRequests) read, \(st.writeRequests) write, \(st.flushes) flush, \(st.errors) error"
}
