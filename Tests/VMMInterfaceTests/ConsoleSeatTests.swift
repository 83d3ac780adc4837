import Testing
import VMMInterface

/// One typing session per console (issue 16): the others watch.
@Suite struct ConsoleSeatTests {
    func keys(_ s: String) -> ArraySlice<UInt8> { Array(s.utf8)[...] }

    @Test func theFirstToTypeHoldsTheSeatOthersAreToldOnce() {
        var seat = ConsoleSeat()
        seat.connected(5); seat.connected(6)
        #expect(Array(seat.input(keys("ls\n"), from: 5, vm: "web").toGuest) == Array("ls\n".utf8))
        let refused = seat.input(keys("rm -rf /\n"), from: 6, vm: "web")
        #expect(refused.toGuest.isEmpty)
        #expect(refused.notices.count == 1 && refused.notices[0].client == 6 && refused.notices[0].text.contains("read-only here"))
        #expect(seat.input(keys("x"), from: 6, vm: "web").notices.isEmpty, "told once")
        #expect(seat.holder == 5)
    }

    @Test func theSeatIsFreeAgainWhenItsHolderLeaves() {
        var seat = ConsoleSeat()
        seat.connected(5); seat.connected(6)
        _ = seat.input(keys("a"), from: 5, vm: "web")
        seat.disconnected(5)
        #expect(Array(seat.input(keys("b"), from: 6, vm: "web").toGuest) == [UInt8(ascii: "b")])
        #expect(seat.holder == 6)
    }

    @Test func forceTakesTheSeatAndTellsTheHolder() {
        var seat = ConsoleSeat()
        seat.connected(5)
        _ = seat.input(keys("a"), from: 5, vm: "web")
        seat.connected(7)
        let take = seat.input((ConsoleSeat.takeOverRequest + Array("reboot\n".utf8))[...], from: 7, vm: "web")
        #expect(Array(take.toGuest) == Array("reboot\n".utf8), "the request itself never reaches the guest")
        #expect(take.notices.map(\.client) == [5] && take.notices[0].text.contains("took over"))
        #expect(seat.holder == 7)
        #expect(seat.input(keys("q"), from: 5, vm: "web").toGuest.isEmpty)
    }

    @Test func theRequestCountsOnlyAsAClientsFirstBytes() {
        var seat = ConsoleSeat()
        seat.connected(5); seat.connected(6)
        _ = seat.input(keys("a"), from: 5, vm: "web")
        _ = seat.input(keys("b"), from: 6, vm: "web")
        #expect(seat.input(ConsoleSeat.takeOverRequest[...], from: 6, vm: "web").toGuest.isEmpty)
        #expect(seat.holder == 5)
    }
}
