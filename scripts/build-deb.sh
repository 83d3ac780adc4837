#!/usr/bin/env bash
# Builds the Debian package rtvisor_VERSION-1_amd64.deb with dpkg-deb (no network, no
# debhelper): the static executables, the units (enabled by postinst through
# deb-systemd-helper), sysusers.d, tmpfiles.d, the journal catalog, /etc/rtvisor/vms/example.json
# as a conffile (not started: "autostart": false), man pages, completions, the JSON Schema, the
# docs, a copyright file. Then lintian, its output kept beside the package.
#
#   scripts/build-deb.sh                  static release build (cached: scripts/build-static.sh)
#   scripts/build-deb.sh --binaries DIR   prebuilt rtvisord, rtvisorctl, rtvisor-vmm from DIR
#   scripts/build-deb.sh --out DIR        where the .deb and lintian.txt go (default: build/deb)
#   scripts/build-deb.sh --no-lintian
# Prints the .deb's path, last line of stdout. The package's files: packaging/deb/ (maintainer
# scripts, copyright, README.Debian, lintian overrides). Version: rtvisorctl --version
# (RtvisorRelease); the Debian revision is 1.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
binaries=
out=$repo/build/deb
lint=1
while [ $# -gt 0 ]; do
	case $1 in
	--binaries) binaries=$2; shift 2 ;;
	--out) out=$2; shift 2 ;;
	--no-lintian) lint=0; shift ;;
	-h|--help) sed -n '2,16p' "$0"; exit 0 ;;
	*) echo "build-deb.sh: unknown argument $1 (--help lists them)" >&2; exit 2 ;;
	esac
done
log() { printf '== %s\n' "$*" >&2; }
die() { printf 'build-deb.sh: %s\n' "$*" >&2; exit 1; }

need=()
command -v dpkg-deb >/dev/null || need+=(dpkg)
command -v fakeroot >/dev/null || true
[ $lint = 0 ] || command -v lintian >/dev/null || need+=(lintian)
command -v python3 >/dev/null || need+=(python3-minimal)
if [ ${#need[@]} -gt 0 ]; then
	log "installing ${need[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >&2
fi

[ -n "$binaries" ] || binaries=$("$repo/scripts/build-static.sh" | tail -n 1)
for p in rtvisord rtvisorctl rtvisor-vmm; do [ -x "$binaries/$p" ] || die "$binaries/$p is missing"; done
idle=$("$repo/scripts/build-inmates.sh" | tail -n 1)/idle.elf
[ -f "$idle" ] || die "no idle inmate ($idle): the example runs it"

upstream=$("$binaries/rtvisorctl" --version)
version=$upstream-1
arch=amd64
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)}
mkdir -p "$out"
stage=$(mktemp -d /tmp/rtvisor-deb.XXXXXX)
trap 'rm -rf "$stage"' EXIT
root=$stage/rtvisor
doc=$root/usr/share/doc/rtvisor
share=$root/usr/share/rtvisor
log "staging rtvisor $version"

# ---- executables: stripped (the symbols are 40% of each file; Swift needs none at run time) ----
install -d "$root/usr/bin"
for p in rtvisord rtvisorctl rtvisor-vmm; do
	install -m 0755 "$binaries/$p" "$root/usr/bin/$p"
	strip --strip-unneeded --remove-section=.comment --remove-section=.note "$root/usr/bin/$p"
	"$root/usr/bin/$p" --version >/dev/null || die "stripped $p does not run"
done

# ---- systemd: units, drop-ins to copy, sysusers, tmpfiles, the journal catalog ----
install -d "$root/lib/systemd/system" "$root/usr/lib/sysusers.d" "$root/usr/lib/tmpfiles.d" \
	"$root/usr/lib/systemd/catalog" "$share/systemd/rtvisord.service.d"
for u in rtvisord.service rtvisor-guests.service; do
	sed 's|/usr/local/bin/|/usr/bin/|g' "$repo/systemd/$u" >"$root/lib/systemd/system/$u"
