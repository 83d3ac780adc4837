import APIModels
import Daemon

/// `GET /v1/stats` (a `StatsList` of every VM) and `GET /v1/vms/{name}/stats` (one `VMStats`):
/// the daemon's one aggregation (`StatsCollector`), read at the moment of the request. Counters
/// are totals; rates are the client's (`rtvisorctl top` reads twice).
extension APIRouter {
    func stats(_ method: String, vm: String?) async -> APIResponse {
        guard method == "GET" else { return Self.methodNotAllowed("GET") }
        guard let vm else { return await run { () async throws(ControlError) in try await control.stats(nil) } }
        return await run { () async throws(ControlError) in
            guard let one = try await control.stats(vm).vms.first(where: { $0.name == vm }) else {
                throw .failed("rtvisord's statistics have no entry for VM \(vm)")
            }
            return one
        }
    }

    /// `GET /v1/vms/{name}/console?lines=N` (default 20, at most `ConsoleTail.maxLines`).
    func consoleTail(_ method: String, vm: String, lines: String?) async -> APIResponse {
        guard method == "GET" else { return Self.methodNotAllowed("GET") }
        guard let count = lines.map({ Int($0) }) ?? 20, (1...ConsoleTail.maxLines).contains(count) else {
            return Self.error(400, "lines must be a number from 1 to \(ConsoleTail.maxLines)")
        }
        return await run { () async throws(ControlError) in try await control.consoleTail(vm, lines: count) }
    }
}
