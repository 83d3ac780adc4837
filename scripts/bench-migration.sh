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
# --bin-dir: take rtvisor-vmm from DIR instead of the static build (scripts/build-static.sh). --keep: keep the logs. --upgrade: the same-host upgrade instead (memory handed over, not
# copied), rtvisor vs QEMU with shared RAM and x-ignore-shared (scripts/bench/bench_upgrade.py).
source "$(dirname "${BASH_SOURCE[0]}")/bench/front.sh"
bench_front "$@"
inmates=$(scripts/build-inmates.sh | tail -n 1)
exec python3 scripts/bench/bench_migration.py --vmm "$bin_dir/rtvisor-vmm" --inmates "$inmates" "${out[@]}" "${args[@]}"
