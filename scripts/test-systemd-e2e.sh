#!/usr/bin/env bash
# End-to-end test of rtvisord under a real systemd 252 + journald: boots a Debian bookworm
# container with systemd-nspawn (this host's PID 1 is not systemd), installs rtvisor into it
# from its Debian package (scripts/build-deb.sh; `apt-get install ./rtvisor_*.deb`, whose postinst
# enables and starts the units), and checks the daemon as users run it:
# systemctl start/reload/restart/stop, Type=notify status, the watchdog, journalctl fields,
# rtvisorctl (stats and top too), restart policy after kill -9, re-adoption across a daemon restart and stop, a
# block device as a disk (refused under DevicePolicy=closed, allowed by the block-devices
# drop-in), graceful guest shutdown by rtvisor-guests.service, and a container poweroff (host
# shutdown: rtvisor-guests stops the guests before rtvisord stops); then it boots the container
# again (rtvisord comes up enabled), runs `apt-get purge rtvisor` and checks what is left: the
# administrator's definitions, the disk images and the group, nothing else.
#
#   scripts/test-systemd-e2e.sh                 everything, including one minimal-Linux VM
#   RTVISOR_SKIP_LINUX_BOOT=1 scripts/...       skip the Linux VM (1-3 minutes here)
#   KEEP=1 scripts/test-systemd-e2e.sh          leave the container running afterwards
#
# The rootfs (debootstrap, ~90 s, ~260 MB) is cached in ~/.cache/rtvisor/systemd-e2e, keyed by
# its inputs; each run boots it through a tmpfs overlay, so the cache stays pristine.
# Needs root, /dev/kvm and a Debian mirror; otherwise it says SKIP and why, and exits 0. The
# block-device step needs a loop device (losetup on the host; it says SKIP without one).
# Kills only the nspawn process it started; detaches only the loop device it set up; removes the
# empty cgroups nspawn leaves behind.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
say() { printf '== %s\n' "$*"; }
LEADER=
fail() {
	printf 'FAIL: %s\n' "$*" >&2
	if [ -n "$LEADER" ]; then
		echo "--- rtvisord journal (last 60 lines) ---" >&2
		timeout 20 nsenter -t "$LEADER" -m -u -i -n -p -C journalctl -b -u rtvisord --no-pager -n 60 >&2 || true
		timeout 20 nsenter -t "$LEADER" -m -u -i -n -p -C systemctl status rtvisord --no-pager >&2 || true
	fi
	exit 1
}
skip() { printf 'SKIP: systemd e2e: %s\n' "$*"; exit 0; }
ts() { date +%s.%N; }
el() { awk -v a="$1" -v b="$(ts)" 'BEGIN{printf "%.1fs", b-a}'; }
T_ALL=$(ts)

[ "$(id -u)" = 0 ] || skip "needs root (systemd-nspawn, overlay mounts)"
[ -r /dev/kvm ] && [ -w /dev/kvm ] || skip "/dev/kvm is absent or not accessible"

# ---------- host tools ----------
if ! command -v systemd-nspawn >/dev/null || ! command -v debootstrap >/dev/null; then
	say "installing systemd-container debootstrap"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq systemd-container debootstrap >/dev/null
fi

