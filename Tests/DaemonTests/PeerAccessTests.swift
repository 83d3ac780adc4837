@testable import API
import NIOCore
import NIOPosix
import Testing
import TestSupport
import CDaemonSupport
import Foundation
#if canImport(Glibc)
import Glibc
#endif

@Suite struct PeerAccessTests {
    let access = PeerAccess(daemonUID: 0, groupID: 990)

    @Test func rootTheDaemonAndTheGroupMayUseTheAPI() {
        #expect(access.allows(.init(pid: 1, uid: 0, gid: 0, groups: [])))
        #expect(access.allows(.init(pid: 2, uid: 1000, gid: 990, groups: [])), "primary group")
        #expect(access.allows(.init(pid: 3, uid: 1000, gid: 1000, groups: [27, 990])), "supplementary group")
        #expect(PeerAccess(daemonUID: 500, groupID: nil).allows(.init(pid: 4, uid: 500, gid: 500, groups: [])), "the daemon's own uid")
    }

    @Test func everyoneElseIsRefusedWithTheReason() {
        let stranger = PeerAccess.Peer(pid: 42, uid: 65534, gid: 65534, groups: [100])
        #expect(!access.allows(stranger))
        #expect(access.refusal(stranger) == "uid 65534 (pid 42) may not use rtvisord's API: only root and members of the access group (gid 990) may")
        #expect(!PeerAccess(daemonUID: 0, groupID: nil).allows(stranger), "no group on this host: root only")
    }

    /// SO_PEERGROUPS' answer in NIO's zero-filled buffer: sorted groups, then zeros.
    @Test func groupsAreDecodedFromTheZeroFilledBuffer() {
        var buffer = PeerAccess.GroupBuffer(repeating: 0)
        #expect(PeerAccess.groups(in: buffer, nonEmpty: false) == [])
        #expect(PeerAccess.groups(in: buffer, nonEmpty: true) == [0], "only group 0")
        buffer[0] = 27; buffer[1] = 990
        #expect(PeerAccess.groups(in: buffer, nonEmpty: true) == [27, 990])
        buffer[0] = 0; buffer[1] = 27; buffer[2] = 990
        #expect(PeerAccess.groups(in: buffer, nonEmpty: true) == [0, 27, 990])
    }

    /// The credentials come from the connection itself (SO_PEERCRED, SO_PEERGROUPS), not from
    /// /proc/PID: a socketpair's other end is this process, with exactly its groups.
    @Test func peerCredentialsAndGroupsComeFromTheSocket() async throws {
        var pair: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0)
        defer { close(pair[1]) }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        // As in the server: read in the channel's initializer, before it is registered.
        let (channel, peer) = try await ClientBootstrap(group: group).withConnectedSocket(pair[0]) { channel in
            HTTPServer.peer(of: channel).map { (channel, $0) }
        }
        var mine = [gid_t](repeating: 0, count: Int(getgroups(0, nil)))
        _ = getgroups(Int32(mine.count), &mine)
        #expect(peer == PeerAccess.Peer(pid: getpid(), uid: getuid(), gid: getgid(), groups: mine.sorted()))
        try? await channel.close()
        try await group.shutdownGracefully()
    }

    /// The old way read /proc/PID/status after accept: a peer that has exited (or whose pid was
    /// reused) had no (or someone else's) groups. SO_PEERGROUPS keeps the groups it connected with.
    @Test(.enabled(if: getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv")
                   && FileManager.default.isExecutableFile(atPath: "/usr/bin/python3"), "needs root, setpriv and python3"))
    func groupsOfAPeerThatHasExited() async throws {
        let dir = try makeTemporaryDirectory("rtvisord-groups")
        chmod(dir, 0o755)
        let path = dir + "/s.sock"
        let listener = cdaemon_listen_unix(path, 4, 0o666)
        #expect(listener >= 0)
        defer { close(listener) }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        p.arguments = ["--reuid=65534", "--regid=65534", "--groups=4242,4343", "/usr/bin/python3", "-c",
                       "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])", path]
        try p.run()
        p.waitUntilExit()
        #expect(p.terminationStatus == 0)
        let fd = accept(listener, nil, nil)
        #expect(fd >= 0)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        // As in the server: read in the channel's initializer (the peer's end of file may close
        // the channel as soon as it is registered).
        let (channel, peer) = try await ClientBootstrap(group: group).withConnectedSocket(fd) { channel in
            HTTPServer.peer(of: channel).map { (channel, $0) }
        }
        #expect(peer?.uid == 65534 && peer?.pid == p.processIdentifier)
        #expect(peer?.groups == [4242, 4343], "the exited peer's groups")
        #expect(PeerAccess(daemonUID: 0, groupID: 4343).allows(peer!))
        try? await channel.close()
        try await group.shutdownGracefully()
    }
}
