import APIModels
import ArgumentParser
import Config
import Posix
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

// The commands an administrator reaches for first, shaped like the tools they know:
// `status` like systemctl status, `logs` like journalctl -u, `edit` like systemctl edit/visudo.

/// `rtvisorctl status`: the daemon and every VM at a glance.
struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the daemon and its VMs at a glance (like systemctl status).",
        discussion: "Exit status 0 when the daemon answers, 3 when it does not run (as systemctl status).")
    @OptionGroup var options: CommonOptions

    func run() throws {
        let daemon: (DaemonInfo, String), list: (VMList, String)
        do {
            daemon = try options.fetch("GET", "/v1/daemon", as: DaemonInfo.self)
            list = try options.fetch("GET", "/v1/vms", as: VMList.self)
        } catch let e as ExitCode where e.rawValue == 2 {
            print("○ rtvisord: not running (no answer on \(options.socket))")
            throw ExitCode(3)
        }
        if options.json {
            print("{\"daemon\":\(daemon.1.trimmed),\"vms\":\(list.1.trimmed)}")
            return
        }
        print(Self.render(daemon.0, list.0, socket: options.socket, now: Date().timeIntervalSince1970), terminator: "")
    }

    /// The text, separate from `run` so tests can check it.
    static func render(_ d: DaemonInfo, _ l: VMList, socket: String, now: Double) -> String {
        var out = "● rtvisord \(d.version): active, PID \(d.pid)\n"
        out += "      Status: \(d.status)\n"
        out += " Definitions: \(d.definitionsDirectory) (\(l.vms.count) VM\(l.vms.count == 1 ? "" : "s"), \(Set(l.invalidDefinitions.map(\.file)).count) invalid)\n"
        out += "         API: \(socket)\n"
        if !l.vms.isEmpty { out += "\n" }
        let width = l.vms.map(\.name.count).max() ?? 0
        for v in l.vms {
            let dot = [.running, .paused, .incoming].contains(v.state) ? "●" : v.state == .failed ? "×" : "○"
            var line = "\(dot) \(v.name.padded(width))  \(v.state.rawValue.padded(10)) "
            line += [v.pid.map { "PID \($0)" }, v.since > 0 ? "since \(Self.ago(now - v.since))" : nil].compactMap { $0 }.joined(separator: ", ")
            if v.state != .running, let e = v.lastExit { line += "; last exit: \(exitText(e))" }
            if v.pendingChange { line += "; definition changed (applies on restart)" }
            if v.restarts > 0 { line += "; \(v.restarts) restart\(v.restarts == 1 ? "" : "s")" }
            out += line + "\n"
        }
        if !l.invalidDefinitions.isEmpty {
            out += "\nInvalid definitions (skipped; rtvisorctl validate FILE):\n"
            for p in l.invalidDefinitions { out += "  \(p)\n" }
        }
        return out
    }

    static func ago(_ seconds: Double) -> String {
        let s = max(0, Int(seconds))
        if s < 60 { return "\(s) s ago" }
        if s < 3600 { return "\(s / 60) min ago" }
        if s < 86_400 { return "\(s / 3600) h \(s % 3600 / 60) min ago" }
        return "\(s / 86_400) days ago"
    }
}

extension String {
    var trimmed: String { hasSuffix("\n") ? String(dropLast()) : self }
}

