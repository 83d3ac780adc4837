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
