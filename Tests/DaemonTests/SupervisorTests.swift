import APIModels
import Daemon
import Foundation
import Logging
import Testing
import TestSupport

/// The Supervisor performing its lifecycle's effects with real processes, but no VMs: the "VMM"
/// is a shell script that sleeps (VM `web`) or exits 7 at once (VM `crashy`).
@Suite struct SupervisorTests {
    /// Log messages, for checking what was journaled.
    final class Messages: @unchecked Sendable {
        private let lock = NSLock()
        private var lines: [String] = []
        func append(_ s: String) { lock.withLock { lines.append(s) } }
        var all: [String] { lock.withLock { lines } }
    }

    struct Capture: LogHandler {
        let messages: Messages
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) { messages.append("\(event.message)") }
    }

    struct Fixture {
        let supervisor: Supervisor
        let messages: Messages
        let definitions: String
    }

    func makeSupervisor(vmm: String? = nil) throws -> Fixture {
        let dir = try makeTemporaryDirectory("rtvisord-test")
        let definitions = dir + "/vms"
        try FileManager.default.createDirectory(atPath: definitions, withIntermediateDirectories: true)
        let kernel = try makeKernel(in: dir)
        try write(definitionJSON(name: "web", kernel: kernel, extra: "\"stop_timeout_s\": 1"), to: definitions + "/web.json")
        try write(definitionJSON(name: "crashy", kernel: kernel, extra: "\"restart\": {\"policy\": \"on-failure\", \"limit\": 1, \"backoff_ms\": 20}"),
                  to: definitions + "/crashy.json")
        let script = dir + "/fake-vmm"
        try write("#!/bin/sh\ncase \"$2\" in */crashy/*) exit 7;; esac\nexec sleep 3600\n", to: script)
        chmod(script, 0o755)
        let messages = Messages()
        let logger = Logger(label: "supervisor-test") { _ in Capture(messages: messages) }
        let paths = DaemonPaths(definitions: definitions, run: dir + "/run", vmm: vmm ?? script, apiSocket: dir + "/run/api.sock")
        let supervisor = Supervisor(paths: paths, logger: logger, cgroups: CgroupPlacement(procSelfCgroup: nil), version: "test") { _ in }
        return Fixture(supervisor: supervisor, messages: messages, definitions: definitions)
    }

    func state(_ s: Supervisor, _ name: String) async -> VMStateName? {
        await s.list().vms.first { $0.name == name }?.state
    }

    /// Polls (the process waits report back asynchronously) for up to 10 s.
    func waitFor(_ what: String, _ condition: () async -> Bool) async -> Bool {
        for _ in 0..<200 {
            if await condition() { return true }
            try? await Task.sleep(for: .milliseconds(50))
        }
        Issue.record("timed out waiting for \(what)")
        return false
    }

    @Test func startPauseResumeAndGracefulStop() async throws {
        let f = try makeSupervisor()
        let s = f.supervisor
        await s.bootstrap()
        let started = try await s.start("web")
        #expect(started.state == .running && started.message.hasPrefix("started, PID "))
        // Idempotent: a second start succeeds with a note and leaves the VMM alone.
        let again = try await s.start("web")
        #expect(again.state == .running && again.message == "already running" && again.action == "start")
        #expect(try await s.pause("web").message == "paused")
        #expect(await state(s, "web") == .paused)
        await #expect(throws: ControlError.conflict("VM web is paused, not running")) { try await s.pause("web") }
        #expect(try await s.resume("web").message == "resumed")
        let stop = try await s.stop("web", force: false)
        #expect(stop == ActionResult(name: "web", action: "stop", state: .stopping,
                                     message: "asked the guest to shut down (Ctrl-Alt-Del); hard stop after 1 s"))
        // sleep dies of SIGUSR1 (a real rtvisor-vmm would inject Ctrl-Alt-Del).
        guard await waitFor("web stopped", { await state(s, "web") == .stopped }) else { return }
        #expect(f.messages.all.contains("VM web stopped on request: killed by signal 10: rtvisor-vmm killed by signal 10"))
        #expect(try await s.stop("web", force: false) == ActionResult(name: "web", action: "stop", state: .stopped, message: "already stopped"))
        await #expect(throws: ControlError.notFound("no VM named \"db\"")) { try await s.stop("db", force: false) }
    }

    /// The supervisor's part of the statistics: every VM it knows, the running one with what
    /// procfs shows of its process (the fake VMM has no vCPU threads and no control socket: no
    /// vCPUs, no counters, nothing waited for).
    @Test func statsListEveryVMAndReadTheRunningOnesProcess() async throws {
        let f = try makeSupervisor()
        let s = f.supervisor
        await s.bootstrap()
        let started = try await s.start("web")
        let list = try await s.stats(nil)
        #expect(list.vms.map(\.name) == ["crashy", "web"])
        let web = try #require(list.vms.last)
        #expect(web.state == .running && web.pid != nil && "started, PID \(web.pid!)" == started.message)
        #expect(web.vmmStartedAt.map { abs($0 - list.collectedAt) < 60 } == true, "\(String(describing: web.vmmStartedAt)) vs \(list.collectedAt)")
        #expect((web.memory?.residentBytes ?? 0) > 0 && web.memory?.guestBytes == 32 << 20)
        #expect(web.vcpus.isEmpty && web.disks.isEmpty && web.nics.isEmpty && web.realtime == nil)
        let crashy = try #require(list.vms.first)
        #expect(crashy.pid == nil && crashy.vmmStartedAt == nil && crashy.memory?.residentBytes == nil)
        #expect(try await s.stats("web").vms.map(\.name) == ["web"])
        await #expect(throws: ControlError.notFound("no VM named \"ghost\"")) { try await s.stats("ghost") }
        _ = try await s.stop("web", force: true)
    }

    /// rtvisor-guests.service's stop and start: every guest asked at once, the daemon staying up;
    /// then the autostart VMs back (the others stay stopped).
    @Test func guestsAreShutDownTogetherAndAutostartVMsComeBack() async throws {
        let f = try makeSupervisor()
        let s = f.supervisor
        let kernel = try makeKernel(in: f.definitions + "/..")
        try write(definitionJSON(name: "db", kernel: kernel, extra: "\"autostart\": true, \"stop_timeout_s\": 2"), to: f.definitions + "/db.json")
        await s.bootstrap()
        #expect(await state(s, "db") == .running)
        _ = try await s.start("web")
        let down = await s.shutdownGuests()
        #expect(down.vms == [
            ActionResult(name: "db", action: "shutdown", state: .stopping, message: "asked the guest to shut down (Ctrl-Alt-Del); hard stop after 2 s"),
            ActionResult(name: "web", action: "shutdown", state: .stopping, message: "asked the guest to shut down (Ctrl-Alt-Del); hard stop after 1 s"),
        ])
        // The longest stop timeout plus the SIGKILL grace.
        #expect(down.waitSeconds == 7)
        guard await waitFor("both stopped", {
            let db = await state(s, "db"), web = await state(s, "web")
            return db == .stopped && web == .stopped
        }) else { return }
        #expect(f.messages.all.contains("VM db stopped on request: killed by signal 10: rtvisor-vmm killed by signal 10"))
        #expect(f.messages.all.contains("shutting down every guest on request: 2 stopping (at most 7 s)"))
        // Nothing left to stop: nothing to wait for.
        #expect(await s.shutdownGuests() == GuestsResult(vms: [], waitSeconds: 0))
        let up = await s.startGuests()
        #expect(up.vms.map(\.name) == ["db"] && up.vms.first?.state == .running)
        #expect(await state(s, "web") == .stopped)
        #expect(await s.startGuests().vms.isEmpty)
        _ = try await s.stop("db", force: true)
    }

    @Test func crashesAreRestartedUntilThePolicyGivesUp() async throws {
        let f = try makeSupervisor()
        let s = f.supervisor
        await s.bootstrap()
        _ = try await s.start("crashy")
        guard await waitFor("crashy failed", { await state(s, "crashy") == .failed }) else { return }
        let log = f.messages.all
        #expect(log.contains("VM crashy restarts in 20 ms (exit status 7; restart 1 of at most 1 in 300 s, policy \"on-failure\")"))
        #expect(log.contains { $0.hasPrefix("VM crashy started (restart policy \"on-failure\"): rtvisor-vmm PID ") })
        #expect(log.contains("VM crashy failed and will not be restarted: exit status 7; restart limit reached (1 in 300 s)"))
        #expect(await s.list().vms.first { $0.name == "crashy" }?.restarts == 1)
    }

    @Test func reloadRemovingARunningVMStopsAndForgetsIt() async throws {
        let f = try makeSupervisor()
        let s = f.supervisor
        await s.bootstrap()
        _ = try await s.start("web")
        try FileManager.default.removeItem(atPath: f.definitions + "/web.json")
        #expect(await s.reload().removed == ["web"])
        guard await waitFor("web forgotten", { await s.list().vms.allSatisfy { $0.name != "web" } }) else { return }
        #expect(f.messages.all.contains("VM web stopped and removed (its definition is gone): killed by signal 10: rtvisor-vmm killed by signal 10"))
    }

    @Test func aVMMThatCannotBeSpawnedFailsTheStart() async throws {
        let f = try makeSupervisor(vmm: "/nonexistent/rtvisor-vmm")
        let s = f.supervisor
        await s.bootstrap()
        do throws(ControlError) {
            _ = try await s.start("web")
            Issue.record("the start succeeded")
        } catch {
            guard case let .failed(reason) = error else { Issue.record("\(error)"); return }
            #expect(reason.hasPrefix("cannot start /nonexistent/rtvisor-vmm: "))
            #expect(f.messages.all.contains("VM web could not be started: \(reason)"))
        }
        #expect(await state(s, "web") == .failed)
        #expect(await s.list().vms.first { $0.name == "web" }?.lastExit?.reason.hasPrefix("cannot start") == true)
    }
}
