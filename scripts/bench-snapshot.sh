#!/usr/bin/env bash
# Snapshot, restore and clone (issue 18), rtvisor vs QEMU microvm (migration to a file), same guests:
# restore-to-first-output and restore-to-console-responsive vs cold boot for the `ticker` inmate
# and the minimal Linux (booted once per VMM, restored many times), snapshot time and size vs guest
# RAM, N = 1..8 clones started at once (time, PSS). Appends to docs/benchmarks.md. Needs root and
# /dev/kvm; the Linux part takes minutes here (one boot per VMM).
#   scripts/bench-snapshot.sh [--runs N] [--no-linux] [--no-qemu-linux] [--no-out] [--bin-dir DIR] [--keep]
# --no-linux: skip the minimal Linux. --no-qemu-linux: boot Linux under rtvisor only.
# --no-out: print the results, append nothing. --bin-dir: take rtvisor-vmm from DIR instead of
# building it (static release, as bench-boot.sh builds it). --keep: keep the snapshots and logs.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
export PATH=/opt/swift/usr/bin:$PATH
for pkg in build-essential qemu-system-x86 python3; do
	dpkg -s "$pkg" >/dev/null 2>&1 || { apt-get update -q; apt-get install -y -q "$pkg"; }
done
bin_dir=
linux=1
out=(--out docs/benchmarks.md)
args=()
while [ $# -gt 0 ]; do
	case $1 in
	--no-linux) linux=0 ;;
	--no-out) out=() ;;
	--bin-dir) bin_dir=$2; shift ;;
	--bin-dir=*) bin_dir=${1#--bin-dir=} ;;
	-h|--help) sed -n '2,11p' "$0"; exit 0 ;;
	*) args+=("$1") ;;
	esac
	shift
done
inmates=$(scripts/build-inmates.sh | tail -n 1)
guest_args=()
if [ $linux = 1 ]; then guest_args=(--guest "$(scripts/build-guest-kernel.sh | tail -n 1)"); fi
if [ -z "$bin_dir" ]; then
	# A static executable, as bench-boot.sh and scripts/install.sh build it.
	swift build -c release --product rtvisor-vmm --scratch-path .build-static -Xswiftc -static-executable 2>&1 | grep -v '^\[' >&2
	bin_dir=.build-static/release
fi
exec python3 scripts/bench/bench_snapshot.py --vmm "$bin_dir/rtvisor-vmm" --inmates "$inmates" \
	"${guest_args[@]}" "${out[@]}" "${args[@]}"