# ---------- rootfs (cached, keyed by its inputs) ----------
MIRROR=${MIRROR:-$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
[ -n "$MIRROR" ] || MIRROR=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
[ -n "$MIRROR" ] || MIRROR=http://deb.debian.org/debian
SUITE=bookworm
PKGS=systemd,dbus,procps,python3-minimal,passwd
cache=${RTVISOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rtvisor}/systemd-e2e
key=$(printf '%s\n' "$SUITE" minbase "$PKGS" "$MIRROR" | sha256sum | cut -c1-16)
rootfs=$cache/rootfs-$key
if [ ! -x "$rootfs/lib/systemd/systemd" ]; then
	mkdir -p "$cache"
	T=$(ts)
	rm -rf "$rootfs.tmp"
	say "debootstrap $SUITE into $rootfs (once)"
	debootstrap --variant=minbase --include=$PKGS "$SUITE" "$rootfs.tmp" "$MIRROR" >"$cache/debootstrap.log" 2>&1 \
		|| { tail -20 "$cache/debootstrap.log"; fail "debootstrap (log: $cache/debootstrap.log)"; }
	mv "$rootfs.tmp" "$rootfs"
	say "debootstrap: $(el "$T")"
fi

# ---------- build: the static executables (cached outside the clone), the .deb ----------
T=$(ts)
"$repo/scripts/build-inmates.sh" >/dev/null
static=$("$repo/scripts/build-static.sh" | tail -n 1) || fail "static release build"
say "static release build: $(el "$T")"
T=$(ts)
DEB=$("$repo/scripts/build-deb.sh" --binaries "$static" --out "$repo/build/deb" | tail -n 1) || fail "scripts/build-deb.sh"
say "$(basename "$DEB"): $(el "$T"); lintian: $(grep -cE '^[EW]:' "$repo/build/deb/lintian.txt" || true) errors and warnings (build/deb/lintian.txt)"
# systemd-analyze verify on the host needs ExecStart to exist: check the units with the build's path.
verify_dir=$(mktemp -d)
for u in rtvisord.service rtvisor-guests.service; do
	sed "s|/usr/local/bin/|$static/|" "$repo/systemd/$u" >"$verify_dir/$u"
done
systemd-analyze verify "$verify_dir/rtvisord.service" "$verify_dir/rtvisor-guests.service" || fail "systemd-analyze verify systemd/*.service"
say "systemd-analyze verify systemd/rtvisord.service systemd/rtvisor-guests.service: OK"

# ---------- overlay root, install ----------
work=$(mktemp -d /tmp/rtvisor-e2e.XXXXXX)
mount -t tmpfs -o size=1G tmpfs "$work"
mkdir -p "$work/upper" "$work/ovl" "$work/root"
mount -t overlay overlay -o "lowerdir=$rootfs,upperdir=$work/upper,workdir=$work/ovl" "$work/root"
ROOT=$work/root
NSPAWN=
LOOP=
cleanup() {
	trap "" PIPE INT TERM HUP
	set +e
	if [ -n "$NSPAWN" ] && kill -0 "$NSPAWN" 2>/dev/null; then
		kill -TERM "$NSPAWN"
		for _ in $(seq 150); do kill -0 "$NSPAWN" 2>/dev/null || break; sleep 0.1; done
		kill -0 "$NSPAWN" 2>/dev/null && kill -KILL "$NSPAWN"
		wait "$NSPAWN" 2>/dev/null
	fi
	for d in /sys/fs/cgroup/unified /sys/fs/cgroup/systemd; do
		for c in payload supervisor; do [ -d "$d/$c" ] && find "$d/$c" -depth -type d -exec rmdir {} \; 2>/dev/null; done
	done
	[ -n "$LOOP" ] && losetup -d "$LOOP"
	umount "$ROOT" 2>/dev/null
	umount "$work" 2>/dev/null
	rmdir "$work" 2>/dev/null
	rm -rf "$verify_dir"
}
if [ "${KEEP:-0}" != 1 ]; then trap cleanup EXIT; trap 'exit 130' INT TERM HUP PIPE; fi

# The package is installed once the container runs (its postinst starts rtvisord); what the
# administrator puts in place first: a faster watchdog than the shipped 30 s, so the test sees it
# being fed, and definitions beside the package's example: a broken one, a disk, a block device.
cp "$DEB" "$ROOT/root/"
mkdir -p "$ROOT/etc/systemd/system/rtvisord.service.d" "$ROOT/etc/rtvisor/vms"
printf '[Service]\nWatchdogSec=3s\n' >"$ROOT/etc/systemd/system/rtvisord.service.d/test.conf"
cat >"$ROOT/etc/rtvisor/vms/broken.json" <<'JSON'
{ "name": "broken", "memory_mib": 4, "kernel": "/nonexistent/vmlinux", "autostart": true }
JSON
# A VM with a writable disk in the unit's StateDirectory (/var/lib/rtvisor): the guest writes,
# flushes and reads back; under ProtectSystem=strict only the StateDirectory is writable.
mkdir -p "$ROOT/var/lib/rtvisor/images"
install -m 0644 "$repo/build/inmates/virtio-blk.elf" "$ROOT/var/lib/rtvisor/virtio-blk.elf"
truncate -s 1M "$ROOT/var/lib/rtvisor/images/disk.img"
cat >"$ROOT/etc/rtvisor/vms/disk.json" <<'JSON'
{ "name": "disk", "memory_mib": 32, "kernel": "/var/lib/rtvisor/virtio-blk.elf",
  "cmdline": "blk.mode=write blk.sectors=64 blk.seed=7", "disks": [{ "path": "/var/lib/rtvisor/images/disk.img" }] }
JSON
# A block device as a disk: a loop device set up on the host (the container's own /dev has no
# loop nodes: losetup inside finds a free number through /dev/loop-control but no /dev/loopN)
# and bound into the container, backed by a file in this run's tmpfs.
truncate -s 1M "$work/blk.img"
LOOP=$(losetup --find --show "$work/blk.img" 2>"$work/losetup.log") || LOOP=
if [ -n "$LOOP" ]; then
	cat >"$ROOT/etc/rtvisor/vms/blockdisk.json" <<JSON
{ "name": "blockdisk", "memory_mib": 32, "kernel": "/var/lib/rtvisor/virtio-blk.elf",
  "cmdline": "blk.mode=write blk.sectors=64 blk.seed=9", "disks": [{ "path": "$LOOP" }] }
JSON
else
	say "SKIP (block device step): no loop device: $(cat "$work/losetup.log")"
fi
linux=0
guest=${RTVISOR_GUEST_LINUX:-${RTVISOR_CACHE:-$HOME/.cache/rtvisor}/guest-linux/current}
if [ "${RTVISOR_SKIP_LINUX_BOOT:-0}" != 1 ] && [ -f "$guest/vmlinux" ] && [ -f "$guest/initramfs.cpio" ]; then
	linux=1
	mkdir -p "$ROOT/var/lib/rtvisor/guest-linux"
	cp "$guest/vmlinux" "$guest/initramfs.cpio" "$ROOT/var/lib/rtvisor/guest-linux/"
fi

# ---------- boot ----------
C() { timeout 120 nsenter -t "$LEADER" -m -u -i -n -p -C "$@"; }
boot() {
	local T; T=$(ts)
	SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 systemd-nspawn -D "$ROOT" -M rtvisor-e2e -b \
		--register=no --keep-unit --console=passive --private-network \
		--capability=all --system-call-filter=bpf \
		--bind=/dev/kvm --bind=/dev/net/tun ${LOOP:+--bind="$LOOP"} >"$work/nspawn.log" 2>&1 &
	NSPAWN=$!
	LEADER=
	for _ in $(seq 100); do
		LEADER=$(ps -o pid= --ppid "$NSPAWN" | tr -d ' ' | head -1 || true)
		[ -n "$LEADER" ] && [ "$(cat "/proc/$LEADER/comm" 2>/dev/null)" = systemd ] && break
		kill -0 "$NSPAWN" 2>/dev/null || { cat "$work/nspawn.log"; fail "nspawn exited"; }
		sleep 0.1
	done
	# Every command inside is bounded (C): a hang fails the test with the journal instead of stalling it.
	local state=
	for _ in $(seq 300); do
		state=$(C systemctl is-system-running --wait 2>/dev/null) && break
		case "$state" in degraded) break ;; esac
		sleep 0.1
	done
	[ "$state" = running ] || { C systemctl --failed --no-pager; fail "container state $state"; }
	say "container up (systemd $(C systemctl --version | head -1 | cut -d' ' -f2)): $(el "$T")"
}
boot

# ---------- helpers ----------
J() { C journalctl -b --no-pager "$@"; }
# Waits until a command succeeds (up to $1 seconds of wall time).
until_ok() {
	local end=$(($(date +%s) + $1)); shift
	while :; do
		"$@" >/dev/null 2>&1 && return 0
		[ "$(date +%s)" -lt "$end" ] || return 1
		sleep 0.2
	done
}
vm_field() { # NAME FIELD from rtvisorctl list --json
	C rtvisorctl list --json | python3 -c "import json,sys; v=[v for v in json.load(sys.stdin)['vms'] if v['name']=='$1']; print(v[0].get('$2','') if v else '')"
}
journal_has() { # journalctl args... -- python predicate on row r
	local pred=$1; shift
	J -o json "$@" | python3 -c "
import json, sys
rows = [json.loads(l) for l in sys.stdin if l.strip()]
sys.exit(0 if any($pred for r in rows) else 1)"
}
vm_running() { [ "$(vm_field "$1" state)" = running ]; }
step() { say "$*"; }

# ---------- install ----------
step "apt-get install ./$(basename "$DEB") (no network: its dependencies are in the rootfs)"
T=$(ts)
C sh -c "cd /root && DEBIAN_FRONTEND=noninteractive apt-get install -y -q ./$(basename "$DEB")" >"$work/apt.log" 2>&1 \
	|| { cat "$work/apt.log"; fail "apt-get install ./$(basename "$DEB")"; }
say "  installed in $(el "$T")"
grep -q '^rtvisor:' "$ROOT/etc/group" || fail "the package did not create the group rtvisor (sysusers.d)"
[ "$(C stat -c %a /var/lib/rtvisor)" = 750 ] || fail "/var/lib/rtvisor not made by tmpfiles.d (0750)"
for u in rtvisord rtvisor-guests; do
	[ "$(C systemctl is-enabled $u)" = enabled ] || fail "$u.service not enabled by the postinst"
