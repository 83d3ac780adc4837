import CDaemonSupport
#if canImport(Glibc)
import Glibc
#endif

/// A connected stream socket to the unix socket at `path`, or nil. With a timeout, reads give up
/// (EAGAIN) after that many seconds without data.
public func connectToUnixSocket(_ path: String, receiveTimeoutSeconds: Int? = nil) -> Int32? {
    let fd = cdaemon_connect_unix(path)
    guard fd >= 0 else { return nil }
    if let receiveTimeoutSeconds {
        var timeout = timeval(tv_sec: receiveTimeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }
    return fd
}

/// Reads until end of file, an error or the receive timeout.
public func readUntilEnd(_ fd: Int32) -> String {
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n <= 0 { break }
        out += buf[0..<n]
    }
    return String(decoding: out, as: UTF8.self)
}

/// Sends `request` on a new connection and returns everything the peer answers before it
/// closes; nil if nothing listens at `path`. Blocking: call it off the cooperative pool.
public func unixSocketExchange(_ path: String, _ request: String, receiveTimeoutSeconds: Int? = nil) -> String? {
    guard let fd = connectToUnixSocket(path, receiveTimeoutSeconds: receiveTimeoutSeconds) else { return nil }
    defer { close(fd) }
    let bytes = Array(request.utf8)
    _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    return readUntilEnd(fd)
}

/// An HTTP/1.1 request as the control API's tests send it: one per connection.
public func httpRequest(_ method: String, _ target: String, body: String = "") -> String {
    "\(method) \(target) HTTP/1.1\r\nHost: x\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)"
}
