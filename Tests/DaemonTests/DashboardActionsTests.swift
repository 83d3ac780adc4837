import API
import Foundation
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// The dashboard actions' token (docs/metrics.md): random, in a file only root and the group
/// can read, compared in constant time.
@Suite struct DashboardActionsTests {
    @Test func aTokenIs32RandomBytesInHex() {
        let a = DashboardActions.newToken(), b = DashboardActions.newToken()
        #expect(a.count == 64 && a.allSatisfy(\.isHexDigit))
        #expect(a != b)
    }

    @Test func onlyTheExactBearerTokenAuthorizes() {
        #expect(DashboardActions.authorizes("Bearer abc", token: "abc"))
        for header in [nil, "", "abc", "Bearer abd", "Bearer ab", "Bearer abcd", "bearer abc", "Basic abc"] as [String?] {
            #expect(!DashboardActions.authorizes(header, token: "abc"), "\(header ?? "nil")")
        }
    }

    @Test func theTokenFileIsReadableByRootAndTheGroupOnly() throws {
        guard geteuid() == 0 else { print("SKIP: not root, the token file cannot be given to group root"); return }
        let dir = try makeTemporaryDirectory()
        let group = "root"
        try DashboardActions.writeToken("t0k3n", runDirectory: dir, group: group)
        let path = dir + "/" + DashboardActions.tokenFile
        var st = stat()
        #expect(stat(path, &st) == 0)
        #expect(st.st_mode & 0o777 == 0o640)
        #expect(st.st_gid == getgrnam(group)!.pointee.gr_gid)
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "t0k3n\n")
        #expect(!FileManager.default.fileExists(atPath: path + ".new"))
        #expect(throws: DashboardActions.TokenError.self) { try DashboardActions.writeToken("x", runDirectory: dir, group: "no-such-group-here") }
    }
}