done
for d in "$repo"/systemd/rtvisord.service.d/*.conf; do install -m 0644 "$d" "$share/systemd/rtvisord.service.d/"; done
install -m 0644 "$repo/systemd/rtvisor.sysusers" "$root/usr/lib/sysusers.d/rtvisor.conf"
install -m 0644 "$repo/systemd/rtvisor.tmpfiles" "$root/usr/lib/tmpfiles.d/rtvisor.conf"
install -m 0644 "$repo/systemd/rtvisor.catalog" "$root/usr/lib/systemd/catalog/rtvisor.catalog"

# ---- the example (a conffile, not started) and what it runs; the schema ----
# The guest is architecture-dependent: /usr/lib, not /usr/share.
install -d "$root/etc/rtvisor/vms" "$root/usr/lib/rtvisor/inmates"
install -m 0644 "$idle" "$root/usr/lib/rtvisor/inmates/idle.elf"
install -m 0644 "$repo/docs/vm-definition.schema.json" "$share/vm-definition.schema.json"
python3 - "$repo/examples/daemon/example.json" "$root/etc/rtvisor/vms/example.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
d["kernel"] = "/usr/lib/rtvisor/inmates/idle.elf"
d["autostart"] = False
d = {"$schema": "/usr/share/rtvisor/vm-definition.schema.json", **d}
open(sys.argv[2], "w").write(json.dumps(d, indent=2) + "\n")
PY
# The example as shipped must validate: checked against the staged guest.
sed "s|/usr/lib/rtvisor/inmates/|$root/usr/lib/rtvisor/inmates/|" "$root/etc/rtvisor/vms/example.json" >"$stage/example.json"
"$root/usr/bin/rtvisorctl" validate "$stage/example.json" >&2 || die "the shipped example does not validate"

# ---- man pages, completions ----
python3 "$repo/scripts/gen-man.py" "$root/usr/bin" "$stage/man"
for page in "$stage"/man/*; do
	section=${page##*.}
	install -d "$root/usr/share/man/man$section"
	gzip -9n <"$page" >"$root/usr/share/man/man$section/$(basename "$page").gz"
done
install -d "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions" "$root/usr/share/fish/vendor_completions.d"
# (bash-completion sources the file: no #! line)
"$root/usr/bin/rtvisorctl" --generate-completion-script bash | sed '1{/^#!/d}' >"$root/usr/share/bash-completion/completions/rtvisorctl"
"$root/usr/bin/rtvisorctl" --generate-completion-script zsh >"$root/usr/share/zsh/vendor-completions/_rtvisorctl"
"$root/usr/bin/rtvisorctl" --generate-completion-script fish >"$root/usr/share/fish/vendor_completions.d/rtvisorctl.fish"

# ---- docs: compressed above 4 KiB like dh_compress; copyright; changelogs ----
install -d "$doc/examples" "$root/usr/share/lintian/overrides"
install -m 0644 "$repo/README.md" "$repo"/docs/*.md "$repo/docs/api.yaml" "$repo/packaging/deb/README.Debian" "$doc/"
install -m 0644 "$repo/examples/daemon/example.json" "$repo/examples/hello.json" "$doc/examples/"
install -m 0644 "$repo/CHANGELOG.md" "$doc/changelog"
install -m 0644 "$repo/packaging/deb/copyright" "$doc/copyright"
install -m 0644 "$repo/packaging/deb/lintian-overrides" "$root/usr/share/lintian/overrides/rtvisor"
cat >"$stage/changelog.Debian" <<CHANGES
rtvisor ($version) unstable; urgency=medium

  * Built by scripts/build-deb.sh; upstream changes are in changelog.gz.

 -- rtvisor developers <rtvisor@lists.rtvisor.org>  $(date -u -R -d "@$SOURCE_DATE_EPOCH")
CHANGES
install -m 0644 "$stage/changelog.Debian" "$doc/changelog.Debian"
find "$doc" -type f ! -name copyright \( -size +4k -o -name 'changelog*' \) -exec gzip -9n {} +

# ---- control ----
install -d "$root/DEBIAN"
install -m 0755 "$repo"/packaging/deb/{postinst,prerm,postrm} "$root/DEBIAN/"
echo /etc/rtvisor/vms/example.json >"$root/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<CONTROL
Package: rtvisor
Version: $version
Architecture: $arch
Maintainer: rtvisor developers <rtvisor@lists.rtvisor.org>
Installed-Size: $size
Depends: init-system-helpers (>= 1.54~), passwd
Recommends: systemd
Section: admin
Priority: optional
Homepage: https://github.com/rtvisor/rtvisor
Description: real-time capable hypervisor on KVM, with its own VMM and daemon
 rtvisor runs virtual machines on /dev/kvm without QEMU or libvirt: rtvisor-vmm
 is one VM's monitor (virtio-blk, virtio-net, VFIO passthrough, snapshots, live
 migration), rtvisord runs the VMs defined in /etc/rtvisor/vms under systemd,
 and rtvisorctl controls them. Real-time VMs get dedicated host CPUs, SCHED_FIFO
 vCPUs and locked memory.
CONTROL
(cd "$root" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
find "$root" -type d -exec chmod 0755 {} +
find "$root" -type f ! -path '*/DEBIAN/*' ! -path '*/usr/bin/*' -exec chmod 0644 {} +
find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

deb=$out/rtvisor_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >&2
log "built $deb ($(du -h "$deb" | cut -f1))"
if [ $lint = 1 ]; then
	lintian --info --display-info --pedantic "$deb" >"$out/lintian.txt" 2>&1 || true
	if [ -s "$out/lintian.txt" ]; then log "lintian ($out/lintian.txt):"; sed 's/^/   /' "$out/lintian.txt" | grep -v '^   N:' >&2 || true
	else log "lintian: clean"; fi
fi
echo "$deb"
