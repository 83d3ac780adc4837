#!/usr/bin/env bash
# Durability (issue 16): 100 trials of a guest writing and flushing sector after sector while
# rtvisor-vmm is killed with SIGKILL at a random moment; every sector the guest saw acknowledged
# must be in the image. Half the trials negotiate FLUSH, half run the device write-through.
#   scripts/durability.sh [--trials N] [--sectors N] [--seed N]     (RTVISOR_VMM=PATH: that VMM, no build)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH=/opt/swift/usr/bin:$PATH
missing=$(for p in build-essential python3; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then apt-get update -q && apt-get install -y -q $missing; fi
[ -e /dev/kvm ] || { echo "SKIP: /dev/kvm is absent"; exit 0; }
inmates=$(scripts/build-inmates.sh | tail -n 1)
vmm=${RTVISOR_VMM:-}
if [ -z "$vmm" ]; then
	swift build -c release --product rtvisor-vmm 2>&1 | grep -v '^\[' >&2
	vmm=.build/release/rtvisor-vmm
fi
exec python3 scripts/durability/trials.py --vmm "$vmm" --inmate "$inmates/virtio-blk.elf" "$@"
