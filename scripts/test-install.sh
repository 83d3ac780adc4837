#!/usr/bin/env bash
# Tests scripts/install.sh without touching this system: installs prebuilt binaries into
# staging trees (--destdir) and a scratch root (--root), compares the file lists with what the
# script documents, checks modes and the paths inside the units, then uninstalls and checks
# that nothing is left behind (except what uninstall keeps on purpose: a changed definition,
# disk images, the group). Every compiler on PATH is replaced by a stub that fails the test:
# --binaries must not build anything.
#
#   scripts/test-install.sh                 binaries from .build/debug (swift build)
#   RTVISOR_BINARIES=DIR scripts/test-install.sh
#
# --root needs systemd-sysusers and systemd-tmpfiles (Debian: systemd); not root itself.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
say() { printf '== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

built=${RTVISOR_BINARIES:-$repo/.build/debug}
for p in rtvisord rtvisorctl rtvisor-vmm; do
	[ -x "$built/$p" ] || fail "$built/$p missing: build first (swift build), or set RTVISOR_BINARIES"
done
inmates=$("$repo/scripts/build-inmates.sh" | tail -n 1)

work=$(mktemp -d /tmp/rtvisor-install-test.XXXXXX)
trap 'rm -rf "$work"' EXIT
# A release as users get it: the three executables and the example's inmate.
mkdir "$work/release"
cp "$built/rtvisord" "$built/rtvisorctl" "$built/rtvisor-vmm" "$inmates/idle.elf" "$work/release/"
# Compiler stubs ahead of everything on PATH.
mkdir "$work/stubs"
for c in swift swiftc cc gcc clang make ld; do
	printf '#!/bin/sh\necho "compiler called: %s $*" >>"%s"\nexit 1\n' "$c" "$work/compiler-calls" >"$work/stubs/$c"
	chmod +x "$work/stubs/$c"
done
install_sh() { PATH="$work/stubs:$PATH" "$repo/scripts/install.sh" "$@"; }
# Every file and symlink under a tree, relative, sorted.
files() { (cd "$1" && find . -mindepth 1 \( -type f -o -type l \) | sed 's|^\./|/|' | LC_ALL=C sort); }
expect_files() { # TREE, then the expected paths
	local tree=$1; shift
	diff <(printf '%s\n' "$@" | LC_ALL=C sort) <(files "$tree") >"$work/diff" || { cat "$work/diff"; fail "file list of $tree (< expected, > found)"; }
}
mode() { stat -c %a "$1"; }

say "--destdir: the documented file list under /usr/local, nothing else"
stage=$work/stage
install_sh --destdir "$stage" --binaries "$work/release" 2>"$work/log" || { cat "$work/log"; fail "install --destdir"; }
p=/usr/local
expect_files "$stage" \
	$p/bin/rtvisord $p/bin/rtvisorctl $p/bin/rtvisor-vmm \
	$p/lib/systemd/system/rtvisord.service $p/lib/systemd/system/rtvisor-guests.service \
	$p/lib/sysusers.d/rtvisor.conf $p/lib/tmpfiles.d/rtvisor.conf \
	$p/share/rtvisor/inmates/idle.elf $p/share/rtvisor/examples/example.json \
	$p/share/rtvisor/systemd/rtvisord.service.d/block-devices.conf $p/share/rtvisor/systemd/rtvisord.service.d/vfio.conf \
	$p/share/rtvisor/systemd/rtvisord.service.d/metrics-tcp.conf $p/share/rtvisor/systemd/rtvisord.service.d/migration-tcp.conf \
	$p/share/bash-completion/completions/rtvisorctl $p/share/zsh/site-functions/_rtvisorctl \
	$p/share/fish/vendor_completions.d/rtvisorctl.fish \
	/etc/rtvisor/vms/example.json
for b in rtvisord rtvisorctl rtvisor-vmm; do [ "$(mode "$stage$p/bin/$b")" = 755 ] || fail "$b mode $(mode "$stage$p/bin/$b")"; done
while read -r f; do
	case $f in $p/bin/*) ;; *) [ "$(mode "$stage$f")" = 644 ] || fail "$f mode $(mode "$stage$f")" ;; esac
done < <(files "$stage")
grep -qx "ExecStart=$p/bin/rtvisord" "$stage$p/lib/systemd/system/rtvisord.service" || fail "rtvisord.service ExecStart"
grep -qx "ExecStop=$p/bin/rtvisorctl shutdown-guests" "$stage$p/lib/systemd/system/rtvisor-guests.service" || fail "rtvisor-guests.service ExecStop"
grep -qx "ExecStart=-$p/bin/rtvisorctl start-guests" "$stage$p/lib/systemd/system/rtvisor-guests.service" || fail "rtvisor-guests.service ExecStart"
grep -qx 'g rtvisor -' "$stage$p/lib/sysusers.d/rtvisor.conf" || fail "sysusers entry"
grep -q '"kernel": "/usr/local/share/rtvisor/inmates/idle.elf"' "$stage/etc/rtvisor/vms/example.json" || fail "example kernel path"
grep -q 'complete -o filenames -F _rtvisorctl rtvisorctl' "$stage$p/share/bash-completion/completions/rtvisorctl" || fail "bash completion"
grep -q '#compdef rtvisorctl' "$stage$p/share/zsh/site-functions/_rtvisorctl" || fail "zsh completion"
grep -q "complete -c 'rtvisorctl'" "$stage$p/share/fish/vendor_completions.d/rtvisorctl.fish" || fail "fish completion"
grep -q 'shutdown-guests' "$stage$p/share/bash-completion/completions/rtvisorctl" || fail "bash completion lacks shutdown-guests"
[ ! -e "$work/compiler-calls" ] || { cat "$work/compiler-calls"; fail "install --binaries ran a compiler"; }
say "  $(files "$stage" | wc -l) files, no compiler run"

say "--uninstall --destdir: nothing left"
install_sh --uninstall --destdir "$stage" 2>"$work/log" || { cat "$work/log"; fail "uninstall --destdir"; }
[ -z "$(find "$stage" -mindepth 1)" ] || { find "$stage" -mindepth 1; fail "left behind in the staging tree"; }

say "--prefix /usr --drop-in block-devices --no-example"
stage=$work/stage-usr
install_sh --destdir "$stage" --prefix /usr --binaries "$work/release" --drop-in block-devices --no-example 2>"$work/log" \
	|| { cat "$work/log"; fail "install --prefix /usr"; }
p=/usr
expect_files "$stage" \
	$p/bin/rtvisord $p/bin/rtvisorctl $p/bin/rtvisor-vmm \
	$p/lib/systemd/system/rtvisord.service $p/lib/systemd/system/rtvisor-guests.service \
	$p/lib/systemd/system/rtvisord.service.d/block-devices.conf \
	$p/lib/sysusers.d/rtvisor.conf $p/lib/tmpfiles.d/rtvisor.conf \
	$p/share/rtvisor/systemd/rtvisord.service.d/block-devices.conf $p/share/rtvisor/systemd/rtvisord.service.d/vfio.conf \
	$p/share/rtvisor/systemd/rtvisord.service.d/metrics-tcp.conf $p/share/rtvisor/systemd/rtvisord.service.d/migration-tcp.conf \
	$p/share/bash-completion/completions/rtvisorctl $p/share/zsh/site-functions/_rtvisorctl \
	$p/share/fish/vendor_completions.d/rtvisorctl.fish
grep -qx "ExecStart=/usr/bin/rtvisord" "$stage/usr/lib/systemd/system/rtvisord.service" || fail "ExecStart under --prefix /usr"
grep -qx 'DeviceAllow=block-\* rw' "$stage/usr/lib/systemd/system/rtvisord.service.d/block-devices.conf" || fail "block-devices drop-in"
install_sh --uninstall --destdir "$stage" --prefix /usr 2>"$work/log" || { cat "$work/log"; fail "uninstall --prefix /usr"; }
[ -z "$(find "$stage" -mindepth 1)" ] || { find "$stage" -mindepth 1; fail "left behind under --prefix /usr"; }

if install_sh --destdir "$work/x" --binaries "$work/release" --drop-in nonsense 2>"$work/log"; then fail "an unknown drop-in was accepted"; fi
grep -q "no drop-in nonsense (there are: block-devices metrics-tcp migration-tcp vfio" "$work/log" || { cat "$work/log"; fail "unknown drop-in message"; }

if command -v systemd-sysusers >/dev/null && command -v systemd-tmpfiles >/dev/null; then
	say "--root: the group and directories from sysusers.d/tmpfiles.d, inside the root"
	root=$work/root
	mkdir -p "$root/etc"
	printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
	printf 'root:x:0:\n' >"$root/etc/group"
	install_sh --root "$root" --binaries "$work/release" 2>"$work/log" || { cat "$work/log"; fail "install --root"; }
	grep -q '^rtvisor:x:[0-9]*:$' "$root/etc/group" || { cat "$root/etc/group"; fail "group rtvisor not created in the root"; }
	[ "$(mode "$root/etc/rtvisor/vms")" = 755 ] && [ "$(mode "$root/var/lib/rtvisor")" = 750 ] || fail "tmpfiles directories"
	# A definition the admin changed and a disk image stay; everything installed goes.
	sed -i 's/idle.heartbeat=60/idle.heartbeat=5/' "$root/etc/rtvisor/vms/example.json"
	truncate -s 1M "$root/var/lib/rtvisor/disk.img"
	install_sh --uninstall --root "$root" 2>"$work/log" || { cat "$work/log"; fail "uninstall --root"; }
	grep -q "kept /etc/rtvisor/vms/example.json (changed since it was installed)" "$work/log" || { cat "$work/log"; fail "changed example not reported"; }
	# The account files (and systemd-sysusers' backups of them, "FILE-") keep the group.
	left=$(files "$root" | grep -v -E -x '/etc/(passwd|group|gshadow|shadow)-?|/etc/\.pwd\.lock' || true)
	[ "$left" = "$(printf '/etc/rtvisor/vms/example.json\n/var/lib/rtvisor/disk.img')" ] || { echo "$left"; fail "left behind in the root"; }
	[ -z "$(find "$root/usr" -type f 2>/dev/null)" ] || fail "files left under usr"
else
	say "SKIP --root: systemd-sysusers/systemd-tmpfiles not installed"
fi
say "install.sh: ALL CHECKS PASSED"
