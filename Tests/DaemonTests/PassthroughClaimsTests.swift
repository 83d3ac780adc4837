import Testing
@testable import Daemon

@Suite struct PassthroughClaimsTests {
    let groups = ["0000:03:00.0": 12, "0000:03:00.1": 12, "0000:04:00.0": 13]

    @Test func aSecondClaimOfOneDeviceNamesBothVMs() {
        let why = PassthroughClaims.conflict(vm: "b", wants: ["0000:04:00.0"], running: [(vm: "a", devices: ["0000:04:00.0"])],
                                             group: { groups[$0] })
        #expect(why == "VM b: PCI device 0000:04:00.0 is already passed through to VM a")
    }

    @Test func aDeviceInAGroupAnotherVMHoldsIsRefused() {
        let why = PassthroughClaims.conflict(vm: "b", wants: ["0000:03:00.1"], running: [(vm: "a", devices: ["0000:03:00.0"])],
                                             group: { groups[$0] })
        #expect(why == "VM b: PCI device 0000:03:00.1 is in IOMMU group 12, which VM a holds (for 0000:03:00.0); a group goes to one VM")
    }

    @Test func separateDevicesAndTheVMItselfAreFine() {
        #expect(PassthroughClaims.conflict(vm: "b", wants: ["0000:04:00.0"], running: [(vm: "a", devices: ["0000:03:00.0"])], group: { groups[$0] }) == nil)
        #expect(PassthroughClaims.conflict(vm: "a", wants: ["0000:03:00.0"], running: [(vm: "a", devices: ["0000:03:00.0"])], group: { groups[$0] }) == nil)
    }
}
