import Daemon
import Posix
import Testing
import TestSupport
import VMMInterface

/// A VMM is found by its command line (the contract's argv), so a daemon killed between
/// spawning it and writing its state file does not lose it (issue 16).
@Suite struct OrphanVMMTests {
    func fakeProc(_ processes: [String: [String]]) throws -> String {
        let root = try makeTemporaryDirectory("rtvisor-proc")
        for (pid, argv) in processes {
            makeDirectories(root + "/" + pid)
            try HostFiles.write(root + "/" + pid + "/cmdline", argv.joined(separator: "\0") + "\0")
        }
        return root
    }

    @Test func findsTheVMMRunningADefinitionCopy() throws {
        var launch = DaemonPaths(definitions: "/etc/rtvisor/vms", run: "/run/rtvisor", vmm: "/usr/bin/rtvisor-vmm", apiSocket: "/run/rtvisor/api.sock")
            .vmmLaunch("web", baseDirectory: "/etc/rtvisor/vms", cgroup: "/sys/fs/cgroup/rtvisor/vm-web", latencyProbe: false)
        let proc = try fakeProc([
            "4242": ["/usr/local/bin/rtvisor-vmm"] + launch.arguments,
            "4243": ["/usr/local/bin/rtvisor-vmm", "--config", "/run/rtvisor/vms/db/definition.json"],
            "4244": ["/bin/sh", "-c", "rtvisor-vmm --config /run/rtvisor/vms/web/definition.json"],
            "self": ["/usr/local/bin/rtvisor-vmm"] + launch.arguments,
        ])
        let found = Processes.vmms(running: "/run/rtvisor/vms/web/definition.json", procRoot: proc)
        #expect(found.map(\.pid) == [4242])
        #expect(found.first?.launch == launch)
        launch.definition = "/elsewhere.json"
        #expect(Processes.vmms(running: "/run/rtvisor/vms/none/definition.json", procRoot: proc).isEmpty)
    }
}
