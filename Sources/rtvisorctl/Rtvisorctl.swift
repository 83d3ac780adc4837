import APIModels
import ArgumentParser
import Config
import Posix
import VMMInterface
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

@main
struct Rtvisorctl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rtvisorctl",
        abstract: "Control rtvisord: list, inspect, start, stop, reboot, reset, pause, resume, validate VMs; follow their events; show their statistics (stats, top); snapshot, restore, clone and migrate them; attach to a console; shut every guest down.",
        discussion: """
        Talks HTTP/JSON to rtvisord's socket (docs/api.yaml). Exit status: 0 success (a start of a \
        running VM or a stop of a stopped one too, with a note), 1 refused or failed (the message \
        and its code on stderr), 2 no daemon, 3 `status` of a daemon that does not run, 64 usage \
        error. Shell completion: rtvisorctl --generate-completion-script bash|zsh|fish.
        """,
        version: RtvisorRelease.version,
        subcommands: [Status.self, List.self, Inspect.self, Start.self, Stop.self, Reboot.self, Reset.self, Pause.self, Resume.self, RtCheck.self, Latency.self,
                      Validate.self, Edit.self, Logs.self, Reload.self, Console.self, Info.self, ShutdownGuests.self, StartGuests.self,
                      Snapshot.self, Snapshots.self, Restore.self, Clone.self, Migrate.self, MigrateReceive.self, Upgrade.self, Events.self, Stats.self, Top.self, Channels.self])
}

struct CommonOptions: ParsableArguments {
    @Option(help: "rtvisord's API socket.")
    var socket = ProcessInfo.processInfo.environment["RTVISOR_API_SOCKET"] ?? APIPaths.defaultSocket

    @Flag(help: "Print the API's JSON (for scripts) instead of a table.")
    var json = false

    var client: UnixHTTPClient { UnixHTTPClient(socketPath: socket) }

    /// Sends the request; prints JSON or hands the decoded value to `human`. Non-2xx: the
    /// error message on stderr and exit status 1.
    func call<T: Decodable>(_ method: String, _ target: String, body: [UInt8]? = nil, as: T.Type, timeoutSeconds: Int = 30,
                            human: (T) -> Void) throws {
        let (value, text) = try fetch(method, target, body: body, as: T.self, timeoutSeconds: timeoutSeconds)
        if json { print(text, terminator: text.hasSuffix("\n") ? "" : "\n"); return }
        human(value)
    }

    /// Sends the request and decodes the answer; returns it with its JSON text. Unreachable
    /// daemon: exit status 2; non-2xx or an undecodable answer: the message on stderr (and the
    /// JSON on stdout with --json) and exit status 1.
    func fetch<T: Decodable>(_ method: String, _ target: String, body: [UInt8]? = nil, as: T.Type, timeoutSeconds: Int = 30) throws -> (T, String) {
        let r: UnixHTTPClient.Response
        var client = self.client
        client.timeoutSeconds = timeoutSeconds
        do { r = try client.request(method, target, body: body) } catch {
            writeErr("rtvisorctl: \(error)\n")
            throw ExitCode(2)
        }
        guard (200..<300).contains(r.status) else {
            if json { print(r.text, terminator: r.text.hasSuffix("\n") ? "" : "\n") }
            let body = try? JSONDecoder().decode(APIErrorBody.self, from: Data(r.body))
            writeErr("rtvisorctl: \(body?.error ?? r.text) (\(body?.code.map { "\($0), " } ?? "")HTTP \(r.status))\n")
            for p in body?.problems ?? [] { writeErr("  \(p)\n") }
            throw ExitCode(1)
        }
        do { return (try JSONDecoder().decode(T.self, from: Data(r.body)), r.text) } catch {
            writeErr("rtvisorctl: unexpected response: \(error)\n")
            throw ExitCode(1)
        }
    }
}

func pathComponent(_ name: String) -> String {
    // VM names are [A-Za-z0-9_-]; anything else is percent-encoded so it cannot change the route.
    var out = ""
    for b in name.utf8 {
        let c = Character(UnicodeScalar(b))
        if c.isLetter && b < 128 || c.isNumber && b < 128 || c == "-" || c == "_" { out.append(c) }
        else { out += "%" + String(b, radix: 16, uppercase: true).leftPad(2) }
    }
    return out
}

extension String {
    func leftPad(_ n: Int) -> String { count >= n ? self : String(repeating: "0", count: n - count) + self }
    func padded(_ n: Int) -> String { count >= n ? self : self + String(repeating: " ", count: n - count) }
}

func table(_ header: [String], _ rows: [[String]]) {
    for line in tableLines(header, rows) { print(line) }
}

