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

/// The read-only listeners' routes: what metrics.sock (mode 0666, any local user) and the
/// optional metrics TCP listener (no authentication) answer. Only GETs of the dashboard, the
/// exposition and the two JSON sources the dashboard polls; everything else is refused here,
/// in the front, so no mutating `ControlCall` can come from these listeners.
public struct MetricsRouter: RequestHandling {
    let api: APIRouter
    public init(api: APIRouter) { self.api = api }

    /// The paths served, for the refusal's message and the tests.
    public static let paths = ["/", "/metrics", "/v1/stats", "/v1/events"]

    public func handle(_ request: APIRequest) async -> APIResponse {
        let (path, _) = APIRouter.split(request.target)
        guard Self.paths.contains(path) else {
            return APIRouter.error(404, "\(path) is not served here: this listener is read-only (GET \(Self.paths.joined(separator: ", "))); the full API is on api.sock")
        }
        guard request.method == "GET" else { return APIRouter.methodNotAllowed("GET") }
        if path == "/" {
            return APIResponse(status: 200, headers: [("Content-Type", DashboardPage.contentType), ("Cache-Control", "no-cache")],
                               body: Array(DashboardPage.html.utf8))
        }
        // `/v1/events` without `follow`: the dashboard polls; a follower would hold one of the
        // front's few long polls for a client nobody authenticated.
        var forwarded = request
        if path == "/v1/events" { forwarded.target = Self.withoutFollow(request.target) }
        return await api.handle(forwarded)
    }

    public static func withoutFollow(_ target: String) -> String {
        let (path, query) = APIRouter.split(target)
        let kept = query.filter { $0.key != "follow" }.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        return kept.isEmpty ? path : path + "?" + kept.joined(separator: "&")
    }
}
