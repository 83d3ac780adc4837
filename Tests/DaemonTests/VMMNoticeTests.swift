import APIModels
import Daemon
import Foundation
import Testing
import TestSupport

/// A VMM's notices reach rtvisord on the socket pair it is spawned with and become lifecycle
/// events: here the "VMM" is a shell script that writes one notice, as rtvisor-vmm does when
/// its guest writes the boot marker, and another after it exits.
extension SupervisorTests {
    static func noticingVMM(in dir: String) throws -> String {
        let script = dir + "/noticing-vmm"
        try write("""
            #!/bin/sh
            while [ $# -gt 0 ]; do [ "$1" = --notice-fd ] && fd=$2; shift; done
            [ -n "$fd" ] || exit 3
            eval 'printf "%s" "{\\"guestStarted\\":{}}" >&'$fd
            eval 'printf "%s" "{\\"guestReady\\":{\\"millisecondsAfterVMCreation\\":12.5}}" >&'$fd
            exec sleep 3600

            """, to: script)
        chmod(script, 0o755)
        return script
    }

    @Test func aGuestReadyNoticeBecomesAnEventAndTheSummarySaysSo() async throws {
        let f = try makeSupervisor(vmm: try Self.noticingVMM(in: try makeTemporaryDirectory("rtvisord-notice")))
        let s = f.supervisor
        await s.bootstrap()
        let before = try await s.events(after: nil, vm: nil, waitSeconds: 0)
        _ = try await s.start("web")
        let pid = try #require(await s.list().vms.first { $0.name == "web" }?.pid)
        let ready = try await s.events(after: before.next, vm: "web", waitSeconds: 10).events
            + (try await s.events(after: before.next + 1, vm: "web", waitSeconds: 10).events)
        let event = try #require(ready.first { $0.kind == "vm-guest-ready" }, "\(ready)")
        #expect(event.pid == pid && event.state == .running)
        #expect(event.fields["VM_GUEST_READY_MS"] == "12.500")
        #expect(event.message == "VM web: the guest is up (boot marker 12.5 ms after VM creation)")
        #expect(await s.list().vms.first { $0.name == "web" }?.guestReadyAt != nil)
        #expect(await s.list().vms.first { $0.name == "web" }?.guestStartedAt != nil, "the guestStarted notice came first")

        // A new VMM's guest is not up until it says so again.
        _ = try await s.stop("web", force: true)
        #expect(await waitFor("web stopped") { await self.state(s, "web") == .stopped })
        #expect(await s.list().vms.first { $0.name == "web" }?.guestReadyAt == nil)
    }
}
