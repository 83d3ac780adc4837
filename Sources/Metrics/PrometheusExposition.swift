import APIModels
import VMMInterface

/// `GET /metrics`: a `StatsList` in Prometheus' text exposition format (version 0.0.4), as a pure
/// function so that it is tested without a daemon. Naming follows Prometheus' conventions: the
/// `rtvisor_` prefix, base units (seconds, bytes), `_total` on counters, the VM, vCPU, disk and NIC
/// as labels. A section the daemon could not read has no sample (absent, never zero).
///
/// Rendered by hand rather than through swift-prometheus: that library's instruments take
/// observations one at a time (a histogram's `record`), while this data arrives already
/// aggregated (counter totals from the VMM, the latency probe's HDR buckets); docs/metrics.md
/// has the measurement.
public enum PrometheusExposition {
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    /// Upper bounds (seconds) of the wake-up latency histogram's buckets: fixed, so that a series'
    /// `le` labels do not change between scrapes; the HDR buckets are summed into them.
    public static let latencyBounds: [Double] = [
        1e-6, 2e-6, 5e-6, 10e-6, 20e-6, 50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3, 100e-3,
    ]

    /// The whole exposition of one collection. `version`: rtvisord's release (`rtvisor_info`).
    public static func render(_ stats: StatsList, version: String) -> String {
        var out = ExpositionWriter()
        out.family("rtvisor_info", .gauge, "The rtvisord release serving these metrics (always 1).")
        out.sample("rtvisor_info", ["version": version], 1)
        out.family("rtvisor_stats_collected_timestamp_seconds", .gauge, "Unix time when rtvisord collected these numbers.")
        out.sample("rtvisor_stats_collected_timestamp_seconds", [:], stats.collectedAt)
        vmFamilies(stats.vms, &out)
        vcpuFamilies(stats.vms, &out)
        memoryFamilies(stats.vms, &out)
        diskFamilies(stats.vms, &out)
        nicFamilies(stats.vms, &out)
        realtimeFamilies(stats.vms, &out)
        return out.text
    }

    static func vmFamilies(_ vms: [VMStats], _ out: inout ExpositionWriter) {
        out.family("rtvisor_vm_state", .gauge, "1 for the VM's current state, 0 for the others.")
        for vm in vms {
            for state in VMStateName.allCases {
                out.sample("rtvisor_vm_state", ["vm": vm.name, "state": state.rawValue], vm.state == state ? 1 : 0)
            }
        }
        out.family("rtvisor_vm_restarts_total", .counter, "Automatic restarts and guest reboots since rtvisord loaded the definition.")
        for vm in vms { out.sample("rtvisor_vm_restarts_total", ["vm": vm.name], Double(vm.restarts)) }
        out.family("rtvisor_vm_start_time_seconds", .gauge, "Unix time the VM's running VMM started (counters start again then).")
        for vm in vms { if let t = vm.vmmStartedAt { out.sample("rtvisor_vm_start_time_seconds", ["vm": vm.name], t) } }
    }

    static func vcpuFamilies(_ vms: [VMStats], _ out: inout ExpositionWriter) {
        let rows = vms.flatMap { vm in vm.vcpus.map { (vm.name, $0) } }
        func labels(_ vm: String, _ v: VCPUStats) -> [String: String] { ["vm": vm, "vcpu": String(v.index)] }
        out.family("rtvisor_vcpu_cpu_seconds_total", .counter, "Host CPU time of the vCPU thread, guest time included.")
        for (vm, v) in rows { if let s = v.cpuSeconds { out.sample("rtvisor_vcpu_cpu_seconds_total", labels(vm, v), s) } }
        out.family("rtvisor_vcpu_steal_seconds_total", .counter, "Time the vCPU thread was runnable but waited for a host CPU.")
        for (vm, v) in rows { if let s = v.stealSeconds { out.sample("rtvisor_vcpu_steal_seconds_total", labels(vm, v), s) } }
        out.family("rtvisor_vcpu_exits_total", .counter, "KVM exits of the vCPU by kind.")
        for (vm, v) in rows {
            for kind in v.exits.keys.sorted() {
                out.sample("rtvisor_vcpu_exits_total", labels(vm, v).merging(["kind": kind]) { a, _ in a }, Double(v.exits[kind]!))
            }
        }
    }

    static func memoryFamilies(_ vms: [VMStats], _ out: inout ExpositionWriter) {
        let gauges: [(String, String, KeyPath<MemoryStats, UInt64?>)] = [
            ("rtvisor_vm_memory_resident_bytes", "Resident set of the VM's VMM process (VmRSS).", \.residentBytes),
            ("rtvisor_vm_memory_locked_bytes", "Locked memory of the VMM process (VmLck): a real-time VM's whole RAM.", \.lockedBytes),
            ("rtvisor_vm_memory_cgroup_bytes", "Memory in use by the VM's cgroup.", \.cgroupCurrentBytes),
            ("rtvisor_vm_memory_cgroup_limit_bytes", "The VM's cgroup memory limit (absent: none).", \.cgroupMaxBytes),
        ]
        out.family("rtvisor_vm_memory_guest_bytes", .gauge, "The guest's RAM as defined.")
        for vm in vms { if let m = vm.memory { out.sample("rtvisor_vm_memory_guest_bytes", ["vm": vm.name], Double(m.guestBytes)) } }
        for (name, help, field) in gauges {
            out.family(name, .gauge, help)
            for vm in vms { if let v = vm.memory?[keyPath: field] { out.sample(name, ["vm": vm.name], Double(v)) } }
        }
    }

