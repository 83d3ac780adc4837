#!/usr/bin/env bash
# Start-up of a real-time VM under rtvisord: time from starting the daemon to the RT guest's first
# instruction (its vCPU 0 entering KVM_RUN, pinned and SCHED_FIFO) and to its ready marker, next
# to an ordinary VM started by the same daemon. Real-time VMs are started first (docs/realtime.md).
#   scripts/bench-rt-start.sh [--runs N]        (needs root, /dev/kvm and 2+ CPUs)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
export PATH=/opt/swift/usr/bin:$PATH
for pkg in build-essential python3; do
	dpkg -s "$pkg" >/dev/null 2>&1 || { apt-get update -q; apt-get install -y -q "$pkg"; }
done
inmates=$(scripts/build-inmates.sh | tail -n 1)
# The one static build (scripts/build-static.sh, cached outside the clone).
bin_dir=$(scripts/build-static.sh | tail -n 1)
exec python3 scripts/bench/bench_rt_start.py --bin "$bin_dir" --inmates "$inmates" "$@"
