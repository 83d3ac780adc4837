import API
import APIModels
import Daemon
import Foundation
import Logging
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// The event ring: numbered, bounded, and read by "what came after N".
@Suite struct EventLogTests {
    func log(_ kinds: [(String, String)], capacity: Int = 1000) -> EventLog {
        var log = EventLog(capacity: capacity)
        for (kind, vm) in kinds { log.append(time: 1, kind: kind, vm: vm, pid: 7, state: .running, message: "\(vm) \(kind)", reason: nil, fields: [:]) }
        return log
    }

    @Test func eventsAreNumberedFromOneAndReadAfterASequenceNumber() {
        let l = log([("vm-started", "web"), ("vm-started", "db"), ("vm-stopped", "web")])
        #expect(l.events.map(\.seq) == [1, 2, 3])
        #expect(l.after(0).events.map(\.kind) == ["vm-started", "vm-started", "vm-stopped"])
        #expect(l.after(1).events.map(\.seq) == [2, 3])
        #expect(l.after(3) == EventBatch(events: [], next: 3, missed: 0))
    }

    @Test func aVMFilterStillMovesTheCursorPastOtherVMsEvents() {
        let l = log([("vm-started", "web"), ("vm-started", "db"), ("vm-started", "db")])
        let web = l.after(0, vm: "web")
        #expect(web.events.map(\.seq) == [1])
        #expect(web.next == 3)
        #expect(l.after(web.next, vm: "web").events.isEmpty)
    }

    @Test func theRingKeepsTheNewestAndCountsWhatACallerMissed() {
        let l = log((1...10).map { ("vm-started", "vm\($0)") }, capacity: 4)
        #expect(l.events.map(\.seq) == [7, 8, 9, 10])
        #expect(l.lastSeq == 10)
        let late = l.after(2)
        #expect(late.events.map(\.seq) == [7, 8, 9, 10])
        #expect(late.missed == 4, "3, 4, 5 and 6 are gone")
        #expect(l.after(6).missed == 0)
    }
}

extension EventLogTests {
    @Test func aSequenceNumberFromAnEarlierDaemonGetsEverythingKeptNow() {
        let l = log([("vm-adopted", "web"), ("vm-adopted", "db")])
        #expect(l.after(500).events.map(\.seq) == [1, 2])
        #expect(l.after(500).next == 2)
    }

    @Test func aLargeBacklogComesInBatchesThatEachFitAFrame() {
        let l = log((1...7).map { ("vm-started", "vm\($0)") })
        let first = l.after(0, limit: 3)
        #expect(first.events.map(\.seq) == [1, 2, 3] && first.next == 3 && first.more)
        let second = l.after(first.next, limit: 3)
        #expect(second.events.map(\.seq) == [4, 5, 6] && second.more)
        let last = l.after(second.next, limit: 3)
        #expect(last.events.map(\.seq) == [7] && last.next == 7 && !last.more)
    }
}

/// GET /v1/events through the router: NDJSON lines, since, vm, follow.
@Suite struct EventRouteTests {
    func lines(_ r: APIResponse) throws -> [DaemonEvent] {
        try r.body.split(separator: 0x0A).map { try JSONDecoder().decode(DaemonEvent.self, from: Data($0)) }
    }

    @Test func recentEventsAsJSONLinesAfterSinceAndOfOneVM() async throws {
        let fake = FakeControl()
        await fake.addEvent("vm-started", vm: "web")
        await fake.addEvent("vm-started", vm: "db")
        await fake.addEvent("vm-stopped", vm: "web")
        let router = APIRouter(control: fake)
        let all = await router.handle(APIRequest(method: "GET", target: "/v1/events"))
        #expect(all.status == 200 && all.headers.contains { $0 == ("Content-Type", "application/x-ndjson") })
        #expect(try lines(all).map(\.seq) == [1, 2, 3], "in two answers of the daemon")
        #expect(await fake.calls == ["events after=0 vm=* wait=0", "events after=2 vm=* wait=0"])
        #expect(all.text.hasPrefix("{\"fields\":{},\"kind\":\"vm-started\",\"message\":\"VM web: vm-started\",\"pid\":42,\"seq\":1,"))
        #expect(try lines(await router.handle(APIRequest(method: "GET", target: "/v1/events?since=1"))).map(\.seq) == [2, 3])
        #expect(try lines(await router.handle(APIRequest(method: "GET", target: "/v1/events?vm=web"))).map(\.kind) == ["vm-started", "vm-stopped"])
        #expect(await router.handle(APIRequest(method: "GET", target: "/v1/events?since=3")).body.isEmpty)
    }