/// The lines of a table: columns as wide as their widest cell, two spaces apart.
func tableLines(_ header: [String], _ rows: [[String]]) -> [String] {
    var widths = header.map(\.count)
    for r in rows { for (i, c) in r.enumerated() { widths[i] = max(widths[i], c.count) } }
    let line = { (r: [String]) in r.enumerated().map { $0.offset == r.count - 1 ? $0.element : $0.element.padded(widths[$0.offset]) }.joined(separator: "  ") }
    return [line(header)] + rows.map(line)
}

func exitText(_ e: ExitInfo?) -> String {
    guard let e else { return "-" }
    if let s = e.status { return "\(s): \(e.reason)" }
    if let s = e.signal { return "signal \(s)" }
    return e.reason
}

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List VMs and invalid definitions.")
    @OptionGroup var options: CommonOptions

    func run() throws {
        try options.call("GET", "/v1/vms", as: VMList.self) { list in
            table(["NAME", "STATE", "PID", "AUTOSTART", "RESTART", "RESTARTS", "PENDING", "LAST EXIT"], list.vms.map { v in
                [v.name, v.state.rawValue, v.pid.map(String.init) ?? "-", v.autostart ? "yes" : "no", v.restartPolicy,
                 String(v.restarts), v.pendingChange ? "yes" : "no", exitText(v.lastExit)]
            })
            if !list.invalidDefinitions.isEmpty {
                print("\nInvalid definitions (skipped):")
                for p in list.invalidDefinitions { print("  \(p)") }
            }
        }
    }
}

struct NameArgument: ParsableArguments {
    @Argument(help: "The VM's name.", completion: .custom { _, _, _ in vmNamesForCompletion() })
    var name: String
}

/// Shell completion of VM names: asks the daemon, silently offers nothing when it cannot.
func vmNamesForCompletion() -> [String] {
    let socket = ProcessInfo.processInfo.environment["RTVISOR_API_SOCKET"] ?? APIPaths.defaultSocket
    guard let r = try? UnixHTTPClient(socketPath: socket).request("GET", "/v1/vms"),
          let list = try? JSONDecoder().decode(VMList.self, from: Data(r.body)) else { return [] }
    return list.vms.map(\.name)
}

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show one VM in detail.")
    @OptionGroup var options: CommonOptions
    @OptionGroup var vm: NameArgument

    func run() throws {
        try options.call("GET", "/v1/vms/\(pathComponent(vm.name))", as: VMDetail.self) { d in
            let s = d.summary
            let rows: [(String, String)] = [
                ("Name", s.name), ("State", s.state.rawValue), ("PID", s.pid.map(String.init) ?? "-"),
                ("Definition", s.definitionFile), ("Pending change", s.pendingChange ? "yes (applies on restart)" : "no"),
                ("Autostart", s.autostart ? "yes" : "no"), ("Restart policy", s.restartPolicy), ("Restarts", String(s.restarts)),
                ("Stop timeout", "\(d.stopTimeoutSeconds) s"), ("vCPUs", String(d.vcpus)), ("Memory", "\(d.memoryMiB) MiB"),
                ("Kernel", d.kernel), ("Initrd", d.initrd ?? "-"), ("Command line", d.cmdline),
                ("Console", d.consoleSocket), ("Cgroup", d.cgroup ?? "-"), ("Last exit", exitText(s.lastExit)),
                ("Guest up", s.guestReadyAt != nil ? "yes (boot marker written)" : s.pid != nil ? "not signalled" : "-"),
            ]
            for (k, v) in rows { print("\((k + ":").padded(16)) \(v)") }
        }
    }
}

struct ActionCommand {
    /// POSTs the action; with `--wait`, then polls until the VM reaches what `target` says (told
    /// the VM as it was before, for its PID and stop timeout).
    static func run(_ options: CommonOptions, _ name: String, _ action: String, body: [UInt8]? = nil,
                    wait: WaitOptions? = nil, target: (VMDetail) -> WaitTarget = { _ in .running }) throws {
        var before: VMDetail?
        let waiting = wait.map { $0.wait || $0.ready } ?? false
        if waiting { before = try options.fetch("GET", "/v1/vms/\(pathComponent(name))", as: VMDetail.self).0 }
        // What to wait for is settled before anything is done: a refused option changes nothing.
        var goal = before.map(target)
        if wait?.ready == true {
            switch goal {
            case .running?: goal = .ready(after: nil)
            case let .restarted(old)?: goal = .ready(after: old)
            case .stopped?, .ready?, nil: throw ValidationError("--ready waits for a guest to come up: start, reboot and reset take it")
            }
        }
        try options.call("POST", "/v1/vms/\(pathComponent(name))/\(action)", body: body, as: ActionResult.self) { r in
            print("\(r.name): \(r.message) [\(r.state.rawValue)]")
        }
        guard let wait, let before, let goal else { return }
        var seconds = wait.timeout ?? 120
        if case .stopped = goal, wait.timeout == nil { seconds = max(seconds, before.stopTimeoutSeconds + 15) }
        try goal.await(options, name, seconds: seconds)
    }
}

