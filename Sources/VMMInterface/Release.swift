/// rtvisor's release: the one version string. Every binary's `--version`, the API's `GET
/// /v1/daemon`, snapshot headers, the VMM control and migration `hello`s and the Debian package
/// (scripts/build-deb.sh asks `rtvisorctl --version`) all read it from here; CHANGELOG.md's
/// newest entry must name it (ReleaseTests).
public enum RtvisorRelease {
    public static let version = "0.5.0"
}
