import APIModels
import Foundation
import Posix

/// `stats`: the supervisor's part of the one aggregation. It takes a consistent picture of its
/// records (`StatsTarget`s) and hands the reads to the `StatsCollector` off the actor, one VM
/// per thread, so a slow file or VMM holds up neither the supervisor nor the other VMs.
extension Supervisor {
    public func stats(_ name: String?) async throws(ControlError) -> StatsList {
        let names = name.map { [$0] } ?? records.keys.sorted()
        var targets: [StatsTarget] = []
        for n in names { targets.append(statsTarget(try record(n))) }
        let collector = statsCollector
        let collected = await withTaskGroup(of: (Int, VMStats).self) { group in
            for (i, t) in targets.enumerated() {
                group.addTask { (i, await Processes.offThePool { collector.collect(t) }) }
            }
            var out: [(Int, VMStats)] = []
            for await r in group { out.append(r) }
            return out.sorted { $0.0 < $1.0 }.map(\.1)
        }
        return StatsList(vms: collected, collectedAt: Date().timeIntervalSince1970)
    }

    /// Asked of the VMM over its control socket, off the actor and the pool, with the stats'
    /// timeout: a VMM that does not answer costs this call that much and nothing else.
    public func consoleTail(_ name: String, lines: Int) async throws(ControlError) -> ConsoleTail {
        let r = try record(name)
        guard r.pid != nil, r.state == .running || r.state == .stopping else {
            throw .conflict("VM \(name) is \(r.state.rawValue): no console to read")
        }
        let socket = paths.controlSocket(name)
        let count = max(1, min(lines, ConsoleTail.maxLines))
        let bytes = await Processes.offThePool {
            Result { () throws(VMMControlClient.ClientError) in
                try VMMControlClient.connect(socket, timeoutSeconds: StatsCollector.vmmTimeoutSeconds)
                    .consoleTail(maxBytes: count * ConsoleTail.maxLineLength)
            }
        }
        switch bytes {
        case let .success(b?): return ConsoleTail(name: name, lines: ConsoleTail.lines(of: b, count: count))
        case .success(nil): throw .conflict("VM \(name)'s VMM is older than control protocol 6: it cannot show its console's end")
        case let .failure(e): throw .failed("VM \(name): cannot read its console: \(e)")
        }
    }

    func statsTarget(_ r: Record) -> StatsTarget {
        let d = r.current
        let process = r.lifecycle.process.map { ProcessIdentity(pid: $0.pid, startTime: $0.startTime) }
        let probe = (d.realtime?.latencyProbeMicroseconds ?? 0) > 0
        // A VMM paused by SIGSTOP cannot answer: asking would only cost the timeout.
        let answers: Bool = switch r.lifecycle.phase {
        case .running, .stopping: true
        default: false
        }
        return StatsTarget(name: r.loaded.name, state: r.state, process: process, restarts: r.lifecycle.restarts,
                           guestBytes: UInt64(d.memoryMiB) << 20,
                           realtime: d.realtime.map { RealtimeStats(cpus: $0.cpus, priority: $0.priority, latency: nil) },
                           latencyFile: probe ? paths.latencyFile(r.loaded.name) : nil,
                           controlSocket: answers && process != nil ? paths.controlSocket(r.loaded.name) : nil,
                           diskIDs: d.disks.enumerated().map { $0.element.serial.isEmpty ? String($0.offset) : $0.element.serial },
                           nicTaps: d.nets.map(\.tap))
    }
}
