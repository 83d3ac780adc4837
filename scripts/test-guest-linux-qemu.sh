#!/usr/bin/env bash
# Boot the built rtvisor Linux guest under QEMU TCG (software emulation, no
# KVM) with 1 and 2 vCPUs and check what it prints:
#   RTVISOR_INIT_MARKER, the uname check (RTVISOR_CHECK_BEGIN/END uname with
#   the kernel release), RTVISOR_INIT_DONE, power-off through the emukvm
#   exit port (QEMU isa-debug-exit: exit status 1), and with 2 vCPUs
#   "smp: Brought up 1 node, 2 CPUs".
# Exit 0 on success; otherwise prints the reason and the end of the console.
# Takes a few seconds; does not build (run scripts/build-guest-kernel.sh
# first, or set RTVISOR_GUEST_BUILD=1 to build when missing, 10+ minutes).
# RTVISOR_GUEST_DIR=<dir> tests another build output directory.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROG=test-guest-linux-qemu
CMDLINE="console=ttyS0 panic=-1 noxsave clearcpuid=popcnt,cx16,rdrand,rdseed,smap mitigations=off nopti rodata=off emukvm.pvmsys emukvm.exit_port=0xf4 rtvisor.check=uname"
TIMEOUT=${RTVISOR_QEMU_TIMEOUT:-60}

fail() { echo "$PROG: FAIL: $*" >&2; exit 1; }

command -v qemu-system-x86_64 >/dev/null ||
	fail "qemu-system-x86_64 not found (apt-get install qemu-system-x86)"

if [ -n "${RTVISOR_GUEST_DIR:-}" ]; then
	DIR=$RTVISOR_GUEST_DIR
elif DIR=$("$REPO/scripts/build-guest-kernel.sh" --print-dir 2>/dev/null); then
	:
elif [ "${RTVISOR_GUEST_BUILD:-0}" = 1 ]; then
	DIR=$("$REPO/scripts/build-guest-kernel.sh" | tail -n1) || fail "guest build failed"
else
	fail "the guest for this checkout is not built${DIR:+ (expected in $DIR)}: run scripts/build-guest-kernel.sh (or set RTVISOR_GUEST_BUILD=1)"
fi
for f in vmlinux initramfs.cpio manifest.txt; do
	[ -s "$DIR/$f" ] || fail "missing $DIR/$f"
done
KREL=$(sed -n 's/^kernel_release: //p' "$DIR/manifest.txt")
[ -n "$KREL" ] || fail "no kernel_release in $DIR/manifest.txt"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# boot SMP: runs QEMU, leaves the console in $WORK/console-SMP.txt
boot() {
	local smp=$1 out=$WORK/console-$1.txt start end rc
	start=$(date +%s.%N)
	timeout "$TIMEOUT" qemu-system-x86_64 -M microvm,acpi=off -accel tcg -m 128 -smp "$smp" \
		-nographic -no-reboot -kernel "$DIR/vmlinux" -initrd "$DIR/initramfs.cpio" \
		-device isa-debug-exit,iobase=0xf4,iosize=1 -append "$CMDLINE" \
		</dev/null >"$out.raw" 2>&1
	rc=$?
	end=$(date +%s.%N)
	tr -d '\r' <"$out.raw" >"$out"
	BOOT_RC=$rc
	BOOT_SECONDS=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
}

check_boot() {
	local smp=$1 out=$WORK/console-$1.txt reason=
	if [ "$BOOT_RC" = 124 ]; then
		reason="timed out after ${TIMEOUT}s"
	elif ! grep -qx 'RTVISOR_INIT_MARKER' "$out"; then
		reason="no RTVISOR_INIT_MARKER line (kernel did not reach /init)"
	elif ! grep -qx 'RTVISOR_CHECK_BEGIN uname' "$out"; then
		reason="no 'RTVISOR_CHECK_BEGIN uname' (rtvisor.check= not seen by /init)"
	elif ! grep -qxF "$KREL" "$out"; then
		reason="uname check did not print the kernel release '$KREL'"
	elif ! grep -qx 'RTVISOR_CHECK_END uname status=0' "$out"; then
		reason="no 'RTVISOR_CHECK_END uname status=0'"
	elif ! grep -qx 'RTVISOR_INIT_DONE' "$out"; then
		reason="no RTVISOR_INIT_DONE line"
	elif [ "$BOOT_RC" != 1 ]; then
		reason="QEMU exit status $BOOT_RC, expected 1 (power-off via emukvm.exit_port=0xf4)"
	elif [ "$smp" -gt 1 ] && ! grep -q "smp: Brought up 1 node, $smp CPUs" "$out"; then
		reason="no 'smp: Brought up 1 node, $smp CPUs'"
	fi
	if [ -n "$reason" ]; then
		echo "$PROG: FAIL (-smp $smp, ${BOOT_SECONDS}s): $reason" >&2
		echo "$PROG: last console lines:" >&2
		tail -n 30 "$out" | sed 's/^/  | /' >&2
		return 1
	fi
	echo "$PROG: ok: -smp $smp booted to RTVISOR_INIT_DONE and powered off in ${BOOT_SECONDS}s"
}

status=0
for smp in 1 2; do
	boot "$smp"
	check_boot "$smp" || status=1
done
[ $status = 0 ] && echo "$PROG: PASS ($DIR)"
exit $status