done
until_ok 10 C systemctl is-active --quiet rtvisord || { J -u rtvisord | tail; fail "the postinst did not start rtvisord"; }
C dpkg-query -W -f '${Conffiles}\n' rtvisor | grep -q /etc/rtvisor/vms/example.json || fail "example.json is not a conffile"
[ "$(vm_field example state)" = stopped ] || fail "the shipped example is started (it must be disabled: autostart false)"
C rtvisorctl --version | grep -qx "$(basename "$DEB" | cut -d_ -f2 | cut -d- -f1)" || fail "rtvisorctl --version is not the package's version"
C rtvisorctl daemon --json | python3 -c "import json,sys; assert json.load(sys.stdin)['version'] == '$(C rtvisorctl --version)'" || fail "the API's daemon info lacks the version"
# (through files: grep -q closing a long pipe early would SIGPIPE its writer under pipefail)
C journalctl --list-catalog >"$work/catalog.txt" 2>&1 || true
grep -q "rtvisord is ready" "$work/catalog.txt" || fail "journalctl --list-catalog lacks rtvisor's catalog"
for page in rtvisord.8 rtvisorctl.1 rtvisor-vmm.1 rtvisor-vm.json.5; do
	C test -s "/usr/share/man/man${page##*.}/$page.gz" || fail "no man page $page"
done
say "  rtvisord enabled and running (0 VMs), the example installed as a conffile and not started"
# The test's own settings: the example as the rest of the test wants it (autostart, a 2 s
# heartbeat, a short stop timeout), applied by a restart of the daemon like an administrator's.
C systemctl stop rtvisord
sed -i 's/"idle.heartbeat=60"/"idle.heartbeat=2 vm=example"/; s/"stop_timeout_s": 10/"stop_timeout_s": 5/; s/"autostart": false/"autostart": true/' "$ROOT/etc/rtvisor/vms/example.json"

# ---------- checks ----------
step "systemd-analyze verify (inside, installed units)"
C systemd-analyze verify /lib/systemd/system/rtvisord.service /lib/systemd/system/rtvisor-guests.service \
	|| fail "systemd-analyze verify in the container"

step "systemctl start rtvisord"
T=$(ts)
C systemctl start rtvisord || { J -u rtvisord | tail -30; fail "systemctl start"; }
[ "$(C systemctl is-active rtvisord)" = active ] || fail "is-active after start"
say "  active after $(el "$T"); StatusText: $(C systemctl show -P StatusText rtvisord)"
C systemctl show -P StatusText rtvisord | grep -q "1 VM running" || fail "StatusText"
# Its start job runs after rtvisord's (After=), so it may still be activating here.
until_ok 10 C systemctl is-active --quiet rtvisor-guests || fail "rtvisor-guests.service not pulled in by rtvisord (Wants=)"
journal_has "r.get('RTVISOR_EVENT')=='guests-started'" -u rtvisord || fail "rtvisor-guests' ExecStart (rtvisorctl start-guests) did not reach the daemon"
[ "$(C stat -c %G /run/rtvisor/api.sock)" = rtvisor ] || fail "api.sock not group rtvisor"

step "guest console marker in journalctl -u rtvisord VM_NAME=example -o json"
until_ok 15 journal_has "'IDLE_READY' in r.get('MESSAGE','') and r.get('VM_CONSOLE')=='serial'" -u rtvisord VM_NAME=example \
	|| { J -u rtvisord | tail -20; fail "no IDLE_READY from example in the journal"; }
J -u rtvisord VM_NAME=example -o json | python3 -c '
import json, sys
for l in sys.stdin:
    r = json.loads(l)
    if "IDLE_READY" in r.get("MESSAGE", ""):
        print("  JSON:", {k: r[k] for k in ("MESSAGE", "VM_NAME", "VM_PID", "VM_CONSOLE", "_SYSTEMD_UNIT", "_SYSTEMD_CGROUP") if k in r}); break'
journal_has "'IDLE_READY' in r.get('MESSAGE','') and r.get('_SYSTEMD_CGROUP')=='/system.slice/rtvisord.service/vm-example'" -u rtvisord VM_NAME=example \
	|| fail "the console line was not logged from the VM's cgroup"
journal_has "r.get('RTVISOR_EVENT')=='vm-started' and r.get('MESSAGE_ID') and r.get('VM_STATE')=='running' and r.get('CODE_FILE','').split('/')[-1].startswith('Supervisor') and r.get('CODE_LINE')" -u rtvisord VM_NAME=example \
	|| fail "vm-started event lacks MESSAGE_ID/VM_STATE/CODE_FILE/CODE_LINE"

step "the broken definition is reported with file, JSON path and reason, and skipped"
journal_has "r.get('RTVISOR_EVENT')=='definition-invalid' and r.get('DEFINITION_FILE')=='/etc/rtvisor/vms/broken.json' and r.get('JSON_PATH')=='\$.memory_mib' and r.get('PRIORITY')=='3'" -u rtvisord \
	|| { J -u rtvisord | grep -i broken; fail "broken.json not reported"; }
# (through a file: grep -m closing the pipe early would SIGPIPE journalctl under pipefail)
J -u rtvisord -o cat >"$work/journal.txt"; grep -m2 broken.json "$work/journal.txt" | sed 's/^/  /'
C rtvisorctl list --json | python3 -c '
import json, sys
d = json.load(sys.stdin)
vms = [v for v in d["vms"] if v["name"] != "blockdisk"]
assert [v["name"] for v in vms] == ["disk", "example"], d
assert [v["state"] for v in vms] == ["stopped", "running"], d
broken = [p for p in d["invalid_definitions"] if p["file"] == "/etc/rtvisor/vms/broken.json"]
assert {p["path"] for p in broken} == {"$.memory_mib", "$.kernel"}, d["invalid_definitions"]' || fail "rtvisorctl list --json"

step "cgroup per VM under the delegated unit cgroup"
EX_PID=$(vm_field example pid)
C cat "/proc/$EX_PID/cgroup" | grep -q '^0::/system.slice/rtvisord.service/vm-example$' || { C cat "/proc/$EX_PID/cgroup"; fail "example's VMM not in vm-example cgroup"; }
# Under RestrictNamespaces= systemd makes clone3 fail with ENOSYS (it cannot filter clone3's
# flags), so rtvisord cannot use CLONE_INTO_CGROUP here and the VMM joins its cgroup itself.
C cat "/proc/$EX_PID/cmdline" | tr '\0' ' ' >"$work/ex-cmdline"
grep -q -- '--cgroup /sys/fs/cgroup/system.slice/rtvisord.service/vm-example' "$work/ex-cmdline" \
	|| { cat "$work/ex-cmdline"; fail "example's VMM was not told to join its cgroup (clone3 is ENOSYS under the unit)"; }
# systemd 252 has no DelegateSubgroup=: rtvisord says why the VM cgroups get no controllers.
J -u rtvisord >"$work/journal.txt"
grep -q "without DelegateSubgroup=" "$work/journal.txt" || fail "rtvisord did not explain the missing cgroup v2 controllers"

