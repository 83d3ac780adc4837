import Testing
@testable import API

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

    @Test func groupsComeFromProc() {
        #expect(PeerAccess.groups(of: 999_999_999) == [])
    }
}
