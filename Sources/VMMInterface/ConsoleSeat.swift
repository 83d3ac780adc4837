/// Who may type on a VM's serial console: the protocol between `rtvisorctl console` and
/// rtvisor-vmm's console socket (issue 16). Every client sees the output; only one, the seat's
/// holder, reaches the guest's input. The first client to type takes the free seat and keeps it
/// until it leaves; others are read-only and told so once. A client whose first bytes are
/// `takeOverRequest` (`rtvisorctl console --force`) takes the seat from its holder, who is told.
/// Pure: the server feeds it events and sends what it returns.
public struct ConsoleSeat: Sendable, Equatable {
    /// Sent by a client right after connecting; never reaches the guest.
    public static let takeOverRequest: [UInt8] = [0] + Array("rtvisor:take-over\n".utf8)

    public private(set) var holder: Int32?
    /// Clients that have sent nothing yet (a take-over request is only read as their first bytes).
    private var fresh: Set<Int32> = []
    /// Read-only clients already told why their keys go nowhere.
    private var told: Set<Int32> = []

    public init() {}

    public mutating func connected(_ client: Int32) { fresh.insert(client) }

    public mutating func disconnected(_ client: Int32) {
        fresh.remove(client)
        told.remove(client)
        if holder == client { holder = nil }
    }

    /// What `client`'s bytes do: those that reach the guest, and notices to send to clients.
    public mutating func input(_ bytes: ArraySlice<UInt8>, from client: Int32, vm: String) -> (toGuest: ArraySlice<UInt8>, notices: [(client: Int32, text: String)]) {
        var bytes = bytes
        var notices: [(client: Int32, text: String)] = []
        if fresh.remove(client) != nil, bytes.starts(with: Self.takeOverRequest) {
            bytes = bytes.dropFirst(Self.takeOverRequest.count)
            if let previous = holder, previous != client {
                notices.append((previous, "\r\n[rtvisor: another session took over \(vm)'s console; this one is read-only now]\r\n"))
                told.insert(previous)
            }
            holder = client
            told.remove(client)
        }
        guard !bytes.isEmpty else { return (bytes, notices) }
        if holder == nil { holder = client }
        guard holder == client else {
            if told.insert(client).inserted {
                notices.append((client, "\r\n[rtvisor: \(vm)'s console is in use by another session: read-only here (rtvisorctl console --force takes it over)]\r\n"))
            }
            return (bytes[bytes.endIndex...], notices)
        }
        return (bytes, notices)
    }
}