/// `pause` and `resume`: a bodiless POST to /v1/vms/NAME/ACTION, one command told apart only by
/// its action's name and help text.
protocol PlainAction {
    static var name: String { get }
    static var abstract: String { get }
}

/// `start`, `reboot` and `reset`: the same, with `--wait` for the VM to run (again).
protocol WaitingAction: PlainAction {
    static func target(_ before: VMDetail) -> WaitTarget
}

enum StartAction: WaitingAction {
    static let name = "start", abstract = "Start a VM."
    static func target(_ before: VMDetail) -> WaitTarget { .running }
}
enum RebootAction: WaitingAction {
    static let name = "reboot"
    static let abstract = "Reboot a VM gracefully: Ctrl-Alt-Del to the guest, and once it has shut down (hard stop after its stop timeout) a new VMM with the current definition."
    static func target(_ before: VMDetail) -> WaitTarget { .restarted(oldPID: before.summary.pid) }
}
enum ResetAction: WaitingAction {
    static let name = "reset"
    static let abstract = "Reset a VM hard: its VMM is stopped at once (SIGTERM) and a new one started with the current definition."
    static func target(_ before: VMDetail) -> WaitTarget { .restarted(oldPID: before.summary.pid) }
}
enum PauseAction: PlainAction { static let name = "pause", abstract = "Pause a VM (its VMM process is stopped with SIGSTOP)." }
enum ResumeAction: PlainAction { static let name = "resume", abstract = "Resume a paused VM." }

struct PlainActionCommand<Action: PlainAction>: ParsableCommand {
    static var configuration: CommandConfiguration { CommandConfiguration(commandName: Action.name, abstract: Action.abstract) }
    @OptionGroup var options: CommonOptions
    @OptionGroup var vm: NameArgument
    func run() throws { try ActionCommand.run(options, vm.name, Action.name) }
}

struct WaitingActionCommand<Action: WaitingAction>: ParsableCommand {
    static var configuration: CommandConfiguration { CommandConfiguration(commandName: Action.name, abstract: Action.abstract) }
    @OptionGroup var options: CommonOptions
    @OptionGroup var vm: NameArgument
    @OptionGroup var wait: WaitOptions
    func run() throws { try ActionCommand.run(options, vm.name, Action.name, wait: wait, target: Action.target) }
}

typealias Start = WaitingActionCommand<StartAction>
typealias Reboot = WaitingActionCommand<RebootAction>
typealias Reset = WaitingActionCommand<ResetAction>
typealias Pause = PlainActionCommand<PauseAction>
typealias Resume = PlainActionCommand<ResumeAction>

struct Stop: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Stop a VM: Ctrl-Alt-Del to the guest, hard stop after its stop timeout.")
    @OptionGroup var options: CommonOptions
    @OptionGroup var vm: NameArgument
    @Flag(help: "Stop at once (the VMM stops the vCPUs) instead of asking the guest.")
    var force = false
    @OptionGroup var wait: WaitOptions
    func run() throws {
        try ActionCommand.run(options, vm.name, "stop", body: Array("{\"force\":\(force)}".utf8), wait: wait) { _ in .stopped }
    }
}

