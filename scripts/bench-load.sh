#!/usr/bin/env bash
# VM creation rate, serial and concurrent, rtvisord vs QEMU microvm (issue 17), and one rtvisord
# under load: 50 idle VMs, 1,000 concurrent API calls, 20 start/stop cycles of one more VM, with
# checks that nothing failed or was disturbed (issue 16). Appends to docs/benchmarks.md when every
# check passed; exit status 1 and the failed checks on stderr otherwise. Needs root and /dev/kvm.
#   scripts/bench-load.sh [--bin-dir DIR] [--rounds N] [--vms N] [--calls N] [--threads N]
#                         [--cycles N] [--skip-rate] [--no-out]
# --bin-dir: take rtvisord and rtvisor-vmm from DIR instead of building them (static release).
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
	--bin-dir) bin_dir=$2; shift ;;
	--bin-dir=*) bin_dir=${1#--bin-dir=} ;;
	--no-out) out=() ;;
	*) args+=("$1") ;;
	esac
	shift
done
inmates=$(scripts/build-inmates.sh | tail -n 1)
if [ -z "$bin_dir" ]; then
	# Static executables, as installed (scripts/install.sh) and as bench-boot.sh measures them.
	for product in rtvisord rtvisor-vmm; do
		swift build -c release --product "$product" --scratch-path .build-static -Xswiftc -static-executable 2>&1 | grep -v '^\[' >&2
	done
	bin_dir=.build-static/release
fi
exec python3 scripts/bench/bench_load.py --bin-dir "$bin_dir" --inmates "$inmates" "${out[@]}" "${args[@]}"
