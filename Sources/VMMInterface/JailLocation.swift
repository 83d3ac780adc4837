/// Where a jailed process mounts its tmpfs root (docs/sandbox.md): a directory per VM, empty on
/// the host (the mount lives only in the VMM's own mount namespace). The VMM creates it; rtvisord
/// removes it once the VM has ended, as it does the VM's other runtime files.
public enum JailLocation {
    public static let directory = "/run/rtvisor/jail"
    public static func root(vm: String) -> String { directory + "/" + vm }
    /// The API front's (rtvisord's HTTP side, docs/daemon.md).
    public static let apiFrontRoot = directory + "/.api"
}
