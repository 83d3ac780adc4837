import APIModels
import ArgumentParser
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

struct Stats: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show a VM's statistics: vCPU time, steal and exits by kind, memory, disk and NIC traffic, restarts, uptime, a real-time VM's latency.",
        discussion: """
        Totals since the VMM started (GET /v1/vms/NAME/stats; --json prints that VMStats). A part \
        rtvisord could not read is left out (no VMM running; a VMM too old to count, or not \
        answering within 1 s). Rates: rtvisorctl top.
        """)
    @OptionGroup var options: CommonOptions
    @OptionGroup var vm: NameArgument

    func run() throws {
        try options.call("GET", "/v1/vms/\(pathComponent(vm.name))/stats", as: VMStats.self) { s in
            for line in Self.lines(s, now: Date().timeIntervalSince1970) { print(line) }
        }
    }

    /// The human form: one line per part.
    static func lines(_ s: VMStats, now: Double) -> [String] {
        var head = "\(s.name): \(s.state.rawValue)"
        if let pid = s.pid { head += ", PID \(pid)" }
        if let started = s.vmmStartedAt { head += ", up \(durationText(now - started))" }
        head += ", \(s.restarts) restart\(s.restarts == 1 ? "" : "s")"
        var out = [head]
        for v in s.vcpus {
            var line = "  vCPU \(v.index): CPU \(v.cpuSeconds.map { secondsText($0) } ?? "-"), steal \(v.stealSeconds.map { secondsText($0) } ?? "-")"
            if !v.exits.isEmpty {
                let kinds = v.exits.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }.map { "\($0.key) \($0.value)" }
                line += ", exits \(v.exits.values.reduce(0, +)) (\(kinds.joined(separator: ", ")))"
            }
            out.append(line)
        }
        if let m = s.memory {
            var line = "  memory: guest \(byteText(m.guestBytes))"
            if let r = m.residentBytes { line += ", resident \(byteText(r))" }
            if let l = m.lockedBytes, l > 0 { line += ", locked \(byteText(l))" }
            if let c = m.cgroupCurrentBytes { line += ", cgroup \(byteText(c))" + (m.cgroupMaxBytes.map { " of \(byteText($0))" } ?? " (no limit)") }
            out.append(line)
        }
        for d in s.disks {
            let ops = d.readOps + d.writeOps + d.flushOps
            let mean = ops > 0 ? ", mean \(decimalText(d.serviceSeconds * 1000 / Double(ops), 3)) ms" : ""
            out.append("  disk \(d.id): \(d.readOps) reads (\(byteText(d.readBytes))), \(d.writeOps) writes (\(byteText(d.writeBytes))), \(d.flushOps) flushes, \(d.errors) errors\(mean)")
        }
        for n in s.nics {
            out.append("  NIC \(n.id) (tap \(n.tap)): rx \(n.rxFrames) frames (\(byteText(n.rxBytes))), tx \(n.txFrames) frames (\(byteText(n.txBytes))), drops rx \(n.rxDrops) tx \(n.txDrops)" + (n.tapDrops.map { ", at the tap \($0)" } ?? ""))
        }
        if let rt = s.realtime {
            var line = "  real-time: CPUs \(rt.cpus.map(String.init).joined(separator: ",")), SCHED_FIFO \(rt.priority)"
            if let l = rt.latency {
                func us(_ ns: UInt64) -> String { decimalText(Double(ns) / 1000, 1) + " µs" }
                line += "; latency p50 \(us(l.p50Nanoseconds)), p99 \(us(l.p99Nanoseconds)), p99.99 \(us(l.p9999Nanoseconds)), max \(us(l.maxNanoseconds)) (\(l.samples) samples)"
            }
            out.append(line)
        }
        return out
    }
}

