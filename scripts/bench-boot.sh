#!/usr/bin/env bash
# Boot time and VMM memory overhead, rtvisor vs QEMU microvm (same guest, same CPUID mask),
# and the per-exit cost of rtvisor's vCPU loop vs a minimal C loop. Appends to docs/benchmarks.md.
#   scripts/bench-boot.sh [--runs N] [--linux-runs N] [--no-linux]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
export PATH=/opt/swift/usr/bin:$PATH
for pkg in build-essential qemu-system-x86 python3; do
	dpkg -s "$pkg" >/dev/null 2>&1 || { apt-get update -q; apt-get install -y -q "$pkg"; }
done
args=()
guest_args=()
linux=1
while [ $# -gt 0 ]; do
	case $1 in
	--no-linux) linux=0 ;;
	*) args+=("$1") ;;
	esac
	shift
done
inmates=$(scripts/build-inmates.sh | tail -n 1)
if [ $linux = 1 ]; then guest_args=(--guest "$(scripts/build-guest-kernel.sh | tail -n 1)"); fi
# A static executable: no shared Swift runtime to map, which is most of a VMM's resident set.
bin_dir=$(scripts/build-static.sh | tail -n 1)
mkdir -p build
gcc -O2 -Wall -o build/c-exit-loop scripts/bench/c-exit-loop.c
python3 scripts/bench/bench_boot.py --vmm "$bin_dir/rtvisor-vmm" --c-loop build/c-exit-loop \
	--inmates "$inmates" "${guest_args[@]}" --out docs/benchmarks.md "${args[@]}"
