import APIModels
import Foundation

/// Every guest at once, for rtvisor-guests.service (systemd/rtvisor-guests.service): its stop
/// (at host shutdown, ordered before rtvisord's) shuts the guests down while the daemon still
/// runs, since rtvisord itself leaves them running on SIGTERM so that a restart keeps them; its
/// start brings the autostart VMs back after such a shutdown.
extension Supervisor {
    /// Asks every guest to shut down (`VMEvent.shutdownRequested`) and answers at once; the
    /// caller waits (`rtvisorctl shutdown-guests` polls the list), at most `waitSeconds`, by
    /// which time every stop has escalated to SIGKILL. The daemon stays up and keeps serving.
    public func shutdownGuests() -> GuestsResult {
        var results: [ActionResult] = []
        for name in records.keys.sorted() {
            if case let .success(result)? = feed(name, .shutdownRequested) { results.append(result) }
        }
        let stopping = records.values.filter { $0.pid != nil }
        let longest = stopping.map { Double($0.lifecycle.settings.stopTimeoutSeconds) }.max()
        let wait = longest.map { $0 + VMLifecycle.killGraceSeconds } ?? 0
        event(.guestsShutdown, .notice, "shutting down every guest on request: \(stopping.count) stopping (at most \(Int(wait)) s)",
              extra: ["VMS_STOPPING": stopping.map(\.loaded.name).sorted().joined(separator: " ")])
        publishStatus()
        return GuestsResult(vms: results, waitSeconds: wait)
    }

    /// Starts every autostart VM that is stopped, like a start by hand (its failures forgotten).
    /// A `failed` VM is left alone: at boot rtvisord has just tried it. At boot the daemon has
    /// already started the others, so this does nothing; after `shutdownGuests` it brings them back.
    public func startGuests() -> GuestsResult {
        var results: [ActionResult] = []
        for name in startOrder {
            guard let r = records[name], r.loaded.definition.daemon.autostart, r.lifecycle.phase == .stopped else { continue }
            switch feed(name, .startRequested) {
            case let .success(result)?: results.append(result)
            case let .failure(error)?:
                results.append(ActionResult(name: name, action: "start", state: records[name]?.state ?? .failed, message: "\(error)"))
            case nil: break
            }
        }
        event(.guestsStarted, .notice, "started the stopped autostart VMs on request: \(results.isEmpty ? "none" : results.map(\.name).joined(separator: " "))",
              extra: ["VMS_STARTED": results.filter { $0.state == .running }.map(\.name).joined(separator: " ")])
        publishStatus()
        return GuestsResult(vms: results, waitSeconds: 0)
    }
}
