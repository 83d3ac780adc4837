#!/usr/bin/env bash
# Snapshot, restore and clone (issue 18), rtvisor vs QEMU microvm (migration to a file), same guests:
# restore-to-first-output and restore-to-console-responsive vs cold boot for the `ticker` inmate
# and the minimal Linux (booted once per VMM, restored many times), snapshot time and size vs guest
# RAM, N = 1..8 clones started at once (time, PSS). Appends to docs/benchmarks.md. Needs root and
# /dev/kvm; the Linux part takes minutes here (one boot per VMM).
#   scripts/bench-snapshot.sh [--runs N] [--no-linux] [--no-qemu-linux] [--no-out] [--bin-dir DIR] [--keep]
# --no-linux: skip the minimal Linux. --no-qemu-linux: boot Linux under rtvisor only.
# --no-out: print the results, append nothing. --bin-dir: take rtvisor-vmm from DIR instead of
# the static build (scripts/build-static.sh). --keep: keep the snapshots and logs.
source "$(dirname "${BASH_SOURCE[0]}")/bench/front.sh"
bench_front "$@"
# --no-linux is this front's own: the rest goes to bench_snapshot.py.
linux=1 rest=()
for a in "${args[@]}"; do if [ "$a" = --no-linux ]; then linux=0; else rest+=("$a"); fi; done
args=("${rest[@]}")
inmates=$(scripts/build-inmates.sh | tail -n 1)
guest_args=()
if [ $linux = 1 ]; then guest_args=(--guest "$(scripts/build-guest-kernel.sh | tail -n 1)"); fi
exec python3 scripts/bench/bench_snapshot.py --vmm "$bin_dir/rtvisor-vmm" --inmates "$inmates" \
	"${guest_args[@]}" "${out[@]}" "${args[@]}"
