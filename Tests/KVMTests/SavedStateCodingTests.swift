@testable import KVM
import Arch
import Foundation
import Testing

/// A vCPU's saved state survives its JSON encoding (snapshot format 2: CPUID table and MSRs
/// packed), and a packed list of the wrong size is refused, not misread.
@Suite struct SavedStateCodingTests {
    static let state = VCPUState(
        id: 1, cpuid: [CPUIDEntry(function: 0, eax: 0x16, ebx: 0x6874_7541), CPUIDEntry(function: 7, index: 1, flags: 1, ecx: 0xFFFF_FFFF, edx: 9)],
        mpState: 0, regs: KernelStructure(bytes: [1, 2, 3]), sregs: KernelStructure(bytes: []), xsave: KernelStructure(bytes: Array(repeating: 0xAB, count: 4096)),
        fpu: nil, xcrs: KernelStructure(bytes: [7]), debugRegs: KernelStructure(bytes: [0]), lapic: KernelStructure(bytes: [4, 4]),
        msrs: [SavedMSR(index: 0x10, value: 0x1234_5678_9ABC_DEF0), SavedMSR(index: 0x4B56_4D02, value: 1)],
        events: KernelStructure(bytes: [9]), tscKHz: 2_400_000)

    @Test func aVCPUStateRoundTripsWithItsListsPacked() throws {
        let json = try JSONEncoder().encode(Self.state)
        #expect(try JSONDecoder().decode(VCPUState.self, from: json) == Self.state)
        let object = try #require(try JSONSerialization.jsonObject(with: json) as? [String: Any])
        #expect(Data(base64Encoded: object["cpuid"] as? String ?? "")?.count == 2 * 28)
        #expect(Data(base64Encoded: object["msrs"] as? String ?? "")?.count == 2 * 12)
    }

    @Test func aPackedListOfTheWrongSizeIsRefused() throws {
        var object = try #require(try JSONSerialization.jsonObject(with: try JSONEncoder().encode(Self.state)) as? [String: Any])
        object["msrs"] = Data(count: 13).base64EncodedString()
        #expect(throws: DecodingError.self) { try JSONDecoder().decode(VCPUState.self, from: try JSONSerialization.data(withJSONObject: object)) }
    }
}