    @Test func aSinceOlderThanTheRingSaysHowManyAreGone() async throws {
        let fake = FakeControl()
        for i in 1...6 { await fake.addEvent("vm-started", vm: i % 2 == 0 ? "web" : "db") }
        let router = APIRouter(control: fake)
        let r = await router.handle(APIRequest(method: "GET", target: "/v1/events?since=0"))
        // The fake keeps 4: 1 and 2 are gone.
        #expect(try lines(r).map(\.seq) == [3, 4, 5, 6])
        #expect(r.headers.contains { $0 == ("Rtvisor-Events-Missed", "2") })
        #expect(!(await router.handle(APIRequest(method: "GET", target: "/v1/events?since=2")).headers.contains { $0.0 == "Rtvisor-Events-Missed" }))
    }

    @Test func badQueriesAreRefusedBeforeAnyStream() async {
        let router = APIRouter(control: FakeControl())
        #expect(await router.handle(APIRequest(method: "GET", target: "/v1/events?since=-1")).status == 400)
        #expect(await router.handle(APIRequest(method: "GET", target: "/v1/events?vm=../x")).status == 400)
        #expect(await router.handle(APIRequest(method: "GET", target: "/v1/events?follow=yes")).status == 400)
        let ghost = await router.handle(APIRequest(method: "GET", target: "/v1/events?vm=ghost&follow=1"))
        #expect(ghost.status == 404 && ghost.stream == nil)
        #expect(await router.handle(APIRequest(method: "POST", target: "/v1/events")).status == 405)
    }

    @Test func followStartsAfterSinceAndThenYieldsEachNewEvent() async throws {
        let fake = FakeControl()
        await fake.addEvent("vm-started", vm: "web")
        await fake.addEvent("vm-stopped", vm: "web")
        let router = APIRouter(control: fake)
        let r = await router.handle(APIRequest(method: "GET", target: "/v1/events?follow=1&since=1&vm=web"))
        #expect(r.status == 200)
        #expect(try lines(r).map(\.kind) == ["vm-stopped"])
        let stream = try #require(r.stream)
        let next = Task { await stream.next() }
        await fake.addEvent("vm-started", vm: "db")
        await fake.addEvent("vm-restart-scheduled", vm: "web")
        let part = try #require(await next.value)
        #expect(try lines(APIResponse(status: 200, body: part)).map(\.kind) == ["vm-restart-scheduled"])
        // Each long poll asks after the newest sequence number seen, the other VM's included.
        let polls = await fake.calls.filter { $0.hasPrefix("events") }
        #expect(polls.first == "events after=1 vm=web wait=0")
        #expect(polls.dropFirst().allSatisfy { $0 == "events after=2 vm=web wait=10" || $0 == "events after=3 vm=web wait=10" }, "\(polls)")
    }

    @Test func followWithoutSinceStartsNow() async throws {
        let fake = FakeControl()
        await fake.addEvent("vm-started", vm: "web")
        let r = await APIRouter(control: fake).handle(APIRequest(method: "GET", target: "/v1/events?follow=1"))
        #expect(r.body.isEmpty && r.stream != nil)
        #expect(await fake.calls == ["events after=now vm=* wait=0"])
    }
}

