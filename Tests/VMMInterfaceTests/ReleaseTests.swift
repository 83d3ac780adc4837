import Testing
import Foundation
import VMMInterface

/// The one version string and what must agree with it.
@Suite struct ReleaseTests {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

    @Test func theVersionIsSemantic() {
        let parts = RtvisorRelease.version.split(separator: ".", omittingEmptySubsequences: false)
        #expect(parts.count == 3 && parts.allSatisfy { !$0.isEmpty && $0.allSatisfy(\.isNumber) }, "\(RtvisorRelease.version)")
    }

    /// A release bump without its changelog entry (or the reverse) fails here.
    @Test func theChangelogsNewestEntryNamesIt() throws {
        let text = try String(contentsOfFile: Self.repository + "/CHANGELOG.md", encoding: .utf8)
        let newest = try #require(text.split(separator: "\n").first { $0.hasPrefix("## ") })
        #expect(newest.hasPrefix("## \(RtvisorRelease.version) "), "CHANGELOG.md: \(newest)")
    }
}
