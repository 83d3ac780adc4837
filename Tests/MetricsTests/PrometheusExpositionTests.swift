import APIModels
import Foundation
import Metrics
import Testing
import VMMInterface

/// `GET /metrics`, read back by prometheus_client's parser (scripts/parse-exposition.py, Debian
/// python3-prometheus-client): what a Prometheus server would store is what the tests check.
@Suite struct PrometheusExpositionTests {
    let text = PrometheusExposition.render(ExpositionFixtures.stats, version: "1.2.3")

    /// The parsed families, or nil (and the reason printed) when the parser is not installed.
    func parsed(_ text: String) throws -> [String: ExpositionFixtures.Family]? {
        switch try ExpositionFixtures.parse(text) {
        case let .parsed(families): return families
        case let .unavailable(reason):
            print("SKIP: prometheus_client's parser is unavailable: \(reason)")
            return nil
        case let .rejected(reason):
            Issue.record("the reference parser rejected the exposition: \(reason)\n\(text)")
            return nil
        }
    }

    @Test func everyFamilyHasTheRtvisorPrefixAndItsPrometheusType() throws {
        guard let families = try parsed(text) else { return }
        #expect(families.keys.allSatisfy { $0.hasPrefix("rtvisor_") })
        // prometheus_client names a counter's family without `_total`; its samples keep it.
        #expect(families["rtvisor_vm_restarts"]?.type == "counter")
        #expect(families["rtvisor_disk_read_bytes"]?.type == "counter")
        #expect(families["rtvisor_vcpu_cpu_seconds"]?.type == "counter")
        #expect(families["rtvisor_vm_memory_resident_bytes"]?.type == "gauge")
        #expect(families["rtvisor_realtime_wakeup_latency_seconds"]?.type == "histogram")
        #expect(families["rtvisor_info"]?.value("rtvisor_info", ["version": "1.2.3"]) == 1)
        #expect(families["rtvisor_stats_collected_timestamp_seconds"]?.samples.first?.value == 1_765_000_100.25)
    }

    @Test func countersCarryTheVMAndDiskOrNICAsLabelsInBaseUnits() throws {
        guard let families = try parsed(text) else { return }
        let disk = ["vm": "web", "disk": "root"]
        #expect(families["rtvisor_disk_read_bytes"]?.value("rtvisor_disk_read_bytes_total", disk) == 40960)
        #expect(families["rtvisor_disk_written_bytes"]?.value("rtvisor_disk_written_bytes_total", disk) == 81920)
        #expect(families["rtvisor_disk_write_ops"]?.value("rtvisor_disk_write_ops_total", disk) == 20)
        #expect(families["rtvisor_disk_service_seconds"]?.value("rtvisor_disk_service_seconds_total", disk) == 0.125)
        let nic = ["vm": "web", "nic": "net0", "tap": "tap-web"]
        #expect(families["rtvisor_net_receive_bytes"]?.value("rtvisor_net_receive_bytes_total", nic) == 500)
        #expect(families["rtvisor_net_transmit_frames"]?.value("rtvisor_net_transmit_frames_total", nic) == 6)
        #expect(families["rtvisor_net_receive_drops"]?.value("rtvisor_net_receive_drops_total", nic) == 1)
        #expect(families["rtvisor_net_tap_drops"]?.value("rtvisor_net_tap_drops_total", nic) == 3)
        #expect(families["rtvisor_vcpu_cpu_seconds"]?.value("rtvisor_vcpu_cpu_seconds_total", ["vm": "web", "vcpu": "0"]) == 12.25)
        #expect(families["rtvisor_vcpu_exits"]?.value("rtvisor_vcpu_exits_total", ["vm": "web", "vcpu": "0", "kind": "mmio"]) == 7)
        #expect(families["rtvisor_vm_restarts"]?.value("rtvisor_vm_restarts_total", ["vm": "web"]) == 2)
        #expect(families["rtvisor_vm_memory_guest_bytes"]?.value("rtvisor_vm_memory_guest_bytes", ["vm": "web"]) == 268_435_456)
    }

    @Test func theStateIsOneSeriesPerStateWithOneOfThemSet() throws {
        guard let families = try parsed(text), let state = families["rtvisor_vm_state"] else { Issue.record("no rtvisor_vm_state"); return }
        let web = state.samples.filter { $0.labels["vm"] == "web" }
        #expect(web.count == VMStateName.allCases.count)
        #expect(web.filter { $0.value == 1 }.map { $0.labels["state"] } == ["running"])
        #expect(state.value("rtvisor_vm_state", ["vm": "idle", "state": "stopped"]) == 1)
    }

