import Foundation
import Metrics
import Testing

/// examples/metrics/grafana-dashboard.json queries only metrics rtvisord exposes: a renamed
/// metric would leave its panel empty without any error.
@Suite struct ExampleDashboardTests {
    @Test func everyMetricTheGrafanaDashboardQueriesIsExposed() throws {
        let url = ExpositionFixtures.repository.appendingPathComponent("examples/metrics/grafana-dashboard.json")
        let dashboard = try String(contentsOf: url, encoding: .utf8)
        let exposed = PrometheusExposition.render(ExpositionFixtures.stats, version: "1")
        let names = Set(dashboard.matches(of: try Regex(#"rtvisor_[a-z0-9_]+"#)).map { String(dashboard[$0.range]) })
        #expect(names.count >= 10)
        for name in names.sorted() {
            #expect(exposed.contains("\n" + name + "{") || exposed.contains("\n" + name + " "), "\(name) is queried but not exposed")
        }
    }
}
