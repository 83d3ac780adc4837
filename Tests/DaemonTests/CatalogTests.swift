import Testing
import Foundation
import Journald

/// systemd/rtvisor.catalog (what `journalctl -x` says about each event) and docs/daemon.md's
/// table list exactly the MESSAGE_IDs rtvisor logs.
@Suite struct CatalogTests {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

    @Test func everyMessageIDHasACatalogEntryWithASubject() throws {
        let text = try String(contentsOfFile: Self.repository + "/systemd/rtvisor.catalog", encoding: .utf8)
        let entries = text.components(separatedBy: "\n-- ").dropFirst()
        var subjects: [String: String] = [:]
        for entry in entries {
            let lines = entry.split(separator: "\n", omittingEmptySubsequences: false)
            let subject = lines.first { $0.hasPrefix("Subject: ") }
            subjects[String(lines[0])] = subject.map { String($0.dropFirst(9)) } ?? ""
        }
        #expect(Set(subjects.keys) == Set(LifecycleEvent.allCases.map(\.messageID)))
        for (id, subject) in subjects { #expect(!subject.isEmpty, "\(id) has no Subject") }
    }

    @Test func docsListEveryMessageID() throws {
        let doc = try String(contentsOfFile: Self.repository + "/docs/daemon.md", encoding: .utf8)
        for e in LifecycleEvent.allCases {
            #expect(doc.contains("| `\(e.rawValue)` | `\(e.messageID)` |"), "docs/daemon.md lacks \(e.rawValue)")
        }
    }
}