    @Test func whatTheDaemonCouldNotReadHasNoSampleRatherThanZero() throws {
        guard let families = try parsed(text) else { return }
        let idle = families.values.flatMap(\.samples).filter { $0.labels["vm"] == "idle" }
        #expect(Set(idle.map(\.name)) == ["rtvisor_vm_state", "rtvisor_vm_restarts_total"])
        // vCPU 1 of web: no CPU time read, so no sample (its exits map is empty too).
        #expect(families["rtvisor_vcpu_cpu_seconds"]?.samples.contains { $0.labels["vcpu"] == "1" } == false)
        // web has no cgroup limit, rt no cgroup usage.
        #expect(families["rtvisor_vm_memory_cgroup_limit_bytes"]?.samples.map { $0.labels["vm"] } == ["rt"])
        #expect(families["rtvisor_vm_memory_cgroup_bytes"]?.samples.map { $0.labels["vm"] } == ["web"])
    }

    @Test func theWakeUpLatencyIsACumulativeHistogramInSeconds() throws {
        guard let families = try parsed(text), let h = families["rtvisor_realtime_wakeup_latency_seconds"] else { return }
        let name = "rtvisor_realtime_wakeup_latency_seconds"
        func bucket(_ le: String) -> Double? { h.value(name + "_bucket", ["vm": "rt", "le": le]) }
        #expect(bucket("1e-06") == 0)
        #expect(bucket("2e-06") == 600)
        #expect(bucket("5e-06") == 900)
        #expect(bucket("5e-05") == 999)
        #expect(bucket("0.1") == 999)
        #expect(bucket("+Inf") == 1000)
        #expect(h.value(name + "_count", ["vm": "rt"]) == 1000)
        // mean 4 µs × 1000 samples.
        #expect(abs((h.value(name + "_sum", ["vm": "rt"]) ?? 0) - 0.004) < 1e-12)
        let buckets = h.samples.filter { $0.name == name + "_bucket" }.map(\.value)
        #expect(buckets == buckets.sorted())
        #expect(buckets.count == PrometheusExposition.latencyBounds.count + 1)
        let partition = families["rtvisor_realtime_partition_info"]
        #expect(partition?.value("rtvisor_realtime_partition_info", ["vm": "rt", "cpus": "2,3", "priority": "80"]) == 1)
        #expect(families["rtvisor_realtime_wakeup_latency_max_seconds"]?.samples.first?.value == 3)
    }

    @Test func labelValuesWithQuotesBackslashesAndNewlinesRoundTrip() throws {
        let odd = "a \"quoted\" \\ back\nslash"
        var stats = ExpositionFixtures.stats
        stats.vms[0].disks[0].id = odd
        guard let families = try parsed(PrometheusExposition.render(stats, version: "v\"1")) else { return }
        #expect(families["rtvisor_disk_read_ops"]?.value("rtvisor_disk_read_ops_total", ["vm": "web", "disk": odd]) == 10)
        #expect(families["rtvisor_info"]?.value("rtvisor_info", ["version": "v\"1"]) == 1)
    }

    @Test func anEmptyDaemonStillExposesItsInfo() throws {
        let empty = PrometheusExposition.render(StatsList(vms: [], collectedAt: 0), version: "x")
        #expect(empty.contains("rtvisor_info{version=\"x\"} 1\n"))
        guard let families = try parsed(empty) else { return }
        #expect(families["rtvisor_vm_state"]?.samples.isEmpty == true)
    }

    @Test func theSameCollectionRendersTheSameBytes() {
        #expect(PrometheusExposition.render(ExpositionFixtures.stats, version: "1.2.3") == text)
        #expect(text.hasSuffix("\n"))
    }

    @Test func hdrBucketsBeyondTheListAndAShortListStillCountEverySample() {
        var l = ExpositionFixtures.latency
        l.buckets = [[1000, 10]]
        l.samples = 15
        let buckets = PrometheusExposition.cumulativeBuckets(l)
        #expect(buckets.first! == (1e-6, 10))
        #expect(buckets.last!.0 == .infinity)
        #expect(buckets.last!.1 == 15)
    }
}
