#!/usr/bin/env bash
# Sets up and runs the demo: builds the minimal Linux guest (cached) and rtvisor, then boots
# examples/hello.json in the foreground with the serial console on this terminal.
# On this development machine's emulating KVM the boot takes about two minutes; on real
# hardware well under a second.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
export PATH=/opt/swift/usr/bin:$PATH
guest=$(scripts/build-guest-kernel.sh | tail -n 1)
scripts/build-inmates.sh >/dev/null
mkdir -p build
ln -sfn "$guest" build/guest-linux
swift build -c release --product rtvisor-vmm --scratch-path .build-static -Xswiftc -static-executable 2>&1 | grep -v '^\[' >&2
exec .build-static/release/rtvisor-vmm --config examples/hello.json "$@"
