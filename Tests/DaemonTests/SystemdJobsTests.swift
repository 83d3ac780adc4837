import Daemon
import Testing

@Suite struct SystemdJobsTests {
    @Test func restartJobOfOurUnitIsRecognised() {
        let restarting = "1234 rtvisord.service restart running\n1235 other.service start waiting\n"
        #expect(SystemdJobs.jobListShowsRestart(restarting, unit: "rtvisord.service"))
        #expect(SystemdJobs.jobListShowsRestart("77 rtvisord.service try-restart running\n", unit: "rtvisord.service"))
        #expect(!SystemdJobs.jobListShowsRestart("1234 rtvisord.service stop running\n", unit: "rtvisord.service"))
        #expect(!SystemdJobs.jobListShowsRestart("1234 other.service restart running\n", unit: "rtvisord.service"))
        #expect(!SystemdJobs.jobListShowsRestart("", unit: "rtvisord.service"))
    }

    @Test func unitNameFromProcSelfCgroup() {
        #expect(CgroupPlacement.unitName(procSelfCgroup: "0::/system.slice/rtvisord.service\n") == "rtvisord.service")
        #expect(CgroupPlacement.unitName(procSelfCgroup: "0::/system.slice/rtvisord.service/vm-web\n") == "rtvisord.service")
        #expect(CgroupPlacement.unitName(procSelfCgroup: "0::/user.slice/session-1.scope\n") == nil)
        #expect(CgroupPlacement.unitName(procSelfCgroup: "12:name=systemd:/system.slice/x.service\n0::/\n") == nil)
    }

    @Test func cgroupPlacementNeedsAWritableCgroup() {
        let p = CgroupPlacement(procSelfCgroup: "0::/no/such/group\n", mountPoint: "/nonexistent")
        #expect(p.base == nil)
        #expect(p.place(pid: 1, vm: "x") == nil)
    }
}
