// libFuzzer targets for the parsers that take untrusted input (docs/fuzzing.md):
//
//   virtqueue   split-queue parsing: rings, descriptor chains, indirect tables (guest RAM)
//   blk         the virtio-blk request parser and executor (guest RAM)
//   net         virtio-net transmit and receive paths over a socketpair "tap" (guest RAM)
//   definition  VMDefinition.parse: any bytes give a definition or a DefinitionError
//   api         APIRouter: route, query and JSON body decoding of a control API request
//   control     rtvisord's side of the API front's control socket
//   stream      a live-migration stream from another host (frames, pages into guest RAM) and
//               a snapshot state file
//
// Two builds (scripts/fuzz.sh):
// - libFuzzer: `-sanitize=fuzzer,address -D FUZZING`; the target comes from $RTVISOR_FUZZ_TARGET
//   and the command line is libFuzzer's;
// - plain: a replay tool, `rtvisor-fuzz TARGET FILE|DIR…` runs saved inputs (crash reproducers,
//   corpus) and prints what each did.
#if canImport(Glibc)
import Glibc
#endif

enum FuzzTarget: String, CaseIterable {
    case virtqueue, blk, net, definition, api, control, stream

    /// Runs one input; returns a one-line summary (for replay). Crashes (precondition, ASan) are findings.
    func run(_ input: UnsafeRawBufferPointer) -> String {
        switch self {
        case .virtqueue: fuzzVirtqueue(input)
        case .blk: fuzzBlock(input)
        case .net: fuzzNet(input)
        case .definition: fuzzDefinition(input)
        case .api: fuzzAPI(input)
        case .control: fuzzControl(input)
        case .stream: fuzzStream(input)
        }
    }
}

let targetNames = FuzzTarget.allCases.map(\.rawValue).joined(separator: ", ")

#if FUZZING
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<Int32>,
                         _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                         _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32) -> Int32

nonisolated(unsafe) var selected: FuzzTarget = .blk

// SwiftPM links executables with main = <module>_main, so libFuzzer's own main() is not used:
// this one hands the command line to libFuzzer's driver.
@_cdecl("rtvisor_fuzz_main")
func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    guard let name = getenv("RTVISOR_FUZZ_TARGET").map({ String(cString: $0) }), let t = FuzzTarget(rawValue: name) else {
        let message = "rtvisor-fuzz: set RTVISOR_FUZZ_TARGET to one of: \(targetNames)\n"
        _ = write(2, message, message.utf8.count)
        return 2
    }
    selected = t
    var argc = argc
    var argv = argv
    return LLVMFuzzerRunDriver(&argc, &argv) { data, size in
        guard let data else { return 0 }
        _ = selected.run(UnsafeRawBufferPointer(start: data, count: size))
        return 0
    }
}
#else
@main
struct Replay {
    static func main() {
        let args = Array(CommandLine.arguments.dropFirst())
        guard let first = args.first, let target = FuzzTarget(rawValue: first) else {
            print("usage: rtvisor-fuzz TARGET FILE|DIR...  (TARGET: \(targetNames))")
            print("replays fuzzer inputs; scripts/fuzz.sh TARGET runs libFuzzer")
            exit(2)
        }
        var count = 0
        for path in args.dropFirst() {
            for file in files(path) {
                guard let bytes = readFile(file) else { print("\(file): cannot open"); continue }
                let summary = bytes.withUnsafeBytes { target.run($0) }
                print("\(file): ok: \(summary)")
                count += 1
            }
        }
        print("\(count) input(s) replayed, no crash")
    }

    static func files(_ path: String) -> [String] {
        guard let dir = opendir(path) else { return [path] }
        defer { closedir(dir) }
        var names: [String] = []
        while let e = readdir(dir) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
            if name.hasPrefix(".") { continue }
            names.append(path + "/" + name)
        }
        return names.sorted()
    }

    static func readFile(_ path: String) -> [UInt8]? {
        guard let f = fopen(path, "rb") else { return nil }
        defer { fclose(f) }
        var bytes: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = fread(&buf, 1, buf.count, f)
            if n <= 0 { break }
            bytes += buf[0..<n]
        }
        return bytes
    }
}
#endif
