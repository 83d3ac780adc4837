#!/usr/bin/env bash
# Doorbell round trips between two VMs (issue 21, docs/channels.md): the ivshmem inmate's ping-pong
# through a shared-memory channel under rtvisor vs the same ping-pong over virtio-net through a
# bridge (virtio-net inmate, net.mode=pingpong), optionally with the pinger in a real-time
# partition, and QEMU's ivshmem-doorbell with our ivshmem server (scripts/bench/ivshmem_server.py)
# on the same inmate. Median, p99, max. Appends to docs/benchmarks.md. Needs root (network
# namespace, bridge, taps) and /dev/kvm.
#   scripts/bench-channel.sh [--runs N] [--rounds N] [--rt-cpu CPU] [--no-net] [--no-qemu] [--no-out] [--bin-dir DIR]
# --rt-cpu: also run the channel with the pinger's vCPU on that host CPU (SCHED_FIFO, isolated).
# --no-out: print, append nothing. --bin-dir: rtvisor-vmm from DIR instead of the static build.
source "$(dirname "${BASH_SOURCE[0]}")/bench/front.sh"
bench_front "$@"
dpkg -s iproute2 >/dev/null 2>&1 || { apt-get update -q; apt-get install -y -q iproute2; }
inmates=$(scripts/build-inmates.sh | tail -n 1)
exec python3 scripts/bench/bench_channel.py --vmm "$bin_dir/rtvisor-vmm" --inmates "$inmates" "${out[@]}" "${args[@]}"
