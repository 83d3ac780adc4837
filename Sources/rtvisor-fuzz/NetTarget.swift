// net: virtio-net's transmit path (vCPU thread) and receive path (its RX thread) over guest RAM
// from the input, with a SOCK_DGRAM socketpair standing in for the tap (one datagram = one frame
// with its virtio-net header, like a tap with IFF_VNET_HDR).
//
// Input layout (seeds in Tests/Fuzz/net-seeds):
//   bytes 0–3: receive queue (as in virtqueue: size exponent, table, avail, used >> 8)
//   bytes 4–7: transmit queue        byte 8: bit 0 INDIRECT_DESC, bit 1 EVENT_IDX
//   byte 9: frames queued on the tap for the guest (% 4)   bytes 10–11: their length (LE, % 2048)
//   bytes 12–15: unused        bytes 16…: guest RAM from address 0 (64 KiB, the rest zero)
//
// The RX thread's first pass runs while the fuzzer thread transmits; reset() joins it, so
// every iteration ends with no thread left. Frames the device sent or left unread are drained.
import Memory
import SystemPackage
import Virtio
import VirtioNet
#if canImport(Glibc)
import Glibc
#endif

let tapPair: (device: Tap, peer: Int32) = {
    var fds: [Int32] = [0, 0]
    precondition(socketpair(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0)
    var size: Int32 = 1 << 20
    for fd in fds {
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    }
    return (Tap(adopting: FileDescriptor(rawValue: fds[0]), name: "fuzz"), fds[1])
}()

nonisolated(unsafe) var drainBuffer = [UInt8](repeating: 0, count: 70000)

/// Reads and drops every datagram queued on `fd`; returns how many.
func drain(_ fd: Int32) -> Int {
    var n = 0
    while drainBuffer.withUnsafeMutableBytes({ recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }) >= 0 { n += 1 }
    return n
}

func fuzzNet(_ input: UnsafeRawBufferPointer) -> String {
    guard input.count >= 16 else { return "too short" }
    let header = Array(input.prefix(16))
    let memory = fuzzMemory(input, from: 16)
    let features = ringFeatures(header[8])
    var rxq = fuzzQueue(header[0..<4]), txq = fuzzQueue(header[4..<8])
    rxq.setFeatures(features)
    txq.setFeatures(features)
    guard (try? rxq.validate(memory: memory)) != nil, (try? txq.validate(memory: memory)) != nil else { return "queue rejected" }

    // Frames for the guest: header + payload taken from the input's RAM bytes.
    let frames = Int(header[9] % 4)
    let length = Int(UInt16(header[10]) | UInt16(header[11]) << 8) % 2048
    var frame = [UInt8](repeating: 0, count: length)
    for i in 0..<min(length, max(input.count - 16, 0)) { frame[i] = input[16 + i] }
    for _ in 0..<frames { _ = frame.withUnsafeBytes { send(tapPair.peer, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) } }

    let device = VirtioNet(name: "fuzz", tap: tapPair.device, mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56], queueSize: 256)
    try! device.activate(VirtioActivation(memory: memory, features: features, queues: [rxq, txq], interrupt: NullInterrupt()))
    device.queueNotify(1)
    device.queueNotify(0)
    device.queueNotify(1)
    device.reset()
    let sent = drain(tapPair.peer)
    let unread = drain(tapPair.device.fd.rawValue)
    let st = device.statistics
    precondition(sent == st.txFrames, "\(sent) frames on the wire, \(st.txFrames) counted")
    return "net: tx \(st.txFrames) frames (\(st.txBytes) bytes) \(st.txDropped) dropped; rx \(st.rxFrames) frames (\(st.rxBytes) bytes) \(st.rxDropped) dropped, \(unread) left on the tap"
}
