import CDaemonSupport
import Posix
#if canImport(Glibc)
import Glibc
#endif

/// A minimal blocking HTTP/1.1 client for the daemon's unix socket: one request per connection
/// (`Connection: close`), so the response ends at EOF. Enough for a CLI, and it keeps
/// rtvisorctl free of SwiftNIO.
struct UnixHTTPClient {
    let socketPath: String
    /// A daemon that accepts but never answers gives an error, not a hung command.
    var timeoutSeconds = 30

    struct Response {
        var status: Int
        var body: [UInt8]
        var text: String { String(decoding: body, as: UTF8.self) }
    }

    struct ClientError: Error, CustomStringConvertible {
        let description: String
    }

    func request(_ method: String, _ target: String, body: [UInt8]? = nil) throws -> Response {
        let fd = cdaemon_connect_unix(socketPath)
        guard fd >= 0 else {
            let e = errno
            var hint = ""
            if e == ENOENT || e == ECONNREFUSED { hint = " (is rtvisord running? systemctl status rtvisord)" }
            if e == EACCES { hint = " (root or membership in group rtvisor is needed)" }
            throw ClientError(description: "cannot connect to \(socketPath): \(errnoMessage(e))\(hint)")
        }
        defer { close(fd) }
        var tv = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var head = "\(method) \(target) HTTP/1.1\r\nHost: rtvisord\r\nConnection: close\r\nAccept: application/json\r\n"
        let payload = body ?? []
        if body != nil { head += "Content-Type: application/json\r\n" }
        head += "Content-Length: \(payload.count)\r\n\r\n"
        try writeOrFail(fd, Array(head.utf8) + payload)
        var data: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n: Int
            do {
                n = try retryInterrupted { buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) } }
            } catch .resourceTemporarilyUnavailable {
                // SO_RCVTIMEO expired.
                throw ClientError(description: "no answer from rtvisord on \(socketPath) within \(timeoutSeconds) s")
            } catch {
                throw ClientError(description: "read: \(error)")
            }
            if n == 0 { break }
            data.append(contentsOf: buf[0..<n])
        }
        return try Self.parse(data)
    }

    static func parse(_ data: [UInt8]) throws -> Response {
        let sep: [UInt8] = [13, 10, 13, 10]
        guard let end = (0..<max(0, data.count - 3)).first(where: { Array(data[$0..<($0 + 4)]) == sep }) else {
            throw ClientError(description: "malformed HTTP response from rtvisord")
        }
        let head = String(decoding: data[0..<end], as: UTF8.self)
        let lines = head.split(separator: "\r\n")
        let statusParts = lines.first?.split(separator: " ") ?? []
        guard statusParts.count >= 2, let status = Int(statusParts[1]) else { throw ClientError(description: "malformed status line: \(lines.first ?? "")") }
        var body = Array(data[(end + 4)...])
        for l in lines.dropFirst() {
            let kv = l.split(separator: ":", maxSplits: 1)
            if kv.count == 2, kv[0].lowercased() == "content-length", let n = Int(kv[1].trimmingCharacters(in: " ")), n <= body.count {
                body = Array(body[0..<n])
            }
        }
        return Response(status: status, body: body)
    }
}

/// `writeAll`, failing with the CLI's error text ("write: Broken pipe").
func writeOrFail(_ fd: Int32, _ bytes: [UInt8]) throws {
    do { try writeAll(fd, bytes) } catch { throw UnixHTTPClient.ClientError(description: "write: \(error)") }
}

extension Substring {
    func trimmingCharacters(in chars: String) -> String {
        var s = self
        while let f = s.first, chars.contains(f) { s = s.dropFirst() }
        while let l = s.last, chars.contains(l) { s = s.dropLast() }
        return String(s)
    }
}