step "the VMM under the unit is jailed: own uid, no capabilities, no_new_privs, no host /etc"
C sh -c "grep -E '^(Uid|CapEff|CapPrm|CapBnd|NoNewPrivs|Seccomp):' /proc/$EX_PID/status" >"$work/jail.txt"
python3 - "$work/jail.txt" <<'PY' || { cat "$work/jail.txt"; J -u rtvisord | grep -i jail | tail -5; fail "example's VMM is not jailed"; }
import sys
f = dict(l.split(":", 1) for l in open(sys.argv[1]).read().splitlines())
uids = f["Uid"].split()
assert len(set(uids)) == 1 and uids[0] != "0", uids
for cap in ("CapEff", "CapPrm", "CapBnd"): assert int(f[cap].strip(), 16) == 0, (cap, f[cap])
assert f["NoNewPrivs"].strip() == "1", f["NoNewPrivs"]
PY
C test ! -e "/proc/$EX_PID/root/etc/os-release" || fail "the jailed VMM sees the container's /etc"
journal_has "r.get('MESSAGE','').startswith('jail: uid/gid')" -u rtvisord VM_NAME=example || fail "no jail log line for example"

step "the API front under the unit: its own uid, no capabilities, every thread under the api filter, no host /etc"
D_PID=$(C systemctl show -p MainPID --value rtvisord)
FRONT=$(C sh -c 'for p in /proc/[0-9]*; do [ "$(cut -d" " -f4 $p/stat 2>/dev/null)" = "'"$D_PID"'" ] && grep -qa -- --api-front $p/cmdline 2>/dev/null && echo ${p#/proc/}; done; true' | head -1)
[ -n "$FRONT" ] || { C ps -ef 2>/dev/null | tail -20; fail "no --api-front child of rtvisord ($D_PID)"; }
C sh -c "grep -E '^(Uid|CapEff|CapPrm|CapBnd|NoNewPrivs|Seccomp):' /proc/$FRONT/status; for t in /proc/$FRONT/task/*; do echo \"task \$(cat \$t/comm) \$(grep '^Seccomp:' \$t/status)\"; done" >"$work/front.txt"
python3 - "$work/front.txt" <<'PY' || { cat "$work/front.txt"; fail "the API front is not confined"; }
import sys
lines = open(sys.argv[1]).read().splitlines()
f = dict(l.split(":", 1) for l in lines if not l.startswith("task "))
assert f["Uid"].split() == ["1599999999"] * 4, f["Uid"]
for cap in ("CapEff", "CapPrm", "CapBnd"): assert int(f[cap].strip(), 16) == 0, (cap, f[cap])
assert f["NoNewPrivs"].strip() == "1" and f["Seccomp"].strip() == "2", f
tasks = [l for l in lines if l.startswith("task ")]
assert len(tasks) >= 3 and all(l.split()[-1] == "2" for l in tasks), tasks
PY
C test ! -e "/proc/$FRONT/root/etc/os-release" || fail "the API front sees the container's /etc"
sed 's/^/  /' "$work/front.txt"

step "a writable disk under /var/lib/rtvisor (the unit's StateDirectory)"
C rtvisorctl start disk >/dev/null || fail "rtvisorctl start disk"
disk_done() { journal_has "'INMATE virtio-blk PASS' in r.get('MESSAGE','')" -u rtvisord VM_NAME=disk; }
until_ok 20 disk_done || { J -u rtvisord VM_NAME=disk -o cat | tail -20; fail "the guest could not write its disk under /var/lib/rtvisor"; }
journal_has "'INMATE virtio-blk OK: wrote 64 sectors' in r.get('MESSAGE','')" -u rtvisord VM_NAME=disk || fail "no write confirmation from the disk guest"
say "  guest wrote, flushed and read back 64 sectors of /var/lib/rtvisor/images/disk.img"

step "systemctl reload after adding a definition"
sed 's/"name": "example"/"name": "second"/; s/vm=example/vm=second/' "$ROOT/etc/rtvisor/vms/example.json" >"$ROOT/etc/rtvisor/vms/second.json"
C systemctl reload rtvisord || fail "systemctl reload"
until_ok 10 vm_running second || { C rtvisorctl list; fail "second not running after reload"; }
journal_has "r.get('RTVISOR_EVENT')=='daemon-reloaded' and r.get('VMS_ADDED')=='second'" -u rtvisord || fail "no daemon-reloaded event"
until_ok 10 journal_has "'IDLE_READY cmdline=\"idle.heartbeat=2 vm=second\"' in r.get('MESSAGE','')" -u rtvisord VM_NAME=second || fail "second's console marker"
C rtvisorctl list | sed 's/^/  /'

step "kill -9 of one VMM: restarted per policy, the other VM undisturbed"
EX_PID=$(vm_field example pid); SE_PID=$(vm_field second pid)
C kill -9 "$EX_PID"
restarted_with_new_pid() { local p; p=$(vm_field "$1" pid); [ -n "$p" ] && [ "$p" != "$2" ] && [ "$(vm_field "$1" state)" = running ]; }
until_ok 15 restarted_with_new_pid example "$EX_PID" || { C rtvisorctl list; fail "example not restarted"; }
[ "$(vm_field example restarts)" = 1 ] || fail "example restarts != 1"
NEW_EX=$(vm_field example pid)
[ -n "$NEW_EX" ] || { C rtvisorctl list --json; fail "rtvisorctl list --json gave no pid for the restarted example"; }
[ "$NEW_EX" != "$EX_PID" ] || fail "example has the same pid after kill -9"
[ "$(vm_field second pid)" = "$SE_PID" ] || fail "second was disturbed"
journal_has "r.get('RTVISOR_EVENT')=='vm-restart-scheduled' and r.get('VM_NAME')=='example' and 'signal 9' in r.get('VM_EXIT_REASON','')" -u rtvisord || fail "no vm-restart-scheduled event"
say "  example: PID $EX_PID killed, restarted as $NEW_EX; second still PID $SE_PID"

step "rtvisorctl console (backlog from the VMM-owned socket)"
C rtvisorctl console second --timeout 1.5 </dev/null >"$work/console.out" 2>&1 || true
grep -q 'IDLE_READY cmdline="idle.heartbeat=2 vm=second"' "$work/console.out" || { cat "$work/console.out"; fail "console backlog"; }

step "pause / resume (SIGSTOP / SIGCONT of the VMM)"
C rtvisorctl pause second >/dev/null
[ "$(C ps -o stat= -p "$SE_PID" | cut -c1)" = T ] || fail "second's VMM not stopped"
[ "$(vm_field second state)" = paused ] || fail "state not paused"
C rtvisorctl resume second >/dev/null
[ "$(vm_field second state)" = running ] || fail "state not running after resume"