struct Top: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "A refreshing table of every VM: CPU, exits, memory, disk and network rates (like systemd-cgtop or virt-top).",
        discussion: """
        Rates are computed between two reads of GET /v1/stats, --interval seconds apart (a VM \
        whose VMM changed in between shows "-"). CPU% is the vCPU threads' host CPU time, in \
        percent of one CPU. On a terminal the screen is redrawn; otherwise each table follows \
        the last. --once (one table after one interval) and --iterations N are for scripts.
        """)
    @OptionGroup var options: CommonOptions
    @Option(help: "Seconds between two reads.")
    var interval: Double = 2
    @Option(help: "Sort by: \(VMRates.Order.allCases.map(\.rawValue).joined(separator: ", ")) (busiest first; name: by name).",
            completion: .list(VMRates.Order.allCases.map(\.rawValue)))
    var sort: String = "cpu"
    @Option(help: "Stop after this many tables.")
    var iterations: Int?
    @Flag(help: "One table (after one interval), then exit: --iterations 1.")
    var once = false

    func validate() throws {
        guard VMRates.Order(rawValue: sort) != nil else {
            throw ValidationError("--sort must be one of \(VMRates.Order.allCases.map(\.rawValue).joined(separator: ", ")), got \"\(sort)\"")
        }
        guard interval >= 0.1 && interval <= 3600 else { throw ValidationError("--interval must be 0.1–3600 seconds, got \(interval)") }
        if let iterations, iterations < 1 { throw ValidationError("--iterations must be 1 or more, got \(iterations)") }
        if options.json { throw ValidationError("top has no --json: GET /v1/stats (rtvisorctl stats NAME --json) has the counters") }
    }

    func run() throws {
        let order = VMRates.Order(rawValue: sort)!
        let limit = once ? 1 : iterations
        let redraw = isatty(STDOUT_FILENO) == 1
        var previous = try options.fetch("GET", "/v1/stats", as: StatsList.self).0
        var shown = 0
        while limit.map({ shown < $0 }) ?? true {
            usleep(useconds_t(interval * 1_000_000))
            let current = try options.fetch("GET", "/v1/stats", as: StatsList.self).0
            let rows = VMRates.sorted(VMRates.between(previous, current), by: order)
            var text = redraw ? "\u{1B}[H\u{1B}[2J" : shown > 0 ? "\n" : ""
            text += "rtvisor top: \(current.vms.count) VM\(current.vms.count == 1 ? "" : "s"), every \(interval) s, sorted by \(order.rawValue)\n"
            text += tableLines(Self.header, rows.map(Self.row)).joined(separator: "\n") + "\n"
            writeOut(Array(text.utf8))
            previous = current
            shown += 1
        }
    }

    static let header = ["NAME", "STATE", "PID", "CPU%", "STEAL%", "EXITS/s", "RSS", "DISK R/s", "DISK W/s", "DISK IOPS", "NET FRAMES/s", "NET B/s", "RESTARTS", "UPTIME"]

    static func row(_ r: VMRates) -> [String] {
        func f(_ v: Double?, _ digits: Int = 1) -> String { v.map { decimalText($0, digits) } ?? "-" }
        func b(_ v: Double?) -> String { v.map { byteText(UInt64($0.rounded())) } ?? "-" }
        return [r.name, r.state.rawValue, r.pid.map(String.init) ?? "-", f(r.cpuPercent), f(r.stealPercent), f(r.exitsPerSecond, 0),
                r.residentBytes.map { byteText($0) } ?? "-", b(r.diskReadBytesPerSecond), b(r.diskWriteBytesPerSecond), f(r.diskOpsPerSecond, 0),
                f(r.netFramesPerSecond, 0), b(r.netBytesPerSecond), String(r.restarts), r.uptimeSeconds.map { durationText($0) } ?? "-"]
    }
}

/// 1536 → "1.5 KiB".
func byteText(_ n: UInt64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var v = Double(n), u = 0
    while v >= 1024 && u < units.count - 1 { v /= 1024; u += 1 }
    return u == 0 ? "\(n) B" : decimalText(v, 1) + " " + units[u]
}

/// 3725 → "1h02m05s".
func durationText(_ seconds: Double) -> String {
    let s = Int(max(0, seconds))
    if s >= 86400 { return "\(s / 86400)d\(String(s % 86400 / 3600).leftPad(2))h" }
    if s >= 3600 { return "\(s / 3600)h\(String(s % 3600 / 60).leftPad(2))m\(String(s % 60).leftPad(2))s" }
    if s >= 60 { return "\(s / 60)m\(String(s % 60).leftPad(2))s" }
    return "\(s)s"
}

func secondsText(_ s: Double) -> String { decimalText(s, 2) + " s" }

/// `v` with `digits` decimals, rounded (no String(format:) without Foundation's full build).
func decimalText(_ v: Double, _ digits: Int) -> String {
    guard v.isFinite else { return "-" }
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    let n = Int64((abs(v) * scale).rounded())
    let whole = String(n / Int64(scale)), frac = String(n % Int64(scale)).leftPad(digits)
    return (v < 0 && n > 0 ? "-" : "") + whole + (digits > 0 ? "." + frac : "")
}
