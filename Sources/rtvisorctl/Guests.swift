import APIModels
import ArgumentParser
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// `rtvisorctl shutdown-guests`: rtvisor-guests.service's ExecStop. rtvisord leaves its guests
/// running when it is stopped or restarted (so a restart keeps them); at host shutdown this unit,
/// ordered after rtvisord.service and therefore stopped before it, shuts them down while the
/// daemon still supervises them, and returns only when every VMM has ended.
struct ShutdownGuests: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "shutdown-guests",
        abstract: "Shut every guest down gracefully (Ctrl-Alt-Del, hard stop after its stop timeout) and wait until all have ended.",
        discussion: "What rtvisor-guests.service does when it stops (at host shutdown, or systemctl stop rtvisor-guests). rtvisord keeps running.")
    @OptionGroup var options: CommonOptions
    @Flag(help: "Return once every guest has been asked, without waiting for them to end.")
    var noWait = false

    /// Beyond the daemon's own bound (stop timeout + SIGKILL grace): reaping and the last answer.
    static let slackSeconds = 10.0

    func run() throws {
        let (asked, text) = try options.fetch("POST", "/v1/guests/shutdown", as: GuestsResult.self)
        if options.json { print(text, terminator: text.hasSuffix("\n") ? "" : "\n") }
        else { for a in asked.vms { print("\(a.name): \(a.message)") } }
        if noWait { return }
        // The daemon stops each VMM for certain within waitSeconds (it escalates to SIGKILL);
        // polling the list is how the answer gets here without one long-held request.
        let deadline = monotonicNow() + asked.waitSeconds + Self.slackSeconds
        var left: [VMSummary] = []
        while true {
            let (list, _) = try options.fetch("GET", "/v1/vms", as: VMList.self)
            left = list.vms.filter { [.running, .paused, .stopping, .restarting, .incoming].contains($0.state) }
            if left.isEmpty {
                if !options.json {
                    for name in asked.vms.map(\.name) {
                        if let v = list.vms.first(where: { $0.name == name }) { print("\(name): \(v.state.rawValue) (\(exitText(v.lastExit)))") }
                    }
                    print("every guest has ended")
                }
                return
            }
            if monotonicNow() >= deadline { break }
            usleep(250_000)
        }
        writeErr("rtvisorctl: still running after \(Int(asked.waitSeconds + Self.slackSeconds)) s: \(left.map { "\($0.name) (\($0.state.rawValue))" }.joined(separator: ", "))\n")
        throw ExitCode(1)
    }

    func monotonicNow() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}

/// `rtvisorctl start-guests`: rtvisor-guests.service's ExecStart. At boot rtvisord has already
/// started its autostart VMs, so this does nothing; after `systemctl stop rtvisor-guests` a
/// `systemctl start rtvisor-guests` brings them back.
struct StartGuests: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "start-guests",
        abstract: "Start every VM with autostart that is stopped (not failed ones).",
        discussion: "What rtvisor-guests.service does when it starts. Exit status 1 if a start failed.")
    @OptionGroup var options: CommonOptions

    func run() throws {
        let (result, text) = try options.fetch("POST", "/v1/guests/start", as: GuestsResult.self)
        if options.json { print(text, terminator: text.hasSuffix("\n") ? "" : "\n") }
        else if result.vms.isEmpty { print("no stopped autostart VM") }
        else { for a in result.vms { print("\(a.name): \(a.message) [\(a.state.rawValue)]") } }
        if result.vms.contains(where: { $0.state == .failed }) { throw ExitCode(1) }
    }
}
