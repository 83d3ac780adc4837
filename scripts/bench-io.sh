#!/usr/bin/env bash
# Block and network throughput, rtvisor vs QEMU (same inmate, image and tap; vhost off), measured
# by the virtio inmates; also rtvisor's two doorbell paths (vCPU exit vs ioeventfd). Appends to
# docs/benchmarks.md. Needs root (network namespace, tap) and /dev/kvm.
#   scripts/bench-io.sh [--runs N] [--secs S] [--no-net]
# On machines where Linux user space runs at native speed, scripts/bench-io-linux.sh runs fio and
# iperf3 in the minimal Linux guest instead (see docs/benchmarks.md).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
export PATH=/opt/swift/usr/bin:$PATH
for pkg in build-essential qemu-system-x86 python3 iproute2; do
	dpkg -s "$pkg" >/dev/null 2>&1 || { apt-get update -q; apt-get install -y -q "$pkg"; }
done
inmates=$(scripts/build-inmates.sh | tail -n 1)
# The one static build (scripts/build-static.sh, cached outside the clone).
bin_dir=$(scripts/build-static.sh | tail -n 1)
python3 scripts/bench/bench_io.py --vmm "$bin_dir/rtvisor-vmm" --inmates "$inmates" --out docs/benchmarks.md "$@"