step "rtvisorctl stats / top under the unit: procfs, the VMM's counters, the VM cgroup's memory (absent without controllers)"
C rtvisorctl stats second --json >"$work/stats.json" 2>&1 || { cat "$work/stats.json"; fail "rtvisorctl stats second --json"; }
# systemd 252 enables no controllers for the VM cgroups (above): no memory.current there, and
# then the statistics must leave the cgroup numbers out, not report zero.
if C test -e /sys/fs/cgroup/system.slice/rtvisord.service/vm-second/memory.current; then cg_memory=1; else cg_memory=0; fi
python3 - "$work/stats.json" "$cg_memory" <<'PY' || { cat "$work/stats.json"; fail "rtvisorctl stats second --json"; }
import json, sys
s, cg = json.load(open(sys.argv[1])), sys.argv[2] == "1"
m, v = s["memory"], s["vcpus"]
assert s["state"] == "running" and s["pid"] and s["vmm_started_at"], s
assert m.get("resident_bytes", 0) > 0 and m["guest_bytes"] == 32 << 20, m
assert ("cgroup_current_bytes" in m) == cg, m
assert len(v) == 1 and v[0].get("cpu_s", 0) > 0 and sum(v[0]["exits"].values()) > 0, v
PY
C rtvisorctl top --once --interval 0.5 >"$work/top.txt" 2>&1 || { cat "$work/top.txt"; fail "rtvisorctl top --once"; }
grep -qE "^second +running +$SE_PID " "$work/top.txt" || { cat "$work/top.txt"; fail "rtvisorctl top: no row for second"; }
C rtvisorctl stats second | sed 's/^/  /'

step "CLI habits: status at a glance, one VM's log, idempotent start and stop, exit codes, error codes"
C rtvisorctl status >"$work/status.txt" || { cat "$work/status.txt"; fail "rtvisorctl status"; }
grep -q "^● rtvisord $(C rtvisorctl --version): active, PID $(C systemctl show -P MainPID rtvisord)" "$work/status.txt" \
	&& grep -qE "^● second +running +PID $SE_PID" "$work/status.txt" && grep -q "broken.json" "$work/status.txt" \
	|| { cat "$work/status.txt"; fail "rtvisorctl status"; }
sed 's/^/  /' "$work/status.txt" | head -12
C rtvisorctl logs second -n 10 >"$work/logs.txt" 2>&1 || { cat "$work/logs.txt"; fail "rtvisorctl logs second"; }
grep -q "IDLE_HEARTBEAT" "$work/logs.txt" && ! grep -q "vm=example" "$work/logs.txt" || { cat "$work/logs.txt"; fail "rtvisorctl logs second: not second's journal"; }
C rtvisorctl start second >"$work/again.txt" 2>&1 || { cat "$work/again.txt"; fail "starting a running VM must exit 0"; }
grep -qx "second: already running \[running\]" "$work/again.txt" || { cat "$work/again.txt"; fail "no note for an idempotent start"; }
[ "$(vm_field second pid)" = "$SE_PID" ] || fail "an idempotent start touched the VM"
if [ "$(vm_field disk state)" = stopped ]; then
	C rtvisorctl stop disk | grep -qx "disk: already stopped \[stopped\]" || fail "stopping a stopped VM must exit 0 with a note"
fi
set +e
C rtvisorctl start nosuch >/dev/null 2>"$work/err.txt"; rc_missing=$?
C rtvisorctl frobnicate >/dev/null 2>&1; rc_usage=$?
C rtvisorctl list --socket /nonexistent >/dev/null 2>&1; rc_unreachable=$?
set -e
[ "$rc_missing" = 1 ] && grep -q '(not-found, HTTP 404)' "$work/err.txt" || { cat "$work/err.txt"; fail "unknown VM: exit $rc_missing"; }
[ "$rc_usage" = 64 ] || fail "usage error: exit $rc_usage, not 64"
[ "$rc_unreachable" = 2 ] || fail "unreachable daemon: exit $rc_unreachable, not 2"
say "  exit 0 for start of a running VM (a note), 1 + code not-found for an unknown VM, 64 usage, 2 no daemon"
# edit: an editor that breaks the definition changes nothing; one that fixes a field installs it.
cp "$ROOT/etc/rtvisor/vms/disk.json" "$work/disk.before"
C env EDITOR="sed -i s/32/4/" rtvisorctl edit disk >"$work/edit.txt" 2>&1 && { cat "$work/edit.txt"; fail "edit installed an invalid definition"; }
grep -q '\$.memory_mib' "$work/edit.txt" && cmp -s "$work/disk.before" "$ROOT/etc/rtvisor/vms/disk.json" || { cat "$work/edit.txt"; fail "an invalid edit was not refused with its problem, or the file changed"; }
C env EDITOR="sed -i s/blk.seed=7/blk.seed=8/" rtvisorctl edit disk >"$work/edit.txt" 2>&1 || { cat "$work/edit.txt"; fail "rtvisorctl edit disk"; }
grep -q "blk.seed=8" "$ROOT/etc/rtvisor/vms/disk.json" && grep -q "disk: reloaded" "$work/edit.txt" || { cat "$work/edit.txt"; fail "edit did not install and reload"; }
say "  rtvisorctl edit: an invalid copy refused (file untouched), a valid one installed and reloaded"

# (After the kill -9 step: its exit reason needs the VMM to be the daemon's child, not re-adopted.)
if [ -n "$LOOP" ]; then
	step "a block device as disk under DevicePolicy=closed: the definition is refused, naming the drop-in"
	C rtvisorctl list --json >"$work/list.json"
	python3 - "$work/list.json" "$LOOP" <<'PY' || fail "blockdisk.json is not reported as denied by the device policy, with the drop-in"
import json, sys
d = json.load(open(sys.argv[1]))
assert "blockdisk" not in [v["name"] for v in d["vms"]], d["vms"]
[p] = [p for p in d["invalid_definitions"] if p["file"] == "/etc/rtvisor/vms/blockdisk.json"]
assert p["path"] == "$.disks[0].path", p
for part in (f"{sys.argv[2]} is a block device (7:", "the device cgroup denies (read-write access: Operation not permitted)",
             "DevicePolicy=closed", "block-devices.conf", "scripts/install.sh --drop-in block-devices",
             "systemctl daemon-reload && systemctl restart rtvisord"):
    assert part in p["reason"], (part, p["reason"])
