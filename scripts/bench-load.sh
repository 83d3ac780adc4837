#!/usr/bin/env bash
# VM creation rate, serial and concurrent, rtvisord vs QEMU microvm (issue 17), and one rtvisord
# under load: 50 idle VMs, 1,000 concurrent API calls, 20 start/stop cycles of one more VM, with
# checks that nothing failed or was disturbed (issue 16). Appends to docs/benchmarks.md when every
# check passed; exit status 1 and the failed checks on stderr otherwise. Needs root and /dev/kvm.
#   scripts/bench-load.sh [--bin-dir DIR] [--rounds N] [--vms N] [--calls N] [--threads N]
#                         [--cycles N] [--skip-rate] [--no-out]
# --bin-dir: take rtvisord and rtvisor-vmm from DIR instead of the static build (scripts/build-static.sh).
source "$(dirname "${BASH_SOURCE[0]}")/bench/front.sh"
bench_front "$@"
inmates=$(scripts/build-inmates.sh | tail -n 1)
exec python3 scripts/bench/bench_load.py --bin-dir "$bin_dir" --inmates "$inmates" "${out[@]}" "${args[@]}"
