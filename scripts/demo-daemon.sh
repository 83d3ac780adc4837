#!/usr/bin/env bash
# Sets up and runs rtvisord with example VMs: `idle` (a test inmate that runs until stopped,
# autostart, restart on-failure) and `linux` (the minimal Linux guest, cached outside the
# clone; boots, prints its init marker, powers off).
#
# On a host whose PID 1 is systemd: installs rtvisor (scripts/install.sh), the two definitions
# into /etc/rtvisor/vms, starts rtvisord.service and shows `rtvisorctl list`.
# Anywhere else (containers, this development machine): runs rtvisord in the foreground with
# build/demo/vms and the API on build/demo/run/api.sock; Ctrl-C stops the guests and the daemon.
#   scripts/demo-daemon.sh [--foreground]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
export PATH=/opt/swift/usr/bin:$PATH
log() { printf '== %s\n' "$*" >&2; }
foreground=0
[ "${1:-}" = --foreground ] && foreground=1
[ -d /run/systemd/system ] || foreground=1

guest=$(scripts/build-guest-kernel.sh | tail -n 1)
inmates=$(scripts/build-inmates.sh | tail -n 1)
definitions() { # DIR INMATE GUEST
	cat >"$1/idle.json" <<JSON
{ "name": "idle", "memory_mib": 32, "kernel": "$2/idle.elf", "cmdline": "idle.heartbeat=30",
  "autostart": true, "restart": "on-failure", "stop_timeout_s": 10 }
JSON
	cat >"$1/linux.json" <<JSON
{ "name": "linux", "vcpus": 1, "memory_mib": 128, "kernel": "$3/vmlinux", "initrd": "$3/initramfs.cpio",
  "cmdline": "console=ttyS0 panic=-1 mitigations=off nopti rodata=off emukvm.pvmsys emukvm.exit_port=0xf4",
  "autostart": true, "restart": "no", "stop_timeout_s": 5 }
JSON
}

if [ $foreground = 0 ]; then
	scripts/install.sh
	install -d /usr/local/share/rtvisor/guest-linux
	cp "$guest/vmlinux" "$guest/initramfs.cpio" /usr/local/share/rtvisor/guest-linux/
	definitions /etc/rtvisor/vms /usr/local/share/rtvisor/inmates /usr/local/share/rtvisor/guest-linux
	systemctl daemon-reload
	systemctl enable --now rtvisord
	systemctl reload rtvisord
	sleep 1
	rtvisorctl list
	log "console: rtvisorctl console idle (Ctrl-] detaches); logs: rtvisorctl logs idle -f"
	exit 0
fi

log "building rtvisord, rtvisorctl, rtvisor-vmm"
swift build --product rtvisord 2>&1 | grep -v '^\[' >&2
swift build --product rtvisorctl 2>&1 | grep -v '^\[' >&2
swift build --product rtvisor-vmm 2>&1 | grep -v '^\[' >&2
demo=$repo/build/demo
mkdir -p "$demo/vms" "$demo/run"
definitions "$demo/vms" "$inmates" "$guest"
log "rtvisord in the foreground (no systemd here). In another terminal:"
log "  export RTVISOR_API_SOCKET=$demo/run/api.sock PATH=$repo/.build/debug:\$PATH"
log "  rtvisorctl status; rtvisorctl console idle; rtvisorctl stop idle"
log "  rtvisorctl logs idle -f --log-file $demo/run/rtvisord.log   (no journald here)"
exec .build/debug/rtvisord --definitions "$demo/vms" --run-directory "$demo/run" --vmm "$repo/.build/debug/rtvisor-vmm"
