// Fuzz target for the virtqueue core and the virtio-blk request parser: the input becomes the
// guest's RAM (rings, descriptors, buffers) and a few queue parameters, then the device runs.
// Whatever the guest wrote, the VMM must not crash, hang, or touch memory outside guest RAM.
//
// Two builds (scripts/fuzz-virtio.sh):
// - libFuzzer: `-sanitize=fuzzer,address -D FUZZING` exports LLVMFuzzerTestOneInput and
//   libFuzzer supplies main();
// - plain: a replay tool, `virtio-fuzz FILE…` runs saved inputs (crash reproducers, corpus).
import Memory
import Virtio
import VirtioBlock
#if canImport(Glibc)
import Glibc
#endif

/// Guest RAM size: small, so random addresses often land inside it.
let ramSize: UInt64 = 0x10000
let ringBase: UInt64 = 0x0

final class NullInterrupt: VirtioInterrupt {
    func signalUsedQueue(_ queue: Int) {}
    func signalConfigChange() {}
    func deviceNeedsReset(reason: String) {}
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

@discardableResult
func runOne(_ input: UnsafeRawBufferPointer) -> String {
    guard input.count >= 8 else { return "too short" }
    let memory = try! GuestMemory(regions: [try! GuestMemoryRegion(start: GuestAddress(0), size: ramSize)])
    // Bytes 0..<8: queue size exponent, feature flags, ring offsets; the rest is RAM content.
    let b = Array(input.prefix(8))
    try! memory.write(UnsafeRawBufferPointer(rebasing: input[8..<min(input.count, 8 + Int(ramSize))]), at: GuestAddress(0))
    var q = VirtQueue(maxSize: 256)
    q.size = UInt16(1) << (b[0] % 9)
    q.descriptorTable = GuestAddress(UInt64(b[1]) << 8)
    q.availableRing = GuestAddress(UInt64(b[2]) << 8)
    q.usedRing = GuestAddress(UInt64(b[3]) << 8)
    q.ready = true
    let features = (b[4] & 1 != 0 ? VirtioFeature.ringIndirectDescriptors : 0) | (b[4] & 2 != 0 ? VirtioFeature.ringEventIndex : 0)
        | VirtioFeature.version1
    q.setFeatures(features)
    guard (try? q.validate(memory: memory)) != nil else { return "queue rejected" }

    // 1. The queue core directly: pop everything, return it, check the used index moves in step.
    var direct = q
    var popped = 0
    while popped < 512, let chain = try? direct.pop(memory: memory) {
        precondition(chain.readable.allSatisfy { memory.contains($0.address, length: UInt64($0.length)) })
        precondition(chain.writable.allSatisfy { memory.contains($0.address, length: UInt64($0.length)) })
        try? direct.addUsed(memory: memory, head: chain.head, length: UInt32(truncatingIfNeeded: chain.writableLength))
        _ = try? direct.shouldNotify(memory: memory)
        popped += 1
    }
    precondition(popped <= Int(q.size), "popped \(popped) chains from a queue of \(q.size)")

    // 2. The block device on the same memory (fresh copy of the input): requests are parsed
    //    and executed against the disk, or refused.
    try! memory.write(UnsafeRawBufferPointer(rebasing: input[8..<min(input.count, 8 + Int(ramSize))]), at: GuestAddress(0))
    let device = VirtioBlock(name: "fuzz", image: disk)
    try! device.activate(VirtioActivation(memory: memory, features: features, queues: [q], interrupt: NullInterrupt()))
    device.queueNotify(0)
    device.queueNotify(0)
    device.reset()
    let st = device.statistics
    return "\(popped) chain(s); blk: \(st.readRequests) read, \(st.writeRequests) write, \(st.flushes) flush, \(st.errors) error"
}

#if FUZZING
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<Int32>,
                         _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                         _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32) -> Int32

// SwiftPM links executables with main = <module>_main, so libFuzzer's own main() is not used:
// this one hands the command line to libFuzzer's driver.
@_cdecl("virtio_fuzz_main")
func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    var argc = argc
    var argv = argv
    return LLVMFuzzerRunDriver(&argc, &argv) { data, size in
        guard let data else { return 0 }
        runOne(UnsafeRawBufferPointer(start: data, count: size))
        return 0
    }
}
#else
@main
struct Replay {
    static func main() {
        let args = CommandLine.arguments.dropFirst()
        if args.isEmpty {
            print("usage: virtio-fuzz FILE...  (replays fuzzer inputs; scripts/fuzz-virtio.sh runs libFuzzer)")
            return
        }
        for path in args {
            guard let f = fopen(path, "rb") else { print("\(path): cannot open"); continue }
            var bytes: [UInt8] = []
            var buf = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = fread(&buf, 1, buf.count, f)
                if n <= 0 { break }
                bytes += buf[0..<n]
            }
            fclose(f)
            let summary = bytes.withUnsafeBytes { runOne($0) }
            print("\(path): ok: \(summary)")
        }
    }
}
#endif
