import APIModels
import Testing

/// The console's end as the dashboard shows it: raw guest output made into lines a page can
/// show as text.
@Suite struct ConsoleTailTests {
    @Test func theLastLinesWithoutCarriageReturnsOrControlBytes() {
        let raw = Array("first\r\nsecond\r\n\u{1B}[1mbold\u{1B}[0m\tend\r\n\r\n".utf8)
        #expect(ConsoleTail.lines(of: raw, count: 2) == ["second", "[1mbold[0m\tend"])
        #expect(ConsoleTail.lines(of: raw, count: 10) == ["first", "second", "[1mbold[0m\tend"])
    }

    @Test func anUnfinishedLineCountsAndBadBytesAreReplaced() {
        #expect(ConsoleTail.lines(of: Array("done\nlogin: ".utf8), count: 1) == ["login: "])
        #expect(ConsoleTail.lines(of: [0x61, 0xff, 0x62], count: 1) == ["a\u{FFFD}b"])
    }

    @Test func linesAndTheirLengthAreBounded() {
        let long = [UInt8](repeating: 0x78, count: 2000)
        #expect(ConsoleTail.lines(of: long, count: 1) == [String(repeating: "x", count: ConsoleTail.maxLineLength)])
        let many = Array((0..<300).map { "line \($0)" }.joined(separator: "\n").utf8)
        #expect(ConsoleTail.lines(of: many, count: 1000).count == ConsoleTail.maxLines)
        #expect(ConsoleTail.lines(of: [], count: 5).isEmpty)
    }
}
