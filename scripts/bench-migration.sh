#!/usr/bin/env bash
# Live migration (issue 19), rtvisor vs QEMU microvm, two VMM processes on this host, the same
# guest: the `memwriter` inmate writing its memory at a fixed rate and verifying all of it every
# 1024 steps. Total time, downtime (and the pause as the guest saw it: to the target running),
# bytes and rounds vs guest RAM and dirty rate; the guest must go on verifying on the target (a
# FAIL stops the benchmark). Appends to docs/benchmarks.md. Needs root and /dev/kvm.
#   scripts/bench-migration.sh [--runs N] [--quick] [--sizes 32,256] [--rates 1,2,0] [--tcp] [--upgrade] [--no-out] [--bin-dir DIR] [--keep]
# --runs: alternating runs per configuration (3). --quick: 32 MiB only, rates 1 and unpaced.
# --sizes / --rates: guest RAM (MiB) and pages per ms asked of the guest (0 = unpaced).
# --tcp: the stream over tcp:127.0.0.1 (default: a unix socket). --no-out: print, append nothing.
# --bin-dir: take rtvisor-vmm from DIR instead of building it (static release, as bench-boot.sh
# builds it). --keep: keep the logs. --upgrade: the same-host upgrade instead (memory handed over, not
# copied), rtvisor vs QEMU with shared RAM and x-ignore-shared (scripts/bench/bench_upgrade.py).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
export PATH=/opt/swift/usr/bin:$PATH
for pkg in build-essential qemu-system-x86 python3; do
	dpkg -s "$pkg" >/dev/null 2>&1 || { apt-get update -q; apt-get install -y -q "$pkg"; }
done
bin_dir=
out=(--out docs/benchmarks.md)
args=()
while [ $# -gt 0 ]; do
	case $1 in
	--no-out) out=() ;;
	--bin-dir) bin_dir=$2; shift ;;
	--bin-dir=*) bin_dir=${1#--bin-dir=} ;;
	-h|--help) sed -n '2,14p' "$0"; exit 0 ;;
	*) args+=("$1") ;;
	esac
	shift
done
inmates=$(scripts/build-inmates.sh | tail -n 1)
if [ -z "$bin_dir" ]; then
	# A static executable, as bench-boot.sh and scripts/install.sh build it.
	swift build -c release --product rtvisor-vmm --scratch-path .build-static -Xswiftc -static-executable 2>&1 | grep -v '^\[' >&2
	bin_dir=.build-static/release
fi
exec python3 scripts/bench/bench_migration.py --vmm "$bin_dir/rtvisor-vmm" --inmates "$inmates" "${out[@]}" "${args[@]}"
