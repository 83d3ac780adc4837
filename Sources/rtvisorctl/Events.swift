import APIModels
import ArgumentParser
import Posix
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

struct Events: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show rtvisord's recent lifecycle events (started, stopped and why, restart scheduled, reload…); --follow: then each new one as it happens.",
        discussion: """
        One line per event: time, VM, event, message. --json prints the API's newline-delimited JSON \
        (GET /v1/events), one DaemonEvent per line, with its sequence number (seq) for --since. \
        The daemon keeps the last 1000 events; the journal has them all (rtvisorctl logs).
        """)
    @OptionGroup var options: CommonOptions
    @Flag(name: [.short, .long], help: "Keep going: print each new event until interrupted (or the daemon stops).")
    var follow = false
    @Option(help: "Only this VM's events.", completion: .custom { _, _, _ in vmNamesForCompletion() })
    var vm: String?
    @Option(help: "Only events after this sequence number (seq in --json).")
    var since: UInt64?

    func run() throws {
        var query: [String] = []
        if let since { query.append("since=\(since)") }
        if let vm { query.append("vm=\(pathComponent(vm))") }
        if follow { query.append("follow=1") }
        let target = "/v1/events" + (query.isEmpty ? "" : "?" + query.joined(separator: "&"))
        let show = { (line: [UInt8]) in
            if options.json {
                writeOut(line + [0x0A])
            } else if let e = try? JSONDecoder().decode(DaemonEvent.self, from: Data(line)) {
                writeOut(Array((Self.human(e) + "\n").utf8))
            }
        }
        let client = options.client
        if follow {
            // A follower waits as long as nothing happens (no receive timeout in `stream`).
            let refused: UnixHTTPClient.Response?
            do { refused = try client.stream(target) { line in show(line); return true } } catch {
                writeErr("rtvisorctl: \(error)\n")
                throw ExitCode(2)
            }
            if let refused { try options.fail(refused) }
            return
        }
        let r: UnixHTTPClient.Response
        do { r = try client.request("GET", target) } catch {
            writeErr("rtvisorctl: \(error)\n")
            throw ExitCode(2)
        }
        guard (200..<300).contains(r.status) else { try options.fail(r) }
        for line in r.body.split(separator: 0x0A) { show(Array(line)) }
    }

    /// `2026-12-06 05:49:02  web  vm-stopped  VM web ended: …`, in local time.
    static func human(_ e: DaemonEvent) -> String {
        "\(localTime(e.time))  \(e.vm ?? "-")  \(e.kind)  \(e.message)"
    }
}

/// Seconds since the epoch as local `YYYY-MM-DD HH:MM:SS`.
func localTime(_ seconds: Double) -> String {
    var t = time_t(seconds)
    var parts = tm()
    localtime_r(&t, &parts)
    var buf = [CChar](repeating: 0, count: 32)
    let n = strftime(&buf, buf.count, "%Y-%m-%d %H:%M:%S", &parts)
    return String(decoding: buf.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

func writeOut(_ bytes: [UInt8]) {
    // Unbuffered: a follower's line shows when it happens, also through a pipe.
    try? writeAll(STDOUT_FILENO, bytes)
}

extension CommonOptions {
    /// A non-2xx answer: its message and code on stderr (the JSON on stdout with --json), exit 1.
    func fail(_ r: UnixHTTPClient.Response) throws -> Never {
        if json { print(r.text, terminator: r.text.hasSuffix("\n") ? "" : "\n") }
        let body = try? JSONDecoder().decode(APIErrorBody.self, from: Data(r.body))
        writeErr("rtvisorctl: \(body?.error ?? r.text) (\(body?.code.map { "\($0), " } ?? "")HTTP \(r.status))\n")
        throw ExitCode(1)
    }
}
