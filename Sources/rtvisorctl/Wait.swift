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

struct WaitOptions: ParsableArguments {
    @Flag(help: "Return only when the VM has reached the state (running; stopped; running under a new VMM for reboot and reset); exit status 1 if it fails or times out.")
    var wait = false
    @Flag(help: "Wait (start, reboot, reset) until the guest signalled it is up (the boot marker, which rtvisor's minimal Linux and inmates write; implies --wait).")
    var ready = false
    @Option(help: "With --wait: give up after this many seconds (default 120; for stop, the VM's stop timeout plus 15 s if that is longer).")
    var timeout: Int?
}

/// What `--wait` waits for, and how it reads the VM's state. It polls `GET /v1/vms/NAME` rather
/// than following the events: the state is what is asked for, and a poll cannot miss it (an
/// event can scroll out of the daemon's ring, a follower can be refused when too many follow).
enum WaitTarget {
    case running
    case stopped
    /// Running under a VMM other than this PID (nil: the VM was not running, any VMM will do).
    case restarted(oldPID: Int32?)
    /// Running (under a VMM other than `after`, when given) with its guest up.
    case ready(after: Int32?)

    enum Verdict: Equatable { case waiting, reached, failed(String) }

    /// One look at the VM.
    func verdict(_ s: VMSummary) -> Verdict {
        let why = s.lastExit.map { ": " + exitText($0) } ?? ""
        switch (self, s.state) {
        case (.stopped, .stopped), (.stopped, .failed), (.stopped, .migrated): return .reached
        case (.stopped, _): return .waiting
        // Running means the guest runs: a VMM that fails in its set-up (a missing bridge, a
        // locked image) is `running` for those few milliseconds but never started the guest.
        case (.running, .running): return s.guestStartedAt != nil ? .reached : .waiting
        case let (.restarted(old), .running): return s.pid != nil && s.pid != old && s.guestStartedAt != nil ? .reached : .waiting
        case let (.ready(old), .running): return s.pid != nil && s.pid != old && s.guestReadyAt != nil ? .reached : .waiting
        case (_, .failed): return .failed("failed\(why)")
        case (_, .stopped): return .failed("stopped\(why)")
        case (_, .migrated): return .failed("migrated to another host")
        case (_, .paused), (_, .stopping), (_, .restarting), (_, .incoming): return .waiting
        }
    }

    var goal: String {
        switch self {
        case .running: "running"
        case .stopped: "stopped"
        case .restarted: "running again"
        case .ready: "its guest up"
        }
    }

    /// Polls until the VM gets there; progress on stderr when it is a terminal. Exit status 1
    /// (with the reason) if it fails or `seconds` pass first.
    func await(_ options: CommonOptions, _ name: String, seconds: Int) throws {
        let tty = isatty(STDERR_FILENO) == 1
        let start = monotonicSeconds()
        // The progress line is rewritten in place; whatever ends the wait replaces it.
        let clear = tty ? "\r\u{1B}[K" : ""
        while true {
            let (detail, _) = try options.fetch("GET", "/v1/vms/\(pathComponent(name))", as: VMDetail.self)
            let s = detail.summary
            let elapsed = monotonicSeconds() - start
            switch verdict(s) {
            case .reached:
                let tenths = Int(elapsed * 10)
                if tty { writeErr("\(clear)\(name): \(goal)\(s.pid.map { " (PID \($0))" } ?? "") after \(tenths / 10).\(tenths % 10) s\n") }
                return
            case let .failed(why):
                writeErr("\(clear)rtvisorctl: \(name) did not get \(goal): \(why)\n")
                throw ExitCode(1)
            case .waiting:
                if elapsed >= Double(seconds) {
                    writeErr("\(clear)rtvisorctl: \(name) is still \(s.state.rawValue) after \(seconds) s (waiting for \(goal))\n")
                    throw ExitCode(1)
                }
                if tty { writeErr("\(clear)\(name): \(s.state.rawValue), waiting for \(goal) (\(Int(elapsed)) s)") }
                usleep(200_000)
            }
        }
    }
}

func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}
