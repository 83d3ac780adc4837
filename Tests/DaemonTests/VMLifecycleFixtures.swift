import APIModels
import Config
import Daemon
import Testing

/// The VM of the lifecycle tests: "web", restart policy on-failure (at most 2 restarts in 60 s,
/// backoff 100 ms doubling to 1 s), stop timeout 30 s.
enum LifecycleFixture {
    static let settings = DaemonSettings(
        autostart: true, restart: RestartSettings(policy: .onFailure, limit: 2, windowSeconds: 60, backoffMs: 100, backoffMaxMs: 1000),
        stopTimeoutSeconds: 30)

    static func definition(realtime: Bool = false) -> VMDefinition {
        var d = VMDefinition(name: "web", kernel: "/boot/vmlinux")
        d.daemon = settings
        if realtime { d.realtime = RealtimeSettings(cpus: [2, 3]) }
        return d
    }

    static func process(_ pid: Int32, realtime: Bool = false) -> VMProcess {
        VMProcess(pid: pid, startTime: 4242, definition: definition(realtime: realtime))
    }

    /// The PID of the VMM in every situation that has one.
    static let pid: Int32 = 100
}

/// A lifecycle under test with a clock that only moves when told to.
struct TestVM {
    var lifecycle = VMLifecycle(name: "web", definition: LifecycleFixture.definition(), since: 0)
    var clock = LifecycleTime(wall: 1_700_000_000, monotonic: 100)

    /// Handles the event; returns the effects in words (`VMEffect.description`).
    @discardableResult
    mutating func on(_ event: VMEvent) -> [String] { effects(of: event).map(\.description) }

    mutating func effects(of event: VMEvent) -> [VMEffect] { lifecycle.handle(event, at: clock) }

    mutating func advance(seconds: Double) {
        clock.wall += seconds
        clock.monotonic += seconds
    }

    var situation: Situation { Situation(lifecycle.phase) }
    var generation: Int { lifecycle.generation }
}

/// Every phase a VM can be in (the stop intents apart), and how to get there from a fresh VM
/// through the lifecycle itself.
enum Situation: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case stopped, failed, restarting, starting, running, paused, stopping, stoppingForReboot, stoppingForRemoval

    init(_ phase: VMPhase) {
        switch phase {
        case .stopped: self = .stopped
        case .failed: self = .failed
        case .restarting: self = .restarting
        case .starting: self = .starting
        case .running: self = .running
        case .paused: self = .paused
        case .stopping(_, .stop): self = .stopping
        case .stopping(_, .reboot): self = .stoppingForReboot
        case .stopping(_, .remove): self = .stoppingForRemoval
        }
    }

    var testDescription: String { rawValue }

    /// Whether a VMM process (PID 100) exists.
    var hasProcess: Bool { [.running, .paused, .stopping, .stoppingForReboot, .stoppingForRemoval].contains(self) }
    var isStopping: Bool { [.stopping, .stoppingForReboot, .stoppingForRemoval].contains(self) }

    func make() -> TestVM {
        var vm = TestVM()
        let pid = LifecycleFixture.pid
        func running() {
            vm.on(.startRequested)
            vm.on(.processSpawned(LifecycleFixture.process(pid), cgroup: "/sys/fs/cgroup/rtvisord.service/vm-web"))
        }
        switch self {
        case .stopped: break
        case .starting: vm.on(.startRequested)
        case .failed:
            vm.on(.startRequested)
            vm.on(.spawnFailed(reason: "cannot start /usr/libexec/rtvisor-vmm: ENOENT"))
        case .running: running()
        case .paused:
            running()
            vm.on(.pauseRequested)
            vm.on(.frozen(pid: pid))
        case .restarting:
            running()
            vm.on(.processExited(pid: pid, outcome: .signaled(9), statusFile: nil))
        case .stopping:
            running()
            vm.on(.stopRequested(force: false))
        case .stoppingForReboot:
            running()
            vm.on(.rebootRequested)
        case .stoppingForRemoval:
            running()
            vm.on(.definitionRemoved)
        }
        #expect(vm.situation == self, "fixture for \(self) ended in \(vm.situation)")
        vm.advance(seconds: 1)
        return vm
    }
}
