/// A classic-BPF interpreter for seccomp programs, for the tests: it runs a compiled
/// `FilterProgram` on a `struct seccomp_data` the test makes up, so the tests read what the
/// kernel would decide, not what the policy meant to say.
struct ClassicBPF {
    struct Instruction: Equatable { let code: UInt16; let jt: UInt8; let jf: UInt8; let k: UInt32 }
    struct Unsupported: Error, CustomStringConvertible { let description: String }

    /// x86-64's `AUDIT_ARCH_X86_64`.
    static let x86_64: UInt32 = 0xC000_003E

    let instructions: [Instruction]

    init(_ bytes: [UInt8]) {
        precondition(bytes.count % 8 == 0)
        func u16(_ i: Int) -> UInt16 { UInt16(bytes[i]) | UInt16(bytes[i + 1]) << 8 }
        func u32(_ i: Int) -> UInt32 { UInt32(u16(i)) | UInt32(u16(i + 2)) << 16 }
        instructions = stride(from: 0, to: bytes.count, by: 8).map { Instruction(code: u16($0), jt: bytes[$0 + 2], jf: bytes[$0 + 3], k: u32($0 + 4)) }
    }

    /// `struct seccomp_data` as the kernel lays it out (little-endian x86-64).
    static func data(nr: Int32, arch: UInt32 = x86_64, args: [UInt64] = []) -> [UInt8] {
        var d = [UInt8](repeating: 0, count: 64)
        func put32(_ v: UInt32, _ at: Int) { for i in 0..<4 { d[at + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))) } }
        put32(UInt32(bitPattern: nr), 0)
        put32(arch, 4)
        for (i, a) in args.prefix(6).enumerated() { put32(UInt32(truncatingIfNeeded: a), 16 + 8 * i); put32(UInt32(truncatingIfNeeded: a >> 32), 20 + 8 * i) }
        return d
    }

    /// The action the program returns (SECCOMP_RET_*).
    func run(_ data: [UInt8]) throws -> UInt32 {
        var a: UInt32 = 0, x: UInt32 = 0
        var mem = [UInt32](repeating: 0, count: 16)
        var pc = 0
        func load(_ at: UInt32) throws -> UInt32 {
            let i = Int(at)
            guard i % 4 == 0, i + 4 <= data.count else { throw Unsupported(description: "load at \(at)") }
            return UInt32(data[i]) | UInt32(data[i + 1]) << 8 | UInt32(data[i + 2]) << 16 | UInt32(data[i + 3]) << 24
        }
        for _ in 0..<instructions.count + 1 {
            guard pc < instructions.count else { throw Unsupported(description: "ran off the end") }
            let ins = instructions[pc]
            pc += 1
            let src = ins.code & 0x08 != 0 ? x : ins.k
            switch ins.code {
            case 0x20: a = try load(ins.k)                    // ld [k]
            case 0x00: a = ins.k                              // ld #k
            case 0x60: a = mem[Int(ins.k)]                    // ld M[k]
            case 0x01: x = ins.k                              // ldx #k
            case 0x61: x = mem[Int(ins.k)]                    // ldx M[k]
            case 0x02: mem[Int(ins.k)] = a                    // st M[k]
            case 0x03: mem[Int(ins.k)] = x                    // stx M[k]
            case 0x04, 0x0C: a = a &+ src
            case 0x14, 0x1C: a = a &- src
            case 0x44, 0x4C: a |= src
            case 0x54, 0x5C: a &= src
            case 0x64, 0x6C: a = src >= 32 ? 0 : a << src
            case 0x74, 0x7C: a = src >= 32 ? 0 : a >> src
            case 0x84: a = 0 &- a
            case 0x07: x = a                                  // tax
            case 0x87: a = x                                  // txa
            case 0x05: pc += Int(ins.k)                       // ja
            case 0x15, 0x1D: pc += Int(a == src ? ins.jt : ins.jf)
            case 0x25, 0x2D: pc += Int(a > src ? ins.jt : ins.jf)
            case 0x35, 0x3D: pc += Int(a >= src ? ins.jt : ins.jf)
            case 0x45, 0x4D: pc += Int(a & src != 0 ? ins.jt : ins.jf)
            case 0x06: return ins.k                           // ret #k
            case 0x16: return a                               // ret a
            default: throw Unsupported(description: "opcode 0x\(String(ins.code, radix: 16)) at \(pc - 1)")
            }
        }
        throw Unsupported(description: "no return")
    }
}