/// A follower on the real NIO server: streamed chunked, bounded in number, and gone (its slot
/// given back) once its client closes.
@Suite struct EventFollowServerTests {
    @Test func followersAreStreamedBoundedAndReleasedWhenTheClientLeaves() async throws {
        let path = try makeTemporaryDirectory("rtvisord-events") + "/api.sock"
        let fake = FakeControl()
        await fake.addEvent("vm-started", vm: "web")
        var limits = HTTPServer.Limits()
        limits.maxFollowers = 1
        let server = HTTPServer(router: APIRouter(control: fake), logger: Logger(label: "test"), limits: limits)
        let task = Task { try await server.run(socketPath: path, groupName: nil) }
        defer { task.cancel() }
        try await waitUntilServing(path)

        let follow = "GET /v1/events?follow=1&since=0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        let first = try #require(connectToUnixSocket(path, receiveTimeoutSeconds: 5))
        send(first, follow)
        let head = await offThePool { readAtLeast(first, containing: "vm-started") }
        #expect(head.hasPrefix("HTTP/1.1 200 OK\r\n"))
        #expect(head.lowercased().contains("transfer-encoding: chunked"))
        await fake.addEvent("vm-stopped", vm: "web")
        let more = await offThePool { readAtLeast(first, containing: "vm-stopped") }
        #expect(more.contains("\"kind\":\"vm-stopped\""))

        // The one follower slot is taken: a second follower is told so; other requests go on.
        let refused = await offThePool { unixSocketExchange(path, follow, receiveTimeoutSeconds: 5) ?? "" }
        #expect(refused.hasPrefix("HTTP/1.1 503"), "\(refused)")
        #expect(refused.contains("too many event followers"))
        let list = await offThePool { unixSocketExchange(path, httpRequest("GET", "/v1/vms"), receiveTimeoutSeconds: 5) ?? "" }
        #expect(list.hasPrefix("HTTP/1.1 200"))

        // The client goes away: the server notices and the slot is free again.
        close(first)
        var again = ""
        for _ in 0..<100 {
            let fd = try #require(connectToUnixSocket(path, receiveTimeoutSeconds: 5))
            send(fd, follow)
            again = await offThePool { readAtLeast(fd, containing: "\n\r\n") }
            close(fd)
            if again.hasPrefix("HTTP/1.1 200") { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(again.hasPrefix("HTTP/1.1 200"), "\(again)")
        task.cancel()
        _ = await task.result
        await server.shutdown()
    }
}

/// A short request in one write (a unix socket takes it whole).
func send(_ fd: Int32, _ text: String) {
    let bytes = Array(text.utf8)
    _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
}

extension EventFollowServerTests {
    @Test func aStreamTheDaemonEndsIsClosedWithItsLastChunk() async throws {
        let path = try makeTemporaryDirectory("rtvisord-events") + "/api.sock"
        let fake = FakeControl()
        await fake.addEvent("vm-started", vm: "web")
        let server = HTTPServer(router: APIRouter(control: fake), logger: Logger(label: "test"))
        let task = Task { try await server.run(socketPath: path, groupName: nil) }
        defer { task.cancel() }
        try await waitUntilServing(path)
        let fd = try #require(connectToUnixSocket(path, receiveTimeoutSeconds: 5))
        defer { close(fd) }
        send(fd, "GET /v1/events?follow=1&since=0&vm=web HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(await offThePool { readAtLeast(fd, containing: "vm-started") }.hasPrefix("HTTP/1.1 200 OK\r\n"))
        // The daemon refuses the next long poll (the VM is gone): the last chunk, then EOF, while
        // this client keeps its end open.
        await fake.remove("web")
        let started = ContinuousClock.now
        let rest = await offThePool { readUntilEnd(fd) }
        #expect(rest.hasSuffix("0\r\n\r\n"), "\(rest)")
        #expect(ContinuousClock.now - started < .seconds(4), "closed by the server, not by a timeout")
        task.cancel()
        _ = await task.result
        await server.shutdown()
    }
}

/// Returns once the server at `path` accepts a connection (one, closed at once: a loop that kept
/// connecting while the server had no pool thread to accept would fill its backlog and block).
func waitUntilServing(_ path: String) async throws {
    for _ in 0..<500 {
        if let fd = connectToUnixSocket(path) { close(fd); return }
        try await Task.sleep(for: .milliseconds(10))
    }
}

/// Blocking reads on a thread of their own.
func offThePool<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { c in Thread { c.resume(returning: body()) }.start() }
}

/// Reads until `marker` has arrived, the peer closes or the receive timeout expires.
func readAtLeast(_ fd: Int32, containing marker: String) -> String {
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 4096)
    while !String(decoding: out, as: UTF8.self).contains(marker) {
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n <= 0 { break }
        out += buf[0..<n]
    }
    return String(decoding: out, as: UTF8.self)
}

/// The Supervisor's long poll, with the fake VMMs of `SupervisorTests`.
extension SupervisorTests {
    @Test func aLongPollReturnsWithTheNextEventAndNotBefore() async throws {
        let f = try makeSupervisor()
        let s = f.supervisor
        await s.bootstrap()
        let before = try await s.events(after: nil, vm: nil, waitSeconds: 0)
        #expect(before.events.isEmpty)
        let poll = Task { try await s.events(after: before.next, vm: "web", waitSeconds: 20) }
        try await Task.sleep(for: .milliseconds(200))
        _ = try await s.start("web")
        let batch = try await poll.value
        #expect(batch.events.map(\.kind) == ["vm-started"])
        #expect(batch.events.first?.vm == "web" && batch.events.first?.state == .running && batch.events.first?.pid != nil)
        // Nothing new: the poll ends at its deadline, empty.
        let started = ContinuousClock.now
        let quiet = try await s.events(after: batch.next, vm: "web", waitSeconds: 1)
        #expect(quiet.events.isEmpty && ContinuousClock.now - started >= .milliseconds(900))
        await #expect(throws: ControlError.notFound("no VM named \"ghost\"")) { try await s.events(after: 0, vm: "ghost", waitSeconds: 0) }
        _ = try await s.stop("web", force: true)
    }

    @Test func aCrashAndItsRestartAreEventsInOrderWithTheJournalsFields() async throws {
        let f = try makeSupervisor()
        let s = f.supervisor
        await s.bootstrap()
        _ = try? await s.start("crashy")
        // crashy exits 7 at once, is restarted after 20 ms once, then given up on.
        guard await waitFor("crashy failed", { await state(s, "crashy") == .failed }) else { return }
        let events = try await s.events(after: 0, vm: "crashy", waitSeconds: 0).events
        #expect(events.map(\.kind) == ["vm-started", "vm-failed", "vm-restart-scheduled", "vm-started", "vm-restart-limit"])
        #expect(events[2].fields["RESTART_DELAY_MS"] == "20")
        #expect(events.map(\.seq) == events.map(\.seq).sorted())
        let ended = try #require(events.first { $0.reason != nil })
        #expect(ended.reason?.contains("7") == true, "\(ended)")
    }
}
