import Testing
import VMMInterface

/// rtvisord writes the VMM's command line with `VMMLaunch.arguments`; rtvisor-vmm reads it with
/// `VMMLaunchArguments`. Whatever one writes, the other reads back the same.
@Suite struct LaunchTests {
    static var everything: VMMLaunch {
        var l = VMMLaunch(definition: "/run/rtvisor/vms/web/definition.json")
        l.validateOnly = true
        l.consoleInput = false
        l.consoleLog = "/tmp/console log"
        l.notify = .ioeventfd
        l.logLevel = .debug
        l.baseDirectory = "/etc/rtvisor/vms"
        l.consoleSocket = "/run/rtvisor/vms/web/console.sock"
        l.consoleJournal = true
        l.logJournal = true
        l.statusFile = "/run/rtvisor/vms/web/exit-status"
        l.cgroup = "/sys/fs/cgroup/rtvisor/web"
        l.latencyFile = "/run/rtvisor/vms/web/latency.json"
        l.jail = false
        l.jailUID = 1_600_000_123
        l.traceStartup = true
        l.traceOrigin = 123_456_789_000
        l.keepRealtimePartitionOnReset = true
        l.restore = "/var/lib/rtvisor/snapshots/web/20261206T021500Z"
        l.restoreMemory = .map
        l.controlSocket = "/run/rtvisor/vms/web/control.sock"
        l.incoming = "unix:/run/rtvisor/incoming/web.sock"
        l.incomingConfig = "/run/rtvisor/incoming/web.json"
        l.channels = [ChannelAttachment(name: "plc-hmi", memory: .descriptor(4), doorbells: 5), ChannelAttachment(name: "log", memory: .file("/dev/shm/log"))]
        l.noticeDescriptor = 4
        return l
    }

    @Test func defaultsRoundTripAsTheDefinitionAlone() throws {
        let l = VMMLaunch(definition: "vm.json")
        #expect(l.arguments == ["--config", "vm.json"])
        #expect(try VMMLaunch.parse(l.arguments) == l)
    }

    @Test func everyFieldSetRoundTrips() throws {
        let l = Self.everything
        #expect(try VMMLaunch.parse(l.arguments) == l)
    }

    @Test func eachSwitchAloneRoundTrips() throws {
        let switches: [WritableKeyPath<VMMLaunch, Bool>] = [\.validateOnly, \.consoleInput, \.consoleJournal, \.logJournal, \.jail, \.traceStartup,
                                                             \.keepRealtimePartitionOnReset]
        for key in switches {
            var l = VMMLaunch(definition: "vm.json")
            l[keyPath: key].toggle()
            #expect(try VMMLaunch.parse(l.arguments) == l)
        }
    }

    @Test func everyFieldIsCoveredByTheRoundTrip() {
        // A field added to VMMLaunch without a flag would be lost between daemon and VMM: the
        // fully-set launch differs from the default in every field.
        let set = Mirror(reflecting: Self.everything).children
        let unset = Mirror(reflecting: VMMLaunch(definition: "other.json")).children
        #expect(set.count == unset.count)
        for (a, b) in zip(set, unset) {
            #expect(String(describing: a.value) != String(describing: b.value), "field \(a.label ?? "?") keeps its default in `everything`")
        }
    }

    @Test func aRestoreWithoutConfigTakesTheSnapshotsDefinition() throws {
        let l = try VMMLaunch.parse(["--restore", "/snap/a"])
        #expect(l.definition == "/snap/a/definition.json" && l.restore == "/snap/a" && l.restoreMemory == .copy)
        #expect(throws: (any Error).self) { try VMMLaunch.parse(["--no-console-input"]) }
    }

    @Test func theDaemonsFlagsAreTheDocumentedOnes() {
        var l = VMMLaunch(definition: "d.json")
        l.consoleInput = false
        l.statusFile = "s"
        #expect(l.arguments == ["--config", "d.json", "--no-console-input", "--status-file", "s"])
    }

