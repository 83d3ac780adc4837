import Foundation

func write(_ text: String, to path: String) throws {
    try text.write(toFile: path, atomically: true, encoding: .utf8)
}

/// A kernel file that exists (definitions check that kernel paths are readable files).
func makeKernel(in dir: String) throws -> String {
    let k = dir + "/kernel.elf"
    try write("not really a kernel", to: k)
    return k
}

func definitionJSON(name: String, kernel: String, memory: Int = 32, extra: String = "") -> String {
    "{\"name\": \"\(name)\", \"memory_mib\": \(memory), \"kernel\": \"\(kernel)\"\(extra.isEmpty ? "" : ", " + extra)}"
}
