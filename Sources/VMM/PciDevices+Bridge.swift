import Config
import HostNetwork
import VirtioNet

extension PciDevices {
    /// Opens (or creates) NIC `index`'s tap and, with a `bridge` or an `mtu`, sets it up on the
    /// host over rtnetlink, while the VMM is still root and has no filters (docs/networking.md).
    /// On failure the tap is closed again: one this VMM created vanishes with it.
    static func openTap(_ net: NetSettings, index: Int) throws -> (tap: Tap, setup: String) {
        let tap: Tap
        do { tap = try Tap(name: net.tap) } catch let e as TapError { throw VMMError.setup("$.nets[\(index)].tap: \(e)") }
        let applied: BridgePort.Applied
        do { applied = try BridgePort.attach(tap: tap.name, bridge: net.bridge, mtu: net.mtu.map(UInt32.init), links: RouteNetlink()) }
        catch { throw VMMError.setup("$.nets[\(index)].\(error)") }
        return (tap, (applied.bridge.map { " on bridge \($0)" } ?? "") + (applied.mtu.map { ", MTU \($0)" } ?? ""))
    }
}