    static func diskFamilies(_ vms: [VMStats], _ out: inout ExpositionWriter) {
        let counters: [(String, String, (DiskStats) -> Double)] = [
            ("rtvisor_disk_read_ops_total", "Read requests completed.", { Double($0.readOps) }),
            ("rtvisor_disk_write_ops_total", "Write requests completed.", { Double($0.writeOps) }),
            ("rtvisor_disk_flush_ops_total", "Flush requests completed.", { Double($0.flushOps) }),
            ("rtvisor_disk_read_bytes_total", "Bytes read by the guest.", { Double($0.readBytes) }),
            ("rtvisor_disk_written_bytes_total", "Bytes written by the guest.", { Double($0.writeBytes) }),
            ("rtvisor_disk_errors_total", "Requests that ended with an error.", { Double($0.errors) }),
            ("rtvisor_disk_service_seconds_total", "Host-side service time of the requests, summed.", { $0.serviceSeconds }),
        ]
        let rows = vms.flatMap { vm in vm.disks.map { (vm.name, $0) } }
        for (name, help, value) in counters {
            out.family(name, .counter, help)
            for (vm, d) in rows { out.sample(name, ["vm": vm, "disk": d.id], value(d)) }
        }
    }

    static func nicFamilies(_ vms: [VMStats], _ out: inout ExpositionWriter) {
        let counters: [(String, String, (NICStats) -> UInt64)] = [
            ("rtvisor_net_receive_frames_total", "Frames the guest received.", \.rxFrames),
            ("rtvisor_net_receive_bytes_total", "Bytes the guest received.", \.rxBytes),
            ("rtvisor_net_transmit_frames_total", "Frames the guest sent.", \.txFrames),
            ("rtvisor_net_transmit_bytes_total", "Bytes the guest sent.", \.txBytes),
            ("rtvisor_net_receive_drops_total", "Frames dropped because the guest had no receive buffer.", \.rxDrops),
            ("rtvisor_net_transmit_drops_total", "Frames the guest sent that could not be transmitted.", \.txDrops),
        ]
        let rows = vms.flatMap { vm in vm.nics.map { (vm.name, $0) } }
        for (name, help, value) in counters {
            out.family(name, .counter, help)
            for (vm, n) in rows { out.sample(name, ["vm": vm, "nic": n.id, "tap": n.tap], Double(value(n))) }
        }
        let tapDrops = "rtvisor_net_tap_drops_total"
        out.family(tapDrops, .counter, "Frames for the guest the host kernel dropped at the tap because the VMM had not read them.")
        for (vm, n) in rows { if let d = n.tapDrops { out.sample(tapDrops, ["vm": vm, "nic": n.id, "tap": n.tap], Double(d)) } }
    }

    static func realtimeFamilies(_ vms: [VMStats], _ out: inout ExpositionWriter) {
        let rows = vms.compactMap { vm in vm.realtime.map { (vm.name, $0) } }
        out.family("rtvisor_realtime_partition_info", .gauge, "A real-time VM's partition: its host CPUs and SCHED_FIFO priority (always 1).")
        for (vm, rt) in rows {
            out.sample("rtvisor_realtime_partition_info", ["vm": vm, "cpus": rt.cpus.map(String.init).joined(separator: ","),
                                                            "priority": String(rt.priority)], 1)
        }
        let latencies = rows.compactMap { vm, rt in rt.latency.map { (vm, $0) } }
        let name = "rtvisor_realtime_wakeup_latency_seconds"
        out.family(name, .histogram, "How late a thread at the vCPUs' priority on the partition's first CPU woke after its timer.")
        for (vm, l) in latencies {
            let buckets = cumulativeBuckets(l)
            for (bound, count) in buckets {
                out.sample(name + "_bucket", ["vm": vm, "le": ExpositionWriter.number(bound)], Double(count))
            }
            out.sample(name + "_sum", ["vm": vm], l.meanNanoseconds * Double(l.samples) / 1e9)
            out.sample(name + "_count", ["vm": vm], Double(buckets.last!.1))
        }
        out.family("rtvisor_realtime_wakeup_latency_max_seconds", .gauge, "The largest wake-up latency seen since the VMM started.")
        for (vm, l) in latencies { out.sample("rtvisor_realtime_wakeup_latency_max_seconds", ["vm": vm], Double(l.maxNanoseconds) / 1e9) }
    }

    /// The probe's HDR buckets ([highest equivalent ns, count]) summed into `latencyBounds`,
    /// cumulative as Prometheus wants them, ending with +Inf (= all samples).
    public static func cumulativeBuckets(_ l: LatencySnapshot) -> [(Double, UInt64)] {
        var counts = [UInt64](repeating: 0, count: latencyBounds.count + 1)
        for bucket in l.buckets where bucket.count == 2 {
            let seconds = Double(bucket[0]) / 1e9
            let slot = latencyBounds.firstIndex { seconds <= $0 } ?? latencyBounds.count
            counts[slot] &+= bucket[1]
        }
        var running: UInt64 = 0
        var out: [(Double, UInt64)] = []
        for (i, c) in counts.enumerated() {
            running &+= c
            out.append((i < latencyBounds.count ? latencyBounds[i] : .infinity, running))
        }
        // +Inf is the count: the probe's total, even if a bucket list was cut short.
        out[out.count - 1].1 = max(running, l.samples)
        return out
    }
}
