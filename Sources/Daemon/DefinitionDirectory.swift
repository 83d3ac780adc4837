import APIModels
import Config
import Foundation
import Posix

/// One valid definition file as loaded: its bytes (handed to rtvisor-vmm unchanged, so fields
/// this daemon does not know are kept) and the parsed, validated definition.
public struct LoadedDefinition: Equatable, Sendable {
    public var file: String
    /// The file's directory: relative kernel/initrd paths are resolved against it.
    public var directory: String
    public var contents: [UInt8]
    public var definition: VMDefinition

    public var name: String { definition.name }

    /// Whether the machine itself differs (what needs a VM restart). Daemon-only fields
    /// (autostart, restart policy, stop timeout) apply at once and do not count.
    public func machineDiffers(from other: LoadedDefinition) -> Bool {
        Self.machineDiffers(definition, other.definition)
    }

    public static func machineDiffers(_ a: VMDefinition, _ b: VMDefinition) -> Bool {
        var a = a, b = b
        a.daemon = DaemonSettings(); b.daemon = DaemonSettings()
        return a != b
    }
}

/// The result of reading a definitions directory: the valid definitions by VM name, and every
/// problem of the files that were skipped.
public struct DirectoryScan: Sendable {
    public var definitions: [String: LoadedDefinition] = [:]
    public var problems: [DefinitionIssue] = []
    /// Files that exist but were skipped; a VM whose file turns invalid keeps its last valid definition.
    public var invalidFiles: Set<String> = []

    public var apiProblems: [DefinitionProblem] { problems.map { DefinitionProblem(file: $0.file, path: $0.path, reason: $0.reason) } }
}

public enum DefinitionDirectory {
    /// Reads every `*.json` in `directory` (sorted, dot-files skipped). A broken file is reported
    /// with file, JSON path and reason and skipped; the others still load. Two files defining the
    /// same VM name: the first (by file name) wins, the second is reported.
    public static func scan(directory: String, checkFiles: Bool = true) -> DirectoryScan {
        var scan = DirectoryScan()
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: directory)
        } catch {
            scan.problems.append(DefinitionIssue(in: directory, at: "$", reason: "cannot read the definitions directory: \(errnoText(error))"))
            return scan
        }
        for entry in names.sorted() where entry.hasSuffix(".json") && !entry.hasPrefix(".") {
            let file = directory.hasSuffix("/") ? directory + entry : directory + "/" + entry
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: file, isDirectory: &isDir), !isDir.boolValue else { continue }
            switch load(file: file, directory: directory, checkFiles: checkFiles) {
            case let .success(loaded):
                if let first = scan.definitions[loaded.name] {
                    scan.problems.append(DefinitionIssue(in: file, at: "$.name", reason: "VM \"\(loaded.name)\" is already defined by \(first.file)"))
                    scan.invalidFiles.insert(file)
                } else {
                    scan.definitions[loaded.name] = loaded
                }
            case let .failure(error):
                scan.problems.append(contentsOf: error.issues)
                scan.invalidFiles.insert(file)
            }
        }
        refuseChannelConflicts(&scan)
        return scan
    }

    /// Two definitions claiming one peer id of a channel (or declaring it differently): the later
    /// file is reported and skipped, as a second definition of one VM name is.
    static func refuseChannelConflicts(_ scan: inout DirectoryScan) {
        let loaded = scan.definitions.values.filter { !$0.definition.channels.isEmpty }.sorted { $0.file < $1.file }
        let conflicts = ChannelClaims.conflicts(loaded.map { ChannelClaims.Claim(file: $0.file, vm: $0.name, channels: $0.definition.channels) })
        for (index, issues) in conflicts.sorted(by: { $0.key < $1.key }) {
            scan.problems.append(contentsOf: issues)
            scan.invalidFiles.insert(loaded[index].file)
            scan.definitions[loaded[index].name] = nil
        }
    }

    public static func load(file: String, directory: String, checkFiles: Bool = true) -> Result<LoadedDefinition, DefinitionError> {
        guard let data = FileManager.default.contents(atPath: file) else {
            return .failure(DefinitionError([DefinitionIssue(in: file, at: "$", reason: "cannot read file")]))
        }
        do {
            let def = try VMDefinition.parse(data, file: file, baseDirectory: directory, checkFiles: checkFiles)
            return .success(LoadedDefinition(file: file, directory: directory, contents: Array(data), definition: def))
        } catch let e as DefinitionError {
            return .failure(e)
        } catch {
            return .failure(DefinitionError([DefinitionIssue(in: file, at: "$", reason: "\(error)")]))
        }
    }

    static func errnoText(_ error: Error) -> String {
        let ns = error as NSError
        if let u = ns.userInfo[NSUnderlyingErrorKey] as? NSError, u.domain == NSPOSIXErrorDomain {
            return errnoMessage(Int32(u.code))
        }
        return ns.localizedDescription
    }
}

/// What a reload changes, by VM name.
public struct ReloadPlan: Equatable, Sendable {
    /// New definitions.
    public var added: [String] = []
    /// Definitions whose file is gone: their VMs are stopped and forgotten.
    public var removed: [String] = []
    /// The machine changed (needs a VM restart to apply: pending while the VM runs).
    public var changed: [String] = []
    /// Only daemon fields changed (autostart, restart policy, stop timeout): applied at once.
    public var settingsChanged: [String] = []
    /// The file is now invalid: the last valid definition stays in force (reported).
    public var keptDespiteInvalidFile: [String] = []

    public init() {}

    /// Compares the definitions in force with a fresh scan.
    public static func make(current: [String: LoadedDefinition], scan: DirectoryScan) -> ReloadPlan {
        var plan = ReloadPlan()
        for name in scan.definitions.keys.sorted() {
            guard let old = current[name] else { plan.added.append(name); continue }
            let new = scan.definitions[name]!
            if new.machineDiffers(from: old) { plan.changed.append(name) }
            else if new.definition.daemon != old.definition.daemon { plan.settingsChanged.append(name) }
        }
        for name in current.keys.sorted() where scan.definitions[name] == nil {
            if scan.invalidFiles.contains(current[name]!.file) { plan.keptDespiteInvalidFile.append(name) }
            else { plan.removed.append(name) }
        }
        return plan
    }
}
