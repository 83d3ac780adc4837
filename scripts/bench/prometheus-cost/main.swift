import Foundation
import Prometheus

// 50 VMs: 2 vCPUs (6 exit kinds each), memory, one disk, one NIC; 5 of them real-time with a
// latency probe at 1 kHz for an hour (3.6 million samples in ~60 HDR buckets).
func fixture(samplesPerRT: UInt64) -> StatsList {
    let buckets: [[UInt64]] = (0..<60).map { i in [UInt64(1000 + i * 250), samplesPerRT / 60] }
    return StatsList(vms: (0..<50).map { i in
        let rt = i % 10 == 0
        return VMStats(name: "vm\(i)", state: .running, pid: Int32(1000 + i), vmmStartedAt: 1.7e9, restarts: 1,
                vcpus: (0..<2).map { VCPUStats(index: $0, cpuSeconds: 12.5, stealSeconds: 0.25, exits: ["io": 100, "mmio": 50, "hlt": 1000, "irq_window": 3, "shutdown": 0, "other": 7]) },
                memory: MemoryStats(guestBytes: 1 << 28, residentBytes: 1 << 27, lockedBytes: nil, cgroupCurrentBytes: 1 << 27, cgroupMaxBytes: 1 << 29),
                disks: [DiskStats(id: "root", readOps: 1000, writeOps: 2000, flushOps: 30, readBytes: 4 << 20, writeBytes: 8 << 20, errors: 0, serviceSeconds: 1.5)],
                nics: [NICStats(id: "net0", tap: "tap\(i)", rxFrames: 500, rxBytes: 50000, txFrames: 600, txBytes: 60000, rxDrops: 0, txDrops: 0)],
                realtime: rt ? RealtimeStats(cpus: [1], priority: 80, latency: LatencySnapshot(name: "vm\(i)", cpu: 1, priority: 80, periodMicroseconds: 1000, samples: samplesPerRT, minNanoseconds: 1000, meanNanoseconds: 5000, p50Nanoseconds: 5000, p99Nanoseconds: 15000, p9999Nanoseconds: 16000, maxNanoseconds: 16000, buckets: buckets, updatedAt: 1.7e9)) : nil)
    }, collectedAt: 1.7e9)
}

// Through swift-prometheus: a registry per scrape (the numbers come from another process as
// totals), each counter incremented by its total, each latency sample recorded again.
func viaSwiftPrometheus(_ stats: StatsList) -> [UInt8] {
    let r = PrometheusCollectorRegistry()
    r.makeGauge(name: "rtvisor_info", labels: [("version", "1")], help: "").set(to: 1.0)
    for vm in stats.vms {
        for s in VMStateName.allCases { r.makeGauge(name: "rtvisor_vm_state", labels: [("vm", vm.name), ("state", s.rawValue)], help: "").set(to: vm.state == s ? 1.0 : 0.0) }
        r.makeCounter(name: "rtvisor_vm_restarts_total", labels: [("vm", vm.name)], help: "").increment(by: Int64(vm.restarts))
        for v in vm.vcpus {
            let l = [("vm", vm.name), ("vcpu", String(v.index))]
            r.makeCounter(name: "rtvisor_vcpu_cpu_seconds_total", labels: l, help: "").increment(by: v.cpuSeconds ?? 0)
            r.makeCounter(name: "rtvisor_vcpu_steal_seconds_total", labels: l, help: "").increment(by: v.stealSeconds ?? 0)
            for (k, n) in v.exits { r.makeCounter(name: "rtvisor_vcpu_exits_total", labels: l + [("kind", k)], help: "").increment(by: Int64(n)) }
        }
        if let m = vm.memory {
            r.makeGauge(name: "rtvisor_vm_memory_guest_bytes", labels: [("vm", vm.name)], help: "").set(to: Double(m.guestBytes))
            r.makeGauge(name: "rtvisor_vm_memory_resident_bytes", labels: [("vm", vm.name)], help: "").set(to: Double(m.residentBytes ?? 0))
            r.makeGauge(name: "rtvisor_vm_memory_cgroup_bytes", labels: [("vm", vm.name)], help: "").set(to: Double(m.cgroupCurrentBytes ?? 0))
            r.makeGauge(name: "rtvisor_vm_memory_cgroup_limit_bytes", labels: [("vm", vm.name)], help: "").set(to: Double(m.cgroupMaxBytes ?? 0))
        }
        for d in vm.disks {
            let l = [("vm", vm.name), ("disk", d.id)]
            for (n, v) in [("read_ops", d.readOps), ("write_ops", d.writeOps), ("flush_ops", d.flushOps), ("read_bytes", d.readBytes), ("written_bytes", d.writeBytes), ("errors", d.errors)] {
                r.makeCounter(name: "rtvisor_disk_\(n)_total", labels: l, help: "").increment(by: Int64(v))
            }
            r.makeCounter(name: "rtvisor_disk_service_seconds_total", labels: l, help: "").increment(by: d.serviceSeconds)
        }
        for n in vm.nics {
            let l = [("vm", vm.name), ("nic", n.id), ("tap", n.tap)]
            for (k, v) in [("receive_frames", n.rxFrames), ("receive_bytes", n.rxBytes), ("transmit_frames", n.txFrames), ("transmit_bytes", n.txBytes), ("receive_drops", n.rxDrops), ("transmit_drops", n.txDrops)] {
                r.makeCounter(name: "rtvisor_net_\(k)_total", labels: l, help: "").increment(by: Int64(v))
            }
        }
        if let rt = vm.realtime, let lat = rt.latency {
            let h = r.makeValueHistogram(name: "rtvisor_realtime_wakeup_latency_seconds", labels: [("vm", vm.name)], buckets: PrometheusExposition.latencyBounds, help: "")
            for b in lat.buckets { for _ in 0..<b[1] { h.record(Double(b[0]) / 1e9) } }
        }
    }
    return r.emitToBuffer()
}

func time(_ label: String, _ n: Int, _ body: () -> Int) {
    var ts: [Double] = []
    var size = 0
    for _ in 0..<n {
        let t0 = ContinuousClock.now
        size = body()
        let d = ContinuousClock.now - t0
        ts.append(Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18)
    }
    ts.sort()
    print("\(label): median \(String(format: "%.3f", ts[n / 2] * 1000)) ms, \(size) bytes")
}

let hour = fixture(samplesPerRT: 3_600_000)
let none = fixture(samplesPerRT: 0)
time("hand-rendered, 50 VMs, probes at 1 kHz for an hour", 200) { PrometheusExposition.render(hour, version: "1").utf8.count }
time("swift-prometheus, 50 VMs, no latency samples", 50) { viaSwiftPrometheus(none).count }
time("swift-prometheus, 50 VMs, probes at 1 kHz for an hour", 3) { viaSwiftPrometheus(hour).count }
