import Config
import Foundation
import Testing

/// rtvisord.json: the metrics TCP listener is off by default and on loopback when enabled;
/// anything wrong is named by file, JSON path and reason.
@Suite struct RtvisordSettingsTests {
    func parse(_ json: String) throws(DefinitionError) -> RtvisordSettings {
        try RtvisordSettings.parse(Data(json.utf8), file: "rtvisord.json")
    }

    func problems(_ json: String) -> [String] {
        do { _ = try parse(json); return [] } catch { return error.issues.map(\.description) }
    }

    @Test func noFileMeansTheDefaultsWithTheTCPListenerOff() throws {
        let s = try RtvisordSettings.load(path: "/nonexistent/rtvisord.json")
        #expect(s == RtvisordSettings())
        #expect(s.metrics.tcp.enabled == false)
        #expect(s.metrics.tcp.address == "127.0.0.1")
        #expect(s.metrics.tcp.port == 9595)
    }

    @Test func enablingTheListenerKeepsLoopbackUnlessAnAddressIsGiven() throws {
        #expect(try parse(#"{"metrics": {"tcp": {"enabled": true}}}"#).metrics.tcp == TCPListenerSettings(enabled: true))
        let v6 = try parse(#"{"metrics": {"tcp": {"enabled": true, "address": "::1", "port": 9100}}}"#)
        #expect(v6.metrics.tcp == TCPListenerSettings(enabled: true, address: "::1", port: 9100))
        #expect(try parse("{}") == RtvisordSettings())
    }

    @Test func dashboardActionsAreOffUnlessAGroupIsNamed() throws {
        #expect(try parse("{}").metrics.dashboardActionsGroup == nil)
        #expect(try parse(#"{"metrics": {"dashboard_actions_group": null}}"#).metrics.dashboardActionsGroup == nil)
        #expect(try parse(#"{"metrics": {"dashboard_actions_group": "rtvisor-ops"}}"#).metrics.dashboardActionsGroup == "rtvisor-ops")
        #expect(problems(#"{"metrics": {"dashboard_actions_group": "Ops Team"}}"#)
                == ["rtvisord.json: $.metrics.dashboard_actions_group: must be a group name (lower-case letters, digits, '_' and '-') or null, got \"Ops Team\""])
    }

    @Test func theDashboardsConsoleLinesAreOffUnlessTurnedOn() throws {
        #expect(try parse("{}").metrics.dashboardConsole == false)
        #expect(try parse(#"{"metrics": {"dashboard_console": true}}"#).metrics.dashboardConsole)
        #expect(problems(#"{"metrics": {"dashboard_console": 1}}"#) == ["rtvisord.json: $.metrics.dashboard_console: must be true or false, got 1"])
    }

    @Test func badFieldsAreNamedByPathWithTheReason() {
        #expect(problems(#"{"metrics": {"tcp": {"enabled": "yes"}}}"#) == ["rtvisord.json: $.metrics.tcp.enabled: must be true or false, got \"yes\""])
        #expect(problems(#"{"metrics": {"tcp": {"port": 70000}}}"#) == ["rtvisord.json: $.metrics.tcp.port: must be an integer from 1 to 65535, got 70000"])
        #expect(problems(#"{"metrics": {"tcp": {"address": "localhost"}}}"#)
                == ["rtvisord.json: $.metrics.tcp.address: must be an IPv4 or IPv6 address such as \"127.0.0.1\" or \"::1\", got \"localhost\""])
        #expect(problems(#"{"metrics": {"tpc": {}}}"#) == ["rtvisord.json: $.metrics.tpc: unknown key (did you mean \"tcp\"?)"])
        #expect(problems(#"{"metrics": []}"#) == ["rtvisord.json: $.metrics: must be a JSON object, got an array"])
        #expect(problems("[") .first?.hasPrefix("rtvisord.json: $: invalid JSON") == true)
    }
}
