#!/usr/bin/env bash
# Installs rtvisor as a systemd service: rtvisord, rtvisorctl and rtvisor-vmm (static
# executables), systemd/rtvisord.service, the `rtvisor` group (API and console access), bash
# completion for rtvisorctl, the idle test inmate and an example definition
# (/etc/rtvisor/vms/example.json, never overwritten).
#
#   scripts/install.sh                      build (release, static) and install into /
#   scripts/install.sh --root DIR           install into another root (a container image)
#   scripts/install.sh --bin-dir DIR        use prebuilt rtvisord/rtvisorctl/rtvisor-vmm from DIR
#   scripts/install.sh --no-example         skip the example definition
# Then: systemctl daemon-reload && systemctl enable --now rtvisord
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
root=
prefix=/usr/local
bindir=
example=1
while [ $# -gt 0 ]; do
	case $1 in
	--root) root=$2; shift 2 ;;
	--prefix) prefix=$2; shift 2 ;;
	--bin-dir) bindir=$2; shift 2 ;;
	--no-example) example=0; shift ;;
	-h|--help) sed -n '2,12p' "$0"; exit 0 ;;
	*) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done
log() { printf '== %s\n' "$*" >&2; }

if [ -z "$bindir" ]; then
	export PATH=/opt/swift/usr/bin:$PATH
	log "building static release executables (.build-static)"
	for p in rtvisord rtvisorctl rtvisor-vmm; do
		swift build -c release --product "$p" --scratch-path "$repo/.build-static" -Xswiftc -static-executable 2>&1 | grep -v '^\[' >&2
	done
	bindir=$repo/.build-static/release
fi
inmates=$("$repo/scripts/build-inmates.sh" | tail -n 1)

log "installing into ${root:-/} (prefix $prefix)"
install -d "$root$prefix/bin" "$root/etc/systemd/system" "$root/etc/rtvisor/vms" \
	"$root$prefix/share/rtvisor/inmates" "$root$prefix/share/rtvisor/examples" "$root/usr/share/bash-completion/completions"
for p in rtvisord rtvisorctl rtvisor-vmm; do install -m 0755 "$bindir/$p" "$root$prefix/bin/$p"; done
sed "s|/usr/local/bin/|$prefix/bin/|g" "$repo/systemd/rtvisord.service" > "$root/etc/systemd/system/rtvisord.service"
chmod 0644 "$root/etc/systemd/system/rtvisord.service"
install -m 0644 "$inmates/idle.elf" "$root$prefix/share/rtvisor/inmates/idle.elf"
sed "s|/usr/local/share/|$prefix/share/|g" "$repo/examples/daemon/example.json" > "$root$prefix/share/rtvisor/examples/example.json"
if [ $example = 1 ] && [ ! -e "$root/etc/rtvisor/vms/example.json" ]; then
	install -m 0644 "$root$prefix/share/rtvisor/examples/example.json" "$root/etc/rtvisor/vms/example.json"
fi
"$bindir/rtvisorctl" --generate-completion-script bash > "$root/usr/share/bash-completion/completions/rtvisorctl"

if [ -n "$root" ]; then
	grep -q '^rtvisor:' "$root/etc/group" || groupadd --root "$(cd "$root" && pwd)" --system rtvisor
else
	getent group rtvisor >/dev/null || groupadd --system rtvisor
	if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
fi
log "done: systemctl enable --now rtvisord; rtvisorctl list; journalctl -u rtvisord"
