import APIModels
import ArgumentParser

/// `channels`: the shared-memory channels, one line per peer (docs/channels.md).
struct Channels: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the shared-memory channels (ivshmem) and the VMs on them.",
        discussion: "ALLOCATED: rtvisord holds the channel's memory and doorbells (since a peer first started; until rtvisord ends). docs/channels.md.")
    @OptionGroup var options: CommonOptions

    func run() throws {
        try options.call("GET", "/v1/channels", as: ChannelList.self) { list in
            if list.channels.isEmpty { print("no channels"); return }
            table(["CHANNEL", "SIZE MiB", "VECTORS", "ALLOCATED", "PEER", "VM", "STATE", "PID"], list.channels.flatMap { c in
                let head = [c.name, String(c.sizeMiB), String(c.vectors), c.allocated ? "yes" : "no"]
                if c.peers.isEmpty { return [head + ["-", "-", "-", "-"]] }
                return c.peers.map { p in head + [String(p.peer), p.vm, p.state.rawValue, p.pid.map(String.init) ?? "-"] }
            })
        }
    }
}
