/// Why a kernel or initrd cannot be loaded. Each case names the file and what is wrong with it.
public enum BootError: Error, Equatable, CustomStringConvertible {
    case cannotRead(path: String, reason: String)
    case truncated(path: String, what: String)
    case unrecognisedFormat(path: String)
    case unsupported(path: String, reason: String)
    case doesNotFit(path: String, what: String, address: UInt64, size: UInt64)
    case commandLineTooLong(length: Int, max: Int)

    public var description: String {
        switch self {
        case let .cannotRead(p, r): "\(p): cannot read: \(r)"
        case let .truncated(p, w): "\(p): truncated image: \(w) extends past the end of the file"
        case let .unrecognisedFormat(p): "\(p): not an ELF vmlinux or a bzImage"
        case let .unsupported(p, r): "\(p): unsupported kernel: \(r)"
        case let .doesNotFit(p, w, a, s):
            "\(p): \(w) at 0x\(String(a, radix: 16)) (\(s) bytes) does not fit in guest RAM"
        case let .commandLineTooLong(l, m): "kernel command line is \(l) bytes, the limit is \(m)"
        }
    }
}
