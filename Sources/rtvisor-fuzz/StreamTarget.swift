import Memory
import VMMInterface

/// What a migration target reads from another host, and what a restore reads from a snapshot
/// directory: the input is cut into migration frames (kind, u32 length, payload), each decoded
/// (`MigrationMessage.decode`) and its pages written into 2 MiB of guest RAM through
/// `GuestMemory.writeImage`, whose checks must keep every write inside it; the whole input is
/// also read as a snapshot state file (`SnapshotStateFile.decode`).
nonisolated(unsafe) private let streamMemory = try! GuestMemory.standard(bytes: 2 << 20)

func fuzzStream(_ input: UnsafeRawBufferPointer) -> String {
    let bytes = Array(input)
    var i = 0, frames = 0, applied = 0, rejected = 0
    while bytes.count - i >= 5 {
        let kind = bytes[i]
        let length = Int(UInt32(bytes[i + 1]) | UInt32(bytes[i + 2]) << 8 | UInt32(bytes[i + 3]) << 16 | UInt32(bytes[i + 4]) << 24)
        i += 5
        guard length <= bytes.count - i else { break }
        let payload = Array(bytes[i..<(i + length)])
        i += length
        frames += 1
        do {
            switch try MigrationMessage.decode(kind: kind, payload: payload) {
            case let .pages(offset, data):
                try data.withUnsafeBytes { try streamMemory.writeImage(at: offset, bytes: $0) }
                applied += 1
            case let .zero(offset, length):
                try streamMemory.writeImage(at: offset, bytes: nil, zeroLength: length)
                applied += 1
            default:
                break
            }
        } catch {
            rejected += 1
        }
    }
    let state = (try? SnapshotStateFile.decode(bytes)) != nil
    return "\(frames) frames, \(applied) applied, \(rejected) rejected; state file \(state ? "read" : "refused")"
}