    @Test func flagNamesAreUniqueAndLong() {
        let names = VMMLaunch.Flag.allCases.map(\.long)
        #expect(Set(names).count == names.count)
        #expect(names.allSatisfy { $0.hasPrefix("--") && !$0.contains("_") })
    }

    @Test func badValuesAreRefused() {
        #expect(throws: (any Error).self) { try VMMLaunch.parse(["--config", "a.json", "--notify", "polling"]) }
        #expect(throws: (any Error).self) { try VMMLaunch.parse(["--config", "a.json", "--jail-uid", "-1"]) }
        #expect(throws: (any Error).self) { try VMMLaunch.parse([]) }
        #expect(throws: (any Error).self) { try VMMLaunch.parse(["--config", "a.json", "--unknown"]) }
    }

    @Test func aJanitorLaunchIsNotAVMLaunch() {
        let spec = RealtimeJanitorSpec(vm: "rt0", vmmPID: 42, cpus: [1], maxPriority: 80, attachFile: nil)
        #expect(throws: (any Error).self) { try VMMLaunch.parse(spec.arguments) }
    }

    @Test func janitorSpecRoundTrips() {
        let specs = [
            RealtimeJanitorSpec(vm: "rt0", vmmPID: 4242, cpus: [1, 3], maxPriority: 80, attachFile: "/sys/fs/cgroup/cpuset/rtvisor-rt0/tasks"),
            RealtimeJanitorSpec(vm: "rt1", vmmPID: 1, cpus: [], maxPriority: 1, attachFile: nil),
        ]
        for s in specs { #expect(RealtimeJanitorSpec(encoded: s.encoded) == s) }
        #expect(RealtimeJanitorSpec(encoded: "rt0|x|1|80|") == nil)
        #expect(RealtimeJanitorSpec(encoded: "rt0|1|1,a|80|") == nil)
        #expect(RealtimeJanitorSpec(encoded: "rt0|1|1|80") == nil)
    }
}

@Suite struct ChannelAttachmentTests {
    @Test func encodedAndParsedBack() {
        for a in [ChannelAttachment(name: "plc-hmi", memory: .descriptor(4), doorbells: 5),
                  ChannelAttachment(name: "log", memory: .file("/dev/shm/log")),
                  ChannelAttachment(name: "x", memory: .file("/dev/shm/x"), doorbells: 9)] {
            #expect(ChannelAttachment(encoded: a.encoded) == a, "\(a.encoded)")
        }
        #expect(ChannelAttachment(name: "c", memory: .descriptor(4), doorbells: 5).encoded == "c,fd=4,doorbells=5")
    }

    @Test func doorbellsArePeerMajor() {
        let a = ChannelAttachment(name: "c", memory: .descriptor(4), doorbells: 5)
        #expect(a.doorbell(peer: 0, vector: 0, vectors: 2) == 5)
        #expect(a.doorbell(peer: 3, vector: 1, vectors: 2) == Int32(12))  // 5 + 3 × 2 + 1
        #expect(ChannelAttachment(name: "c", memory: .file("/f")).doorbell(peer: 0, vector: 0, vectors: 1) == nil)
    }

    @Test func malformedOnesAreRefused() throws {
        for bad in ["c", ",fd=3", "c,fd=-1", "c,file=relative", "c,fd=3,fd=4", "c,fd=3,file=/x", "c,doorbells=5", "c,fd=3,colour=red"] {
            #expect(ChannelAttachment(encoded: bad) == nil, "\(bad)")
        }
        #expect(throws: (any Error).self) { try VMMLaunch.parse(["--config", "/d.json", "--channel", "c,fd=x"]) }
        #expect(try VMMLaunch.parse(["--config", "/d.json", "--channel", "c,fd=3,doorbells=4"]).channels == [ChannelAttachment(name: "c", memory: .descriptor(3), doorbells: 4)])
    }
}
