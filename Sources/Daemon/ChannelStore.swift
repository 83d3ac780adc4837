import CDaemonSupport
import Config
import Foundation
import Posix
import SystemPackage
import VMMInterface

/// A channel rtvisord cannot give a VM (docs/channels.md), with the reason.
public struct ChannelRefusal: Error, Equatable, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// One channel's host side: the shared memory (a memfd sealed at its size) and one eventfd per
/// (peer, vector) for every peer id the channel allows. rtvisord creates it when the first peer
/// starts and keeps it for its own lifetime, so a restarted peer gets the same memory, the same
/// doorbells and its IVPosition back, and the other peers never notice it was gone.
final class HostChannel: Sendable {
    let name: String
    let sizeMiB: Int
    let vectors: Int
    let memory: FileDescriptor
    /// Peer p's vector v is `doorbells[p * vectors + v]`.
    let doorbells: [EventFD]

    init(_ settings: ChannelSettings) throws(ChannelRefusal) {
        name = settings.name
        sizeMiB = settings.sizeMiB
        vectors = settings.vectors
        let raw = cdaemon_memfd("rtvisor-channel-\(settings.name)")
        guard raw >= 0 else { throw ChannelRefusal("channel \"\(settings.name)\": memfd_create: \(errnoMessage())") }
        memory = FileDescriptor(rawValue: raw)
        // Sealed against growing and shrinking: a peer cannot pull the pages from under another
        // (a shrink would SIGBUS every other mapping).
        guard ftruncate(raw, off_t(settings.sizeBytes)) == 0, cdaemon_seal_size(raw) == 0 else {
            let reason = errnoMessage()
            try? memory.close()
            throw ChannelRefusal("channel \"\(settings.name)\": \(settings.sizeMiB) MiB of shared memory: \(reason)")
        }
        do {
            doorbells = try (0..<(ChannelSettings.maxPeers * settings.vectors)).map { _ in try EventFD() }
        } catch {
            try? memory.close()
            throw ChannelRefusal("channel \"\(settings.name)\": doorbell eventfds: \(error)")
        }
    }

    /// A channel a running VMM holds, taken back after a daemon restart (`recover`).
    init(recovered settings: ChannelSettings, memory: FileDescriptor, doorbells: [EventFD]) {
        name = settings.name; sizeMiB = settings.sizeMiB; vectors = settings.vectors
        self.memory = memory; self.doorbells = doorbells
    }

    /// The channel's descriptors as a running peer's VMM holds them (`VMMControlClient.channelDescriptors`:
    /// the memory, then every doorbell), checked against the definition: a restarted rtvisord
    /// gets the very memory and doorbells the peers use, so the next peer it starts joins them.
    static func recover(_ settings: ChannelSettings, descriptors: [FileDescriptor]) throws(ChannelRefusal) -> HostChannel {
        let expected = 1 + ChannelSettings.maxPeers * settings.vectors
        var st = stat()
        guard descriptors.count == expected, fstat(descriptors[0].rawValue, &st) == 0, st.st_size == off_t(settings.sizeBytes) else {
            for f in descriptors { try? f.close() }
            throw ChannelRefusal("channel \"\(settings.name)\": the running peer's memory and doorbells are not \(settings.sizeMiB) MiB "
                                 + "and \(expected - 1) eventfds (\(descriptors.count) descriptors)")
        }
        return HostChannel(recovered: settings, memory: descriptors[0], doorbells: descriptors.dropFirst().map { EventFD(adopting: $0) })
    }

    deinit { try? memory.close() }

    /// The memory, then every doorbell in order: what a VMM inherits for this channel.
    var descriptors: [Int32] { [memory.rawValue] + doorbells.map(\.fd.rawValue) }
}

/// The channels rtvisord holds, by name.
struct ChannelStore {
    private(set) var channels: [String: HostChannel] = [:]

    /// What a VMM with `settings` is started with: the descriptors to pass (in order, becoming
    /// `firstDescriptor`, `firstDescriptor + 1`, … in the VMM) and the `--channel` attachments
    /// naming them. Creates the channels not there yet.
    mutating func launch(_ settings: [ChannelSettings], firstDescriptor: Int32) throws(ChannelRefusal) -> (fds: [Int32], attachments: [ChannelAttachment]) {
        var fds: [Int32] = [], attachments: [ChannelAttachment] = []
        for s in settings {
            let channel = try open(s)
            let memory = firstDescriptor + Int32(fds.count)
            attachments.append(ChannelAttachment(name: s.name, memory: .descriptor(memory), doorbells: memory + 1))
            fds += channel.descriptors
        }
        return (fds, attachments)
    }

    /// Keeps a channel taken back from a running VMM, unless one of that name is held already.
    mutating func adopt(_ channel: HostChannel) {
        if channels[channel.name] == nil { channels[channel.name] = channel }
    }

    func holds(_ name: String) -> Bool { channels[name] != nil }

    /// The channel, created on first use; one that exists must match (its memory is in use).
    mutating func open(_ s: ChannelSettings) throws(ChannelRefusal) -> HostChannel {
        if let existing = channels[s.name] {
            guard existing.sizeMiB == s.sizeMiB, existing.vectors == s.vectors else {
                throw ChannelRefusal("channel \"\(s.name)\" exists with \(existing.sizeMiB) MiB and \(existing.vectors) vectors, "
                                     + "this definition wants \(s.sizeMiB) MiB and \(s.vectors): its memory lives as long as rtvisord")
            }
            return existing
        }
        let created = try HostChannel(s)
        channels[s.name] = created
        return created
    }
}
