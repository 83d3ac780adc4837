#!/usr/bin/env bash
# Disk and network throughput with real Linux user space: fio and iperf3 in the minimal Linux guest
# (scripts/build-guest-kernel.sh) on rtvisor and on QEMU (-enable-kvm, virtio-blk-pci and
# virtio-net-pci, modern only, vhost=off), same kernel, initramfs, disk image and tap, alternating
# runs, medians and ratios appended to docs/benchmarks.md. The variant of scripts/bench-io.sh for
# machines whose KVM runs guest kernel code natively (on the emulating development KVM a Linux
# boot takes minutes and every process seconds: there, use scripts/bench-io.sh).
#   scripts/bench-io-linux.sh [--runs N] [--secs S] [--peer-only | --rtvisor-only] [--accel kvm|tcg]
#                             [--memory MiB] [--timeout S] [--record] [--logs DIR]
#   --peer-only     QEMU only (nothing of rtvisor is built)
#   --rtvisor-only  rtvisor only: a functional run
#   --accel tcg     QEMU with software emulation (implies --peer-only): checks the guest side
#                   (networking, fio, iperf3, parsing) on any machine, in seconds
#   --record        append to docs/benchmarks.md even if the run is not a real measurement (TCG,
#                   emulating KVM, one VMM); otherwise such runs only print their table
# Needs root (network namespace, tap). Installs its Debian packages. The benchmark initramfs
# (the guest's plus fio, iperf3 and their libraries) is cached in
# ~/.cache/rtvisor/bench-linux/<key>/ (scripts/bench/bench_linux_initramfs.py).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
export PATH=/opt/swift/usr/bin:$PATH
args=()
need_vmm=1
while [ $# -gt 0 ]; do
	case $1 in
	--peer-only) need_vmm=0; args+=("$1") ;;
	--accel) [ "${2:-}" = tcg ] && need_vmm=0; args+=("$1" "${2:?--accel needs kvm or tcg}"); shift ;;
	--runs | --secs | --memory | --timeout | --logs) args+=("$1" "${2:?$1 needs a value}"); shift ;;
	--rtvisor-only | --record) args+=("$1") ;;
	-h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
	*) echo "bench-io-linux: unknown argument $1 (try --help)" >&2; exit 2 ;;
	esac
	shift
done
[ "$(id -u)" = 0 ] || { echo "bench-io-linux: needs root (netns, tap)" >&2; exit 1; }
missing=()
for pkg in fio iperf3 qemu-system-x86 iproute2 python3 cpio gcc libc6-dev procps util-linux; do
	dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
	apt-get update -q >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi
guest=$(scripts/build-guest-kernel.sh | tail -n 1)
initrd=$(python3 scripts/bench/bench_linux_initramfs.py --guest "$guest" --check guests/linux/bench/bench.sh | tail -n 1)/initramfs.cpio
vmm_args=()
if [ $need_vmm = 1 ]; then
	# The one static build (scripts/build-static.sh, cached outside the clone).
	bin_dir=$(scripts/build-static.sh | tail -n 1)
	vmm_args=(--vmm "$bin_dir/rtvisor-vmm")
fi
# The driver stops its VMM and iperf3 server and deletes its network namespace (and with it the
# tap) itself; this covers the driver being killed: whatever still runs in the namespace (only
# the driver's own VMM and iperf3 server) is stopped by PID, then the namespace goes.
netns=rtvbenchl$$
cleanup() {
	local pid
	ip netns list 2>/dev/null | grep -q "^$netns\b" || return 0
	for pid in $(ip netns pids "$netns" 2>/dev/null); do kill "$pid" 2>/dev/null || :; done
	sleep 1
	for pid in $(ip netns pids "$netns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || :; done
	ip netns del "$netns" 2>/dev/null || :
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
python3 scripts/bench/bench_io_linux.py "${vmm_args[@]}" --guest "$guest" --initrd "$initrd" \
	--netns "$netns" --out docs/benchmarks.md "${args[@]}"