struct Validate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Validate definition files here, with your own permissions (no daemon needed): relative paths resolve against each file's directory.")
    @Flag(help: "Print each file's result as the API's ValidateResult JSON.")
    var json = false
    @Argument(help: "Definition files.", completion: .file(extensions: ["json"]))
    var files: [String]

    /// Local, like `nginx -t` (issue 16): the daemon's validation runs as root for any client, so
    /// it no longer looks at files; here the kernel and images are checked as the caller sees them.
    func run() throws {
        var bad = false
        for file in files {
            var result = ValidateResult(valid: true, name: nil, problems: [])
            do {
                // Relative paths in the file resolve against its directory, shown absolute.
                let absolute = file.hasPrefix("/") ? file : currentDirectory() + "/" + file
                result.name = try VMDefinition.load(path: file, baseDirectory: String(absolute[..<absolute.lastIndex(of: "/")!])).name
            } catch let e as DefinitionError {
                result.valid = false
                result.problems = e.issues.map { DefinitionProblem(file: $0.file, path: $0.path, reason: $0.reason) }
            }
            bad = bad || !result.valid
            if json {
                print(String(decoding: try JSONEncoder().encode(result), as: UTF8.self))
            } else if result.valid {
                print("\(file): OK (\(result.name ?? "?"))")
            } else {
                for p in result.problems { print("\(p)") }
            }
        }
        if bad { throw ExitCode(1) }
    }

    func currentDirectory() -> String {
        var buf = [CChar](repeating: 0, count: 4096)
        guard getcwd(&buf, buf.count) != nil else { return "." }
        return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

struct Reload: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Re-read the definitions directory (like systemctl reload rtvisord).")
    @OptionGroup var options: CommonOptions
    func run() throws {
        try options.call("POST", "/v1/reload", as: ReloadResult.self) { r in
            print("added: \(r.added.joined(separator: " ")); removed: \(r.removed.joined(separator: " ")); changed: \(r.changed.joined(separator: " ")); pending until restart: \(r.pending.joined(separator: " "))")
            for p in r.invalidDefinitions { print("invalid: \(p)") }
        }
    }
}

struct Info: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "daemon", abstract: "Show the daemon's version and status.")
    @OptionGroup var options: CommonOptions
    func run() throws {
        try options.call("GET", "/v1/daemon", as: DaemonInfo.self) { i in
            print("rtvisord \(i.version), PID \(i.pid), definitions in \(i.definitionsDirectory): \(i.status)")
        }
    }
}

struct Console: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Attach to a VM's serial console (Ctrl-] detaches). Output starts with the last 64 KiB.")
    @OptionGroup var options: CommonOptions
    @OptionGroup var vm: NameArgument
    @Option(help: "Detach after this many seconds (for scripts).")
    var timeout: Double?
    @Flag(help: "Take over typing from another session (only one session's keys reach the guest; the others watch).")
    var force = false
    @Option(help: "Print the console's last N lines and exit, without attaching (GET /v1/vms/NAME/console; at most 100).")
    var tail: Int?

    func run() throws {
        if let tail {
            try options.call("GET", "/v1/vms/\(pathComponent(vm.name))/console?lines=\(tail)", as: ConsoleTail.self) { t in
                for line in t.lines { print(line) }
            }
            return
        }
        var socketPath: String?
        try options.call("GET", "/v1/vms/\(pathComponent(vm.name))", as: VMDetail.self) { d in socketPath = d.consoleSocket }
        guard let socketPath, !options.json else { return }
        do { _ = try ConsoleAttach.run(socketPath: socketPath, seconds: timeout, takeOver: force) } catch {
            writeErr("rtvisorctl: \(error)\n")
            throw ExitCode(1)
        }
    }
}

struct RtCheck: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rt-check",
        abstract: "Report what the host offers real-time VMs: isolcpus/nohz_full/rcu_nocbs, SMT siblings, cpufreq governor and IRQs per CPU.")
    @OptionGroup var options: CommonOptions
    @Argument(help: "A VM with a realtime block (default: every such VM).", completion: .custom { _, _, _ in vmNamesForCompletion() })
    var name: String?

    func run() throws {
        if let name {
            try options.call("GET", "/v1/vms/\(pathComponent(name))/rt-check", as: RealtimeCheck.self) { print($0.lines.joined(separator: "\n")) }
        } else {
            try options.call("GET", "/v1/rt-check", as: [RealtimeCheck].self) { checks in
                if checks.isEmpty { print("no VM definition has a realtime block") }
                print(checks.map { $0.lines.joined(separator: "\n") }.joined(separator: "\n\n"))
            }
        }
    }
}

struct Latency: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show a real-time VM's wake-up latency (realtime.latency_probe_us): timer expiry to running on its first CPU.")
    @OptionGroup var options: CommonOptions
    @OptionGroup var vm: NameArgument

    func run() throws {
        try options.call("GET", "/v1/vms/\(pathComponent(vm.name))/latency", as: LatencySnapshot.self) { s in
            func us(_ ns: UInt64) -> String { "\(ns / 1000).\((ns % 1000) / 100)" }
            print("VM \(s.name): CPU \(s.cpu), SCHED_FIFO \(s.priority), every \(s.periodMicroseconds) µs, \(s.samples) samples")
            table(["MIN µs", "MEAN µs", "P50 µs", "P99 µs", "P99.99 µs", "MAX µs"],
                  [[us(s.minNanoseconds), us(UInt64(max(0, s.meanNanoseconds))), us(s.p50Nanoseconds), us(s.p99Nanoseconds),
                    us(s.p9999Nanoseconds), us(s.maxNanoseconds)]])
        }
    }
}
