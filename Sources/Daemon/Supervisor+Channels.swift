import APIModels
import Config
import Foundation
import VMMInterface

extension Supervisor {
    /// The channel descriptors and attachments for starting VM `name` (docs/channels.md), or why
    /// not: a running VM holds the same peer id of one of its channels (the definitions were
    /// changed since it started).
    func channelLaunch(_ name: String, _ def: VMDefinition, firstDescriptor: Int32) throws(ChannelRefusal) -> (fds: [Int32], attachments: [ChannelAttachment]) {
        for channel in def.channels {
            for (other, record) in records where other != name && record.pid != nil {
                if record.current.channels.contains(where: { $0.name == channel.name && $0.peer == channel.peer }) {
                    throw ChannelRefusal("peer \(channel.peer) of channel \"\(channel.name)\" is held by running VM \"\(other)\"")
                }
            }
        }
        return try channels.launch(def.channels, firstDescriptor: firstDescriptor)
    }
}

extension Supervisor {
    /// After a daemon restart, for a re-adopted VMM: the channels it holds that rtvisord does not
    /// yet, asked back from it over its control socket (the descriptors ride along, SCM_RIGHTS).
    /// A channel that cannot be is logged: the running peers go on; a peer started later would
    /// get a channel of its own.
    func recoverChannels(_ name: String, pid: pid_t, _ def: VMDefinition) {
        let missing = def.channels.filter { !channels.holds($0.name) }
        guard !missing.isEmpty else { return }
        let client: VMMControlClient
        do { client = try VMMControlClient.connect(paths.controlSocket(name), timeoutSeconds: 2) } catch {
            logger.error("VM \(name): its channels cannot be taken back: \(error); peers started from now on get new channels of those names")
            return
        }
        for settings in missing {
            do {
                guard let fds = try client.channelDescriptors(settings.name) else {
                    throw ChannelRefusal("rtvisor-vmm PID \(pid) is older than control protocol 7 and cannot hand channel \"\(settings.name)\" back")
                }
                channels.adopt(try HostChannel.recover(settings, descriptors: fds))
                logger.notice("VM \(name): channel \(settings.name) taken back from rtvisor-vmm PID \(pid) (its memory and doorbells)")
            } catch let error as ChannelRefusal {
                logger.error("VM \(name): \(error); peers started from now on get a new channel of that name, not this one")
            } catch {
                logger.error("VM \(name): channel \(settings.name): \(error); peers started from now on get a new channel of that name, not this one")
            }
        }
    }

    public func channels() async throws(ControlError) -> ChannelList {
        var byName: [String: ChannelInfo] = [:]
        for (vm, record) in records.sorted(by: { $0.key < $1.key }) {
            for c in record.current.channels {
                var info = byName[c.name] ?? ChannelInfo(name: c.name, sizeMiB: c.sizeMiB, vectors: c.vectors, allocated: false, peers: [])
                info.peers.append(ChannelPeer(peer: c.peer, vm: vm, state: record.state, pid: record.pid))
                byName[c.name] = info
            }
        }
        // A held channel's size is the one its memory has, whatever the definitions say now.
        for (name, held) in channels.channels {
            var info = byName[name] ?? ChannelInfo(name: name, sizeMiB: held.sizeMiB, vectors: held.vectors, allocated: true, peers: [])
            info.sizeMiB = held.sizeMiB
            info.vectors = held.vectors
            info.allocated = true
            byName[name] = info
        }
        return ChannelList(channels: byName.values.sorted { $0.name < $1.name }.map { c in
            var c = c
            c.peers.sort { $0.peer < $1.peer }
            return c
        })
    }
}

extension VMControl {
    /// For conformers that have no channels to show (the API tests' fakes, the fuzzer's).
    public func channels() async throws(ControlError) -> ChannelList { ChannelList(channels: []) }
}
