/// A PCI function on the root bus: configuration space plus BAR regions. Virtio devices
/// implement it through `VirtioPciDevice`; VFIO passthrough devices will plug into the same slots.
public protocol PciDevice: AnyObject, Sendable {
    var name: String { get }
    func readConfig(offset: Int, size: Int) -> UInt32
    func writeConfig(offset: Int, size: Int, value: UInt32)
    /// The BARs with their current addresses, and whether memory decoding is on.
    var barState: (bars: [PciBar], memoryEnabled: Bool) { get }
    /// Places a BAR before the guest starts (the root bus allocates the addresses).
    func assignBar(index: Int, address: UInt64)
    func readBar(_ index: Int, offset: UInt64, size: Int) -> UInt64
    func writeBar(_ index: Int, offset: UInt64, size: Int, value: UInt64)
}