print("  " + p["path"] + ": " + p["reason"])
PY
	journal_has "r.get('RTVISOR_EVENT')=='definition-invalid' and r.get('DEFINITION_FILE')=='/etc/rtvisor/vms/blockdisk.json' and 'block-devices.conf' in r.get('REASON','')" -u rtvisord \
		|| fail "no definition-invalid event naming the drop-in"

	step "the block-devices drop-in, daemon-reload and restart (guests keep running): the guest writes the loop device"
	EX_PID=$(vm_field example pid)
	C install -D -m 0644 /usr/share/rtvisor/systemd/rtvisord.service.d/block-devices.conf /etc/systemd/system/rtvisord.service.d/block-devices.conf
	C systemctl daemon-reload
	C systemctl restart rtvisord || fail "systemctl restart with the block-devices drop-in"
	[ "$(vm_field example pid)" = "$EX_PID" ] || fail "example did not keep running across the restart"
	C rtvisorctl start blockdisk >/dev/null || fail "rtvisorctl start blockdisk with the drop-in"
	blk_done() { journal_has "'INMATE virtio-blk PASS' in r.get('MESSAGE','')" -u rtvisord VM_NAME=blockdisk; }
	until_ok 20 blk_done || { J -u rtvisord VM_NAME=blockdisk -o cat | tail -20; fail "the guest could not write $LOOP"; }
	# What the guest wrote is in the loop device's backing file on the host (the inmate's pattern).
	python3 - "$work/blk.img" <<'PY' || fail "the backing file of $LOOP does not hold the guest's pattern"
import struct, sys
M = 0xffffffff
def fmix32(x):
    x ^= x >> 16; x = (x * 0x85ebca6b) & M; x ^= x >> 13; x = (x * 0xc2b2ae35) & M; x ^= x >> 16
    return x
data = open(sys.argv[1], "rb").read(64 * 512)
for s in range(64):
    for k in range(128):
        want = fmix32(9 ^ ((s * 0x9E3779B1) & M) ^ ((k * 0x85EBCA77) & M))
        got = struct.unpack_from("<I", data, s * 512 + k * 4)[0]
        assert got == want, (s, k, hex(got), hex(want))
PY
	say "  $LOOP: refused without the drop-in; with it the guest wrote 64 sectors, found in the backing file on the host"
fi

step "rtvisorctl upgrade second: a new rtvisor-vmm takes the running guest over, its memory handed over, under the unit's sandbox"
SE_OLD=$(vm_field second pid)
C rtvisorctl upgrade second >"$work/upgrade.txt" 2>&1 || { cat "$work/upgrade.txt"; J -u rtvisord | tail -30; fail "rtvisorctl upgrade second"; }
grep -q "memory handed over" "$work/upgrade.txt" || { cat "$work/upgrade.txt"; fail "the upgrade copied the memory"; }
SE_NEW=$(vm_field second pid)
[ -n "$SE_NEW" ] && [ "$SE_NEW" != "$SE_OLD" ] && vm_running second || { C rtvisorctl list; fail "second is not running under a new VMM after the upgrade"; }
journal_has "r.get('RTVISOR_EVENT')=='vm-upgraded' and r.get('VM_OLD_PID')=='$SE_OLD'" -u rtvisord || fail "no vm-upgraded event"
since=$(C date +%s)
until_ok 10 journal_has "'IDLE_HEARTBEAT' in r.get('MESSAGE','') and r.get('_PID')=='$SE_NEW' and int(r['__REALTIME_TIMESTAMP']) >= ${since}000000" -u rtvisord VM_NAME=second \
	|| fail "no heartbeat from the new VMM"
say "  second: VMM $SE_OLD -> $SE_NEW ($(sed -n 2p "$work/upgrade.txt" | sed 's/^ *//'))"

step "TCP migrations need the migration-tcp drop-in: refused under the shipped unit, naming it; installed for the restart below"
if C rtvisorctl migrate-receive --listen tcp:127.0.0.1:7999 --timeout 2 >"$work/tcp.txt" 2>&1; then cat "$work/tcp.txt"; fail "rtvisord listened on TCP under RestrictAddressFamilies=AF_UNIX AF_NETLINK"; fi
grep -q "migration-tcp drop-in" "$work/tcp.txt" || { cat "$work/tcp.txt"; fail "the TCP refusal does not name the drop-in"; }
C install -D -m 0644 /usr/share/rtvisor/systemd/rtvisord.service.d/migration-tcp.conf /etc/systemd/system/rtvisord.service.d/migration-tcp.conf
C systemctl daemon-reload

step "systemctl restart rtvisord: guests keep running and are re-adopted; rtvisor-guests is not touched"
OLD_MAIN=$(C systemctl show -P MainPID rtvisord)
EX_PID=$(vm_field example pid); SE_PID=$(vm_field second pid)
GUESTS_SINCE=$(C systemctl show -P ActiveEnterTimestampMonotonic rtvisor-guests)
C systemctl restart rtvisord || fail "systemctl restart"
[ "$(C systemctl show -P ActiveEnterTimestampMonotonic rtvisor-guests)" = "$GUESTS_SINCE" ] && [ "$(C systemctl is-active rtvisor-guests)" = active ] \
	|| fail "restarting rtvisord restarted or stopped rtvisor-guests.service"
if journal_has "r.get('RTVISOR_EVENT')=='guests-shutdown'" -u rtvisord; then fail "a daemon restart shut the guests down"; fi
[ "$(C systemctl is-active rtvisord)" = active ] || fail "is-active after restart"
NEW_MAIN=$(C systemctl show -P MainPID rtvisord)
[ "$NEW_MAIN" != "$OLD_MAIN" ] || fail "MainPID unchanged"
[ "$(vm_field example pid)" = "$EX_PID" ] && [ "$(vm_field second pid)" = "$SE_PID" ] || { C rtvisorctl list; fail "guests did not survive the daemon restart"; }
vm_running example && vm_running second || fail "guests not running after restart"
journal_has "r.get('RTVISOR_EVENT')=='vm-adopted' and r.get('VM_NAME')=='second' and r.get('_PID')=='$NEW_MAIN'" -u rtvisord || fail "no vm-adopted event"
C systemctl show -P StatusText rtvisord | grep -q "2 VMs running" || fail "StatusText after restart"
say "  rtvisord $OLD_MAIN -> $NEW_MAIN; VMMs $EX_PID, $SE_PID kept running"
C rtvisorctl migrate-receive --listen tcp:127.0.0.1:7999 --timeout 2 >"$work/tcp.txt" 2>&1 \
	|| { cat "$work/tcp.txt"; fail "with the migration-tcp drop-in rtvisord cannot listen on TCP"; }
say "  with the migration-tcp drop-in: $(cat "$work/tcp.txt")"
# Console output after the restart still reaches the journal (the VMM sends it, not the daemon).
since=$(C date +%s)
until_ok 10 journal_has "'IDLE_HEARTBEAT' in r.get('MESSAGE','') and int(r['__REALTIME_TIMESTAMP']) >= ${since}000000" -u rtvisord VM_NAME=second || fail "no heartbeat after restart"