/// `rtvisorctl logs NAME [-f]`: one VM's journal (its console and the daemon's events about it);
/// without journald, the lines about it in the daemon's log file.
struct Logs: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show a VM's log: its console and the daemon's events about it (journalctl VM_NAME=NAME; without journald, the daemon's log file).")
    @OptionGroup var vm: NameArgument
    @Flag(name: .shortAndLong, help: "Follow: keep printing new lines.")
    var follow = false
    @Option(name: [.customShort("n"), .long], help: "Show the last N lines.")
    var lines = 100
    @Option(help: "The daemon's log file, read when there is no journald.")
    var logFile = APIPaths.defaultRunDirectory + "/rtvisord.log"

    func run() throws {
        guard VMName.isValid(vm.name) else { writeErr("rtvisorctl: \(vm.name) is not a VM name\n"); throw ExitCode(1) }
        if let journalctl = Self.journalctl() {
            var argv = [journalctl, "--no-pager", "-o", "short-iso", "-n", String(lines), "VM_NAME=\(vm.name)"]
            if follow { argv.append("-f") }
            let c = argv.map { strdup($0) } + [nil]
            execv(journalctl, c)
            writeErr("rtvisorctl: cannot run \(journalctl): \(errnoMessage(errno))\n")
            throw ExitCode(1)
        }
        try LogFile.show(path: logFile, vm: vm.name, lines: lines, follow: follow)
    }

    /// journalctl, when journald runs here (its socket exists).
    static func journalctl() -> String? {
        var st = stat()
        guard stat("/run/systemd/journal/socket", &st) == 0 else { return nil }
        return ["/usr/bin/journalctl", "/bin/journalctl"].first { access($0, X_OK) == 0 }
    }
}

/// The VM-name rule (the validator's), here so `logs` rejects a name before it reaches
/// journalctl's match syntax.
enum VMName {
    static func isValid(_ s: String) -> Bool {
        !s.isEmpty && s.count <= 64 && s.unicodeScalars.allSatisfy { ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) || $0 == "-" || $0 == "_" }
    }
}

/// rtvisord's log file (no journald): one entry a line, `TIME <N>MESSAGE FIELD=value…`.
enum LogFile {
    /// The lines about `vm`: those with its VM_NAME field.
    static func matches(_ line: Substring, vm: String) -> Bool {
        let field = "VM_NAME=\(vm)"
        return line.split(separator: " ").dropFirst(2).contains { $0 == field }
    }

    static func show(path: String, vm: String, lines: Int, follow: Bool) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            writeErr("rtvisorctl: no journald here, and no log file \(path): \(errnoMessage(errno)) (rtvisord writes it when journald is absent)\n")
            throw ExitCode(1)
        }
        defer { close(fd) }
        var pending = ""
        var shown: [Substring] = []
        func consume(_ text: String, tail: Bool) {
            pending += text
            guard let last = pending.lastIndex(of: "\n") else { return }
            let complete = pending[..<last]
            for line in complete.split(separator: "\n") where matches(line, vm: vm) {
                if tail { shown.append(line) } else { print(line); fflush(nil) }
            }
            pending = String(pending[pending.index(after: last)...])
        }
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(fd, &buf, buf.count)
            if n <= 0 { break }
            consume(String(decoding: buf[..<n], as: UTF8.self), tail: true)
        }
        for line in shown.suffix(lines) { print(line) }
        guard follow else { return }
        fflush(nil)
        while true {
            let n = read(fd, &buf, buf.count)
            if n > 0 { consume(String(decoding: buf[..<n], as: UTF8.self), tail: false) } else { usleep(250_000) }
        }
    }
}

