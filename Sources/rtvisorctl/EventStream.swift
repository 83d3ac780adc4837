import CDaemonSupport
import Posix
#if canImport(Glibc)
import Glibc
#endif

/// A streamed response (`GET /v1/events?follow=1`): the head, then the body as it arrives, cut
/// into lines. rtvisord sends it chunked to HTTP/1.1 clients; without chunking it ends at EOF.
extension UnixHTTPClient {
    /// Sends a GET and hands each complete body line to `onLine` until the stream ends (the
    /// daemon closed it) or `onLine` returns false. A non-2xx answer is returned whole instead.
    func stream(_ target: String, onLine: ([UInt8]) throws -> Bool) throws -> Response? {
        let fd = cdaemon_connect_unix(socketPath)
        guard fd >= 0 else {
            let e = errno
            let hint = e == ENOENT || e == ECONNREFUSED ? " (is rtvisord running? systemctl status rtvisord)" : e == EACCES ? " (root or membership in group rtvisor is needed)" : ""
            throw ClientError(description: "cannot connect to \(socketPath): \(errnoMessage(e))\(hint)")
        }
        defer { close(fd) }
        try writeOrFail(fd, Array("GET \(target) HTTP/1.1\r\nHost: rtvisord\r\nConnection: close\r\nAccept: application/x-ndjson\r\n\r\n".utf8))
        var reader = StreamReader(fd: fd)
        var head: [UInt8] = []
        while !head.ends(with: [13, 10, 13, 10]) {
            guard let b = try reader.byte() else { throw ClientError(description: "rtvisord closed the connection before answering") }
            head.append(b)
        }
        let headText = String(decoding: head, as: UTF8.self).lowercased()
        guard let status = Int(headText.split(separator: " ").dropFirst().first ?? ""), (200..<300).contains(status) else {
            var rest = head
            while let b = try reader.byte() { rest.append(b) }
            return try Self.parse(rest)
        }
        var decoder = ChunkedBody(chunked: headText.contains("transfer-encoding: chunked"))
        var line: [UInt8] = []
        while let b = try decoder.byte(&reader) {
            if b == 0x0A {
                if try !onLine(line) { return nil }
                line = []
            } else {
                line.append(b)
            }
        }
        // A chunked stream ends with its empty last chunk; EOF before it: the daemon went away.
        if decoder.chunked && !decoder.ended { throw ClientError(description: "rtvisord closed the event stream (did it stop?)") }
        return nil
    }
}

/// Bytes off a socket, one read(2) per 64 KiB; blocks for as long as the daemon sends nothing.
struct StreamReader {
    let fd: Int32
    var buffer = [UInt8](repeating: 0, count: 65536)
    var start = 0, end = 0

    init(fd: Int32) { self.fd = fd }

    mutating func byte() throws -> UInt8? {
        if start == end {
            let n: Int
            do { n = try retryInterrupted { buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) } } } catch {
                throw UnixHTTPClient.ClientError(description: "read: \(error)")
            }
            if n == 0 { return nil }
            (start, end) = (0, n)
        }
        defer { start += 1 }
        return buffer[start]
    }
}

/// HTTP/1.1 chunked transfer coding (RFC 9112 §7.1): a hex size line, that many bytes, CRLF;
/// size 0 ends the body. Extensions and trailers are skipped.
struct ChunkedBody {
    let chunked: Bool
    var left = 0
    var ended = false

    mutating func byte(_ reader: inout StreamReader) throws -> UInt8? {
        guard chunked else { return try reader.byte() }
        if ended { return nil }
        if left == 0 {
            var sizeLine: [UInt8] = []
            while true {
                guard let b = try reader.byte() else { return nil }
                if b == 0x0A { break }
                sizeLine.append(b)
            }
            // A chunk's trailing CRLF comes before the next size line: skip that empty line.
            if sizeLine == [13] || sizeLine.isEmpty { return try byte(&reader) }
            let hex = String(decoding: sizeLine.prefix { $0 != 0x3B && $0 != 13 }, as: UTF8.self)
            guard let size = Int(hex.filter { $0 != " " }, radix: 16) else {
                throw UnixHTTPClient.ClientError(description: "malformed chunk size from rtvisord: \(hex)")
            }
            if size == 0 { ended = true; return nil }
            left = size
        }
        left -= 1
        return try reader.byte()
    }
}

extension [UInt8] {
    func ends(with suffix: [UInt8]) -> Bool { count >= suffix.count && Array(self[(count - suffix.count)...]) == suffix }
}
