import APIModels
import Daemon
import Metrics
import VMMInterface

/// `GET /metrics` (api.sock, metrics.sock, the metrics TCP listener): the daemon's one stats
/// collection (`VMControl.stats`) in Prometheus' text format, rendered here in the front.
extension APIRouter {
    func metrics() async -> APIResponse {
        do {
            let stats = try await control.stats(nil)
            let text = PrometheusExposition.render(stats, version: RtvisorRelease.version)
            return APIResponse(status: 200, headers: [("Content-Type", PrometheusExposition.contentType)], body: Array(text.utf8))
        } catch {
            return Self.failure(error)
        }
    }
}