/// `rtvisorctl edit NAME`: the definition in $VISUAL/$EDITOR on a copy, validated here, then
/// installed and the daemon reloaded; an invalid edit never reaches the definitions directory.
struct Edit: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Edit a VM's definition: $VISUAL or $EDITOR on a copy, validated, then installed and the daemon reloaded.",
        discussion: "A running VM keeps its definition until it restarts (rtvisorctl reboot NAME applies it). An invalid copy is offered again for editing on a terminal; otherwise it is kept and its path printed (exit status 1).")
    @OptionGroup var options: CommonOptions
    @OptionGroup var vm: NameArgument

    func run() throws {
        let (detail, _) = try options.fetch("GET", "/v1/vms/\(pathComponent(vm.name))", as: VMDetail.self)
        let file = detail.summary.definitionFile
        let directory = String(file[..<(file.lastIndex(of: "/") ?? file.startIndex)])
        let original: Data
        do { original = try Data(contentsOf: URL(fileURLWithPath: file)) } catch {
            writeErr("rtvisorctl: cannot read \(file): \(error)\n"); throw ExitCode(1)
        }
        var template = Array("/tmp/rtvisor-edit-\(vm.name)-XXXXXX.json".utf8CString)
        let fd = mkstemps(&template, 5)
        guard fd >= 0 else { writeErr("rtvisorctl: mkstemps: \(errnoMessage(errno))\n"); throw ExitCode(1) }
        close(fd)
        let copy = String(cString: template)
        try original.write(to: URL(fileURLWithPath: copy))
        while true {
            guard Self.runEditor(on: copy) else { writeErr("rtvisorctl: the editor failed; \(copy) kept\n"); throw ExitCode(1) }
            let edited = (try? Data(contentsOf: URL(fileURLWithPath: copy))) ?? Data()
            if edited == original {
                unlink(copy)
                print("\(file): unchanged")
                return
            }
            let problems = Self.problems(copy, baseDirectory: directory, name: vm.name)
            if problems.isEmpty {
                try Self.install(edited, over: file)
                unlink(copy)
                print("\(file): installed")
                break
            }
            for p in problems { writeErr("\(p)\n") }
            guard isatty(STDIN_FILENO) == 1, Self.ask("Edit again? [Y/n] ") else {
                writeErr("rtvisorctl: not installed; your copy is \(copy)\n")
                throw ExitCode(1)
            }
        }
        try options.call("POST", "/v1/reload", as: ReloadResult.self) { r in
            if r.pending.contains(vm.name) { print("\(vm.name): the change applies when it restarts (rtvisorctl reboot \(vm.name))") }
            else if r.changed.contains(vm.name) || r.added.contains(vm.name) { print("\(vm.name): reloaded") }
            for p in r.invalidDefinitions { print("invalid: \(p)") }
        }
    }

    /// What the validator says (files resolved from the definitions directory, as the daemon
    /// would), and a renamed VM: its name is its identity, `edit` keeps it.
    static func problems(_ copy: String, baseDirectory: String, name: String) -> [String] {
        do {
            let d = try VMDefinition.load(path: copy, baseDirectory: baseDirectory)
            return d.name == name ? [] : ["\(copy): $.name: is \"\(d.name)\": edit keeps the VM's name \"\(name)\" (copy the file to define another VM)"]
        } catch let e as DefinitionError {
            return e.issues.map(\.description)
        } catch {
            return ["\(copy): \(error)"]
        }
    }

    static func runEditor(on path: String) -> Bool {
        let env = ProcessInfo.processInfo.environment
        let editor = [env["VISUAL"], env["EDITOR"]].compactMap { $0 }.first { !$0.isEmpty }
            ?? (access("/usr/bin/editor", X_OK) == 0 ? "/usr/bin/editor" : "vi")
        // Through the shell, like git and systemctl edit: EDITOR may carry arguments ("code -w").
        let words: [String] = ["/bin/sh", "-c", "\(editor) \"$1\"", "sh", path]
        let argv = words.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        guard posix_spawn(&pid, "/bin/sh", nil, nil, argv, environ) == 0 else { return false }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return status == 0
    }

    /// Atomically, with the file's mode kept: a rename of a sibling.
    static func install(_ data: Data, over file: String) throws {
        var st = stat()
        let mode = stat(file, &st) == 0 ? st.st_mode & 0o7777 : 0o644
        let temporary = file + ".rtvisorctl-edit"
        do { try data.write(to: URL(fileURLWithPath: temporary)) } catch {
            writeErr("rtvisorctl: cannot write \(temporary): \(error)\n")
            throw ExitCode(1)
        }
        chmod(temporary, mode)
        guard rename(temporary, file) == 0 else {
            let e = errno
            unlink(temporary)
            writeErr("rtvisorctl: cannot install \(file): \(errnoMessage(e))\n")
            throw ExitCode(1)
        }
    }

    static func ask(_ prompt: String) -> Bool {
        print(prompt, terminator: ""); fflush(nil)
        let answer = (readLine() ?? "n").filter { $0 != " " && $0 != "\t" }.lowercased()
        return answer.isEmpty || answer == "y" || answer == "yes"
    }
}
