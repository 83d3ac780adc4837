import Testing
import VMMInterface
#if canImport(Glibc)
import Glibc
#endif

@Suite struct LatencySnapshotTests {
    @Test func theFileRoundTripsWithItsWireNames() throws {
        let s = LatencySnapshot(name: "rt0", cpu: 1, priority: 80, periodMicroseconds: 1000, samples: 3, minNanoseconds: 1000,
                                meanNanoseconds: 1500.5, p50Nanoseconds: 1400, p99Nanoseconds: 2000, p9999Nanoseconds: 2100,
                                maxNanoseconds: 2200, buckets: [[1023, 1], [2047, 2]], updatedAt: 1_765_000_000.25)
        let text = String(decoding: s.encoded, as: UTF8.self)
        for key in ["\"period_us\"", "\"min_ns\"", "\"p99_99_ns\"", "\"updated_at\""] { #expect(text.contains(key)) }
        let path = "/tmp/rtvisor-latency-\(getpid()).json"
        defer { unlink(path) }
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        #expect(s.encoded.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } == s.encoded.count)
        close(fd)
        #expect(LatencySnapshot.read(path) == s)
    }

    @Test func aHalfWrittenFileReadsAsNothing() {
        let path = "/tmp/rtvisor-latency-half-\(getpid()).json"
        defer { unlink(path) }
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        _ = "{\"name\":\"rt0\",\"cp".withCString { write(fd, $0, strlen($0)) }
        close(fd)
        #expect(LatencySnapshot.read(path) == nil)
    }
}