step "a changed definition is pending until the VM restarts; rtvisorctl reset applies it"
sed -i 's/"memory_mib": 32/"memory_mib": 48/' "$ROOT/etc/rtvisor/vms/second.json"
C systemctl reload rtvisord
second_pending() { [ "$(vm_field second pending_change)" = True ]; }
until_ok 10 second_pending || { C rtvisorctl list --json; fail "second not pending after its definition changed"; }
journal_has "r.get('RTVISOR_EVENT')=='definition-pending' and r.get('VM_NAME')=='second'" -u rtvisord || fail "no definition-pending event"
[ "$(vm_field second pid)" = "$SE_PID" ] || fail "a definition change restarted the VM"
C rtvisorctl inspect second | grep -q "Memory: *32 MiB" || fail "inspect should show the running definition (32 MiB)"
C rtvisorctl reset second >/dev/null
until_ok 10 restarted_with_new_pid second "$SE_PID" || { C rtvisorctl list; fail "reset"; }
[ "$(vm_field second pending_change)" = False ] || fail "still pending after reset"
C rtvisorctl inspect second | grep -q "Memory: *48 MiB" || fail "reset did not apply the new definition"

step "validate through the API"
C rtvisorctl validate /etc/rtvisor/vms/broken.json >"$work/validate.out" 2>&1 && fail "validate accepted broken.json"
grep -q '\$.memory_mib' "$work/validate.out" || fail "validate output"
C rtvisorctl validate /etc/rtvisor/vms/second.json >/dev/null || fail "validate rejected second.json"

if [ $linux = 1 ]; then
	step "minimal Linux VM (boots with its i8042 keyboard driver and stays up under busybox init)"
	# The container has no /sys/module, so the VMM's "auto" CPU template cannot see that this
	# host's KVM emulates guest ring-0 code (kvm_pvm); name the template it would pick.
	template=auto
	[ -e /sys/module/kvm_pvm ] && template=emulating-kvm
	cat >"$ROOT/etc/rtvisor/vms/linux.json" <<JSON
{ "name": "linux", "vcpus": 1, "memory_mib": 128, "kernel": "/var/lib/rtvisor/guest-linux/vmlinux",
  "initrd": "/var/lib/rtvisor/guest-linux/initramfs.cpio",
  "cmdline": "console=ttyS0 panic=-1 mitigations=off nopti rodata=off emukvm.pvmsys emukvm.exit_port=0xf4 rtvisor.service",
  "cpu": { "template": "$template" }, "autostart": true, "restart": "no", "stop_timeout_s": 100 }
JSON
	T=$(ts)
	C systemctl reload rtvisord
	linux_up() { journal_has "'RTVISOR_SERVICE_READY' in r.get('MESSAGE','')" -u rtvisord VM_NAME=linux; }
	until_ok 400 linux_up || { J -u rtvisord VM_NAME=linux | tail -20; fail "Linux guest did not reach RTVISOR_SERVICE_READY in 400 s"; }
	# The keyboard driver must be bound before the stop step sends Ctrl-Alt-Del (serio probes
	# asynchronously, so this may come after init started).
	kbd_bound() { journal_has "'AT Translated Set 2 keyboard' in r.get('MESSAGE','')" -u rtvisord VM_NAME=linux; }
	until_ok 120 kbd_bound || { J -u rtvisord VM_NAME=linux | grep -i -E "i8042|serio|atkbd|input" ; fail "Linux guest has no AT keyboard"; }
	[ "$(vm_field linux state)" = running ] || { C rtvisorctl list; fail "linux is not running"; }
	say "  Linux guest up (busybox init, AT keyboard bound) in $(el "$T")"
fi

step "watchdog (WatchdogSec=3s) fed: no watchdog restarts"
[ "$(C systemctl show -P NRestarts rtvisord)" = 0 ] || fail "rtvisord was restarted by systemd (watchdog?)"
J -u rtvisord >"$work/journal.txt"
grep -qi "watchdog timeout" "$work/journal.txt" && fail "watchdog timeout in the journal"
grep -m1 "watchdog: pinging" "$work/journal.txt" | sed 's/^/  /'

step "no API front died during the run (every request above went through fronts that stayed up)"
if journal_has "r.get('RTVISOR_EVENT')=='api-front-ended'" -u rtvisord; then
	J -u rtvisord | grep -i 'API front' | tail -5; fail "an API front process ended under the unit"
fi

step "systemctl stop rtvisord: the daemon stops, the guests keep running (rtvisor-guests stays active)"
EX_PID=$(vm_field example pid); SE_PID=$(vm_field second pid)
LX_PID=; [ $linux = 1 ] && LX_PID=$(vm_field linux pid)
C systemctl stop rtvisord || fail "systemctl stop rtvisord"
[ "$(C systemctl is-active rtvisord)" = inactive ] || fail "rtvisord not inactive after stop"
[ "$(C systemctl is-active rtvisor-guests)" = active ] || fail "stopping rtvisord stopped rtvisor-guests"
for p in $EX_PID $SE_PID $LX_PID; do C kill -0 "$p" || fail "VMM $p did not survive systemctl stop rtvisord"; done
journal_has "r.get('RTVISOR_EVENT')=='daemon-stopping' and 'keep running' in r.get('MESSAGE','')" -u rtvisord || fail "no daemon-stopping event"
say "  VMMs $(echo $EX_PID $SE_PID $LX_PID) kept running without a daemon"

step "systemctl start rtvisord: the same VMMs re-adopted"
C systemctl start rtvisord || fail "systemctl start after stop"
[ "$(vm_field example pid)" = "$EX_PID" ] && [ "$(vm_field second pid)" = "$SE_PID" ] || { C rtvisorctl list; fail "not re-adopted after stop/start"; }
vm_running example && vm_running second || fail "guests not running after stop/start"

step "systemctl stop rtvisor-guests (host shutdown's first step): every guest shut down cleanly (Ctrl-Alt-Del), the daemon stays"
T=$(ts)
# Bounded by the definitions (the Linux VM's stop_timeout_s is 100), not by C's 120 s.
timeout 300 nsenter -t "$LEADER" -m -u -i -n -p -C systemctl stop rtvisor-guests || { C journalctl -b -u rtvisor-guests --no-pager | tail; fail "systemctl stop rtvisor-guests"; }
[ "$(C systemctl is-active rtvisor-guests)" = inactive ] || fail "rtvisor-guests not inactive after stop"
[ "$(C systemctl is-active rtvisord)" = active ] || fail "rtvisord stopped with the guests"
C pgrep -x rtvisor-vmm >/dev/null && { C ps -ef | grep rtvisor; fail "rtvisor-vmm processes left"; }
for vm in example second; do
	journal_has "'IDLE_CTRL_ALT_DEL' in r.get('MESSAGE','')" -u rtvisord VM_NAME=$vm || fail "$vm did not see Ctrl-Alt-Del"
	journal_has "r.get('RTVISOR_EVENT')=='vm-stopped' and r.get('VM_NAME')=='$vm' and r.get('VM_EXIT_REASON')=='guest powered off'" -u rtvisord || fail "$vm not powered off cleanly"
