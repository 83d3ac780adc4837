import API
import APIModels
import Daemon
import Foundation
import Testing

/// metrics.sock and the metrics TCP listener (docs/metrics.md): the dashboard, the exposition
/// and the dashboard's two JSON sources, nothing else; a request for anything else never reaches
/// the daemon.
@Suite struct MetricsRouterTests {
    func get(_ target: String, method: String = "GET", on fake: FakeControl) async -> APIResponse {
        await MetricsRouter(api: APIRouter(control: fake)).handle(APIRequest(method: method, target: target))
    }

    @Test func theDashboardIsOneSelfContainedPage() async {
        let fake = FakeControl()
        let r = await get("/", on: fake)
        #expect(r.status == 200)
        #expect(r.headers.contains { $0.0 == "Content-Type" && $0.1.hasPrefix("text/html") })
        #expect(r.text.hasPrefix("<!doctype html>"))
        #expect(r.text.contains("name=\"viewport\""), "phone-readable: a viewport meta tag")
        // Nothing is fetched from elsewhere: no external scripts, styles, fonts or images (the
        // SVG namespace is an identifier, not a fetch).
        let fetched = r.text.replacingOccurrences(of: "http://www.w3.org/2000/svg", with: "")
        for external in ["http://", "https://", "<script src", "<link", "@import", "url("] {
            #expect(!fetched.contains(external), "the page refers to \(external)")
        }
        #expect(await fake.calls.isEmpty)
    }

    @Test func everythingElseIsRefusedBeforeTheDaemonIsAsked() async {
        let fake = FakeControl()
        for (method, target) in [("POST", "/v1/vms/web/stop"), ("GET", "/v1/vms"), ("GET", "/v1/vms/web"), ("POST", "/v1/reload"),
                                 ("GET", "/v1/vms/web/console"),
                                 ("GET", "/v1/daemon"), ("POST", "/v1/guests/shutdown")] {
            let r = await get(target, method: method, on: fake)
            #expect(r.status == 404, "\(method) \(target)")
            #expect(r.text.contains("read-only"))
        }
        for target in ["/", "/metrics", "/v1/stats", "/v1/events", "/dashboard/config"] {
            #expect(await get(target, method: "POST", on: fake).status == 405, "POST \(target)")
            #expect(await get(target, method: "DELETE", on: fake).status == 405, "DELETE \(target)")
        }
        #expect(await fake.calls.isEmpty)
    }

    @Test func withoutAnActionsGroupThePageHasNoButtons() async {
        let r = await get("/dashboard/config", on: FakeControl())
        #expect(r.status == 200 && r.text == "{\"actions\":false,\"console\":false}\n")
    }

    /// rtvisord.json's metrics.dashboard_console: the console's end, read-only, and nothing more.
    @Test func withTheConsoleOnTheLastLinesAreServed() async throws {
        let fake = FakeControl()
        let router = MetricsRouter(api: APIRouter(control: fake), console: true)
        let config = await router.handle(APIRequest(method: "GET", target: "/dashboard/config"))
        #expect(config.text == "{\"actions\":false,\"console\":true}\n")
        let tail = await router.handle(APIRequest(method: "GET", target: "/v1/vms/web/console?lines=2"))
        #expect(tail.status == 200 && tail.text.contains("login:"), "\(tail.text)")
        #expect(await router.handle(APIRequest(method: "POST", target: "/v1/vms/web/console")).status == 405)
        #expect(await router.handle(APIRequest(method: "GET", target: "/v1/vms/web")).status == 404, "only the console")
        #expect(await fake.calls == ["console web 2"])
    }

    @Test func startAndStopNeedTheTokenWhenActionsAreEnabled() async {
        let fake = FakeControl()
        let router = MetricsRouter(api: APIRouter(control: fake), actionsToken: "s3cret")
        func post(_ target: String, _ authorization: String?) async -> APIResponse {
            await router.handle(APIRequest(method: "POST", target: target, authorization: authorization))
        }
        #expect(await router.handle(APIRequest(method: "GET", target: "/dashboard/config")).text == "{\"actions\":true,\"console\":false}\n")
        let missing = await post("/v1/vms/web/stop", nil)
        #expect(missing.status == 403 && missing.text.contains("needs the dashboard token") && missing.text.contains("\"code\":\"forbidden\""))
        #expect(await post("/v1/vms/web/stop", "Bearer wrong!").status == 403)
        #expect(await post("/v1/vms/web/stop", "Basic s3cret").status == 403)
        #expect(await fake.calls.isEmpty)
        // The right token: a graceful stop and a start, nothing else (no force, no other action).
        #expect(await post("/v1/vms/web/stop?force=1", "Bearer s3cret").status == 200)
        #expect(await post("/v1/vms/db/start", "Bearer s3cret").status == 200)
        #expect(await post("/v1/vms/web/reset", "Bearer s3cret").status == 404)
        #expect(await router.handle(APIRequest(method: "GET", target: "/v1/vms/web/stop", authorization: "Bearer s3cret")).status == 405)
        #expect(await fake.calls == ["stop web", "start db"])
    }

    @Test func theEventsArePolledNeverFollowed() async {
        let fake = FakeControl()
        let r = await get("/v1/events?follow=1&since=3", on: fake)
        #expect(r.status == 200)
        #expect(r.stream == nil)
        #expect(await fake.calls == ["events after=3 vm=* wait=0"])
        #expect(MetricsRouter.withoutFollow("/v1/events?follow=1&since=3&vm=web") == "/v1/events?since=3&vm=web")
        #expect(MetricsRouter.withoutFollow("/v1/events?follow=true") == "/v1/events")
    }

    @Test func metricsIsTheExpositionOfTheDaemonsStats() async {
        let fake = FakeControl()
        for r in [await get("/metrics", on: fake), await APIRouter(control: fake).handle(APIRequest(method: "GET", target: "/metrics"))] {
            #expect(r.status == 200)
            #expect(r.headers.contains { $0.0 == "Content-Type" && $0.1.hasPrefix("text/plain; version=0.0.4") })
            #expect(r.text.contains("rtvisor_vm_state{vm=\"web\",state=\"running\"} 1\n"))
        }
    }
}
