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
}