done
if [ $linux = 1 ]; then
	# Linux's own shutdown path ran: busybox init got SIGINT from the keyboard driver's
	# Ctrl-Alt-Del, ran its shutdown sequence, and the kernel powered off.
	for line in "The system is going down NOW" "Requesting system poweroff" "reboot: Power down"; do
		journal_has "'$line' in r.get('MESSAGE','')" -u rtvisord VM_NAME=linux || { J -u rtvisord VM_NAME=linux | tail -20; fail "linux console lacks '$line'"; }
	done
	journal_has "r.get('RTVISOR_EVENT')=='vm-stopped' and r.get('VM_NAME')=='linux' and r.get('VM_EXIT_REASON')=='guest powered off'" -u rtvisord || { J -u rtvisord VM_NAME=linux | tail -20; fail "linux not powered off cleanly"; }
	say "  Linux guest shut down through busybox init and powered off"
fi
journal_has "r.get('RTVISOR_EVENT')=='guests-shutdown'" -u rtvisord || fail "no guests-shutdown event"
J -u rtvisor-guests -o cat >"$work/guests.txt"
grep -q "every guest has ended" "$work/guests.txt" || { cat "$work/guests.txt"; fail "rtvisorctl shutdown-guests did not report every guest ended"; }
say "  stopped in $(el "$T"); rtvisorctl shutdown-guests said:"
grep -E "^(example|second|linux): " "$work/guests.txt" | sed 's/^/    /'

step "systemctl start rtvisor-guests: the autostart guests come back"
# The Linux VM (autostart) would boot again for minutes: its definition goes first.
rm -f "$ROOT/etc/rtvisor/vms/linux.json"
C systemctl reload rtvisord
C systemctl start rtvisor-guests || fail "systemctl start rtvisor-guests"
vm_running example && vm_running second || { C rtvisorctl list; fail "the autostart guests did not come back"; }
[ "$(vm_field disk state)" = stopped ] || fail "a VM without autostart was started"
EX_PID=$(vm_field example pid); SE_PID=$(vm_field second pid)

if [ "${KEEP:-0}" = 1 ]; then
	say "SKIP (host shutdown and uninstall): KEEP=1 keeps the container running"
else
	step "host shutdown (systemctl poweroff of the container): rtvisor-guests stops the guests before rtvisord stops"
	since=$(C date +%s)
	C systemctl poweroff || true
	for _ in $(seq 1200); do kill -0 "$NSPAWN" 2>/dev/null || break; sleep 0.1; done
	kill -0 "$NSPAWN" 2>/dev/null && fail "the container did not power off within 120 s"
	wait "$NSPAWN" 2>/dev/null || true
	NSPAWN=
	# The container's persistent journal, read on the host: the order of what happened.
	journalctl -D "$ROOT/var/log/journal" --no-pager -o json --since "@$since" >"$work/shutdown.json"
	python3 - "$work/shutdown.json" <<'PY' || fail "host shutdown did not shut the guests down before rtvisord stopped"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def first(pred, what):
    for i, r in enumerate(rows):
        if pred(r): return i
    sys.exit(f"not in the journal: {what}")
asked = first(lambda r: r.get("RTVISOR_EVENT") == "guests-shutdown", "guests-shutdown")
ends = [first(lambda r, vm=vm: r.get("RTVISOR_EVENT") == "vm-stopped" and r.get("VM_NAME") == vm
              and r.get("VM_EXIT_REASON") == "guest powered off", f"{vm} powered off") for vm in ("example", "second")]
cad = [first(lambda r, vm=vm: "IDLE_CTRL_ALT_DEL" in r.get("MESSAGE", "") and r.get("VM_NAME") == vm, f"{vm} Ctrl-Alt-Del") for vm in ("example", "second")]
stopping = first(lambda r: r.get("RTVISOR_EVENT") == "daemon-stopping", "daemon-stopping")
assert asked < min(cad) and max(ends) < stopping, (asked, cad, ends, stopping)
assert rows[stopping]["MESSAGE"].startswith("rtvisord stopping (SIGTERM): 0 guest(s) keep running"), rows[stopping]["MESSAGE"]
print("  guests-shutdown, Ctrl-Alt-Del, both powered off, then:", rows[stopping]["MESSAGE"])
PY

	step "boot again: rtvisord comes up enabled, the autostart guests with it"
	boot
	until_ok 20 vm_running example || { C rtvisorctl list; fail "example did not start at boot (rtvisord enabled by the package)"; }

	step "apt-get purge rtvisor: what the package made goes; your definitions, images and the group stay"
	C sh -c 'DEBIAN_FRONTEND=noninteractive apt-get purge -y -q rtvisor' >"$work/purge.log" 2>&1 || { cat "$work/purge.log"; fail "apt-get purge rtvisor"; }
	C pgrep -x rtvisor-vmm >/dev/null && { C ps -ef | grep rtvisor; fail "rtvisor-vmm processes left after purge (prerm stops rtvisor-guests)"; }
	journal_has "r.get('RTVISOR_EVENT')=='guests-shutdown'" -u rtvisord || fail "removal did not shut the guests down"
	C dpkg -s rtvisor >/dev/null 2>&1 && fail "rtvisor still installed"
	left=$(cd "$ROOT" && find usr lib etc var/lib run -path '*rtvisor*' 2>/dev/null | LC_ALL=C sort | tr '\n' ' ')
	want="etc/rtvisor etc/rtvisor/vms etc/rtvisor/vms/blockdisk.json etc/rtvisor/vms/broken.json etc/rtvisor/vms/disk.json etc/rtvisor/vms/second.json"
	[ -n "$LOOP" ] || want=${want/ etc\/rtvisor\/vms\/blockdisk.json/}
	want="$want etc/systemd/system/rtvisord.service.d $(cd "$ROOT" && find etc/systemd/system/rtvisord.service.d var/lib/rtvisor | LC_ALL=C sort | tr '\n' ' ')"
	[ "$left" = "$(echo $want | tr ' ' '\n' | LC_ALL=C sort -u | tr '\n' ' ')" ] || { echo "left: $left"; echo "want: $want"; fail "apt-get purge left other files"; }
	grep -q '^rtvisor:' "$ROOT/etc/group" || fail "purge removed the group rtvisor (files may belong to it)"
	grep -q "kept /etc/rtvisor/vms" "$work/purge.log" || { cat "$work/purge.log"; fail "purge did not say what it kept"; }
	say "  left: your definitions (broken, disk, second$([ -n "$LOOP" ] && echo ", blockdisk")), /var/lib/rtvisor (images), the drop-ins you made, the group"
	C systemctl poweroff || true
	for _ in $(seq 1200); do kill -0 "$NSPAWN" 2>/dev/null || break; sleep 0.1; done
fi

say "ALL SYSTEMD E2E CHECKS PASSED in $(el "$T_ALL")"
if [ "${KEEP:-0}" = 1 ]; then
	echo "container kept: nsenter -t $LEADER -m -u -i -n -p -C bash; stop: kill -TERM $NSPAWN"
fi
