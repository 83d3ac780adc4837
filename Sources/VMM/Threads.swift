import Posix
#if canImport(Glibc)
import Glibc
#endif

public enum VMMError: Error, CustomStringConvertible {
    case setup(String)
    public var description: String {
        switch self { case let .setup(m): m }
    }
}
