import Metrics

/// The metrics listeners' routes: what metrics.sock (mode 0666, any local user) and the
/// optional metrics TCP listener answer. GETs of the dashboard, the exposition and the JSON
/// the dashboard polls; and, only when rtvisord.json names a group for them
/// (`DashboardActions`), start and stop with that group's token. Everything else is refused
/// here, in the front, so no other `ControlCall` can come from these listeners.
public struct MetricsRouter: RequestHandling {
    let api: APIRouter
    /// The dashboard actions' token; nil: read-only.
    let actionsToken: String?
    /// Whether `GET /v1/vms/{name}/console` is served (`metrics.dashboard_console`).
    let console: Bool
    public init(api: APIRouter, actionsToken: String? = nil, console: Bool = false) {
        self.api = api; self.actionsToken = actionsToken; self.console = console
    }

    /// The paths served, for the refusal's message and the tests.
    public static let paths = ["/", "/metrics", "/v1/stats", "/v1/events", "/dashboard/config"]
    /// What the dashboard may do to a VM when actions are enabled.
    public static let actions = ["start", "stop"]

    /// `GET /dashboard/config`: whether the page shows its buttons.
    struct Capabilities: Encodable { var actions: Bool; var console: Bool }

    public func handle(_ request: APIRequest) async -> APIResponse {
        let (path, _) = APIRouter.split(request.target)
        let parts = path.split(separator: "/").map(String.init)
        if parts.count == 4, parts[0] == "v1", parts[1] == "vms", Self.actions.contains(parts[3]), let token = actionsToken {
            guard request.method == "POST" else { return APIRouter.methodNotAllowed("POST") }
            // 403 (`forbidden`, the API's code for a caller who may not) with or without a token.
            guard request.authorization != nil else {
                return APIRouter.error(403, "starting and stopping VMs here needs the dashboard token (Authorization: Bearer; docs/metrics.md)")
            }
            guard DashboardActions.authorizes(request.authorization, token: token) else { return APIRouter.error(403, "wrong dashboard token") }
            // A graceful stop (the guest is asked), as `rtvisorctl stop` without --force.
            return await api.handle(APIRequest(method: "POST", target: path))
        }
        if console, parts.count == 4, parts[0] == "v1", parts[1] == "vms", parts[3] == "console" {
            guard request.method == "GET" else { return APIRouter.methodNotAllowed("GET") }
            return await api.handle(request)
        }
        guard Self.paths.contains(path) else {
            return APIRouter.error(404, "\(path) is not served here: this listener is read-only (GET \(Self.paths.joined(separator: ", "))); the full API is on api.sock")
        }
        guard request.method == "GET" else { return APIRouter.methodNotAllowed("GET") }
        if path == "/dashboard/config" { return APIRouter.json(200, Capabilities(actions: actionsToken != nil, console: console)) }
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
