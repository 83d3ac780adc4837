#!/usr/bin/env bash
# GET /metrics with 50 VMs (issue 20; docs/metrics.md): scrape time (median, p99) on the metrics
# TCP listener and metrics.sock, and CPU time per scrape of rtvisord and its API front, next to
# GET /v1/stats. Appends to docs/benchmarks.md. Needs root and /dev/kvm.
#   scripts/bench-metrics.sh [--bin-dir DIR] [--vms N] [--scrapes N] [--no-out]
# --bin-dir: rtvisord and rtvisor-vmm from DIR (e.g. .build/debug) instead of the static build.
source "$(dirname "${BASH_SOURCE[0]}")/bench/front.sh"
bench_front "$@"
inmates=$(scripts/build-inmates.sh | tail -n 1)
exec python3 scripts/bench/bench_metrics.py --bin-dir "$(cd "$bin_dir" && pwd)" --inmates "$inmates" "${out[@]}" "${args[@]}"
