#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs (Debian packages),
# builds the test guests (cached outside the clone), the VMM, cross-checks the guests under
# QEMU TCG, then runs `swift test` (unit tests, and the /dev/kvm integration tests when
# /dev/kvm exists).
#   scripts/test.sh            everything
#   scripts/test.sh --quick    skip the minimal-Linux boots on /dev/kvm (minutes each here)
# Last, the daemon's end-to-end test under a real systemd in systemd-nspawn, installed from the
# .deb (scripts/test-systemd-e2e.sh; it reports SKIP without root or /dev/kvm).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
log() { printf '== %s\n' "$*" >&2; }

quick=0
[ "${1:-}" = "--quick" ] && quick=1

need=()
# (python3-jsonschema: the schema test; python3-prometheus-client: MetricsTests' parser; lintian, man-db, zsh, fish, bash-completion: the package's)
for pkg in build-essential qemu-system-x86 qemu-utils iproute2 python3 python3-jsonschema python3-prometheus-client libseccomp-dev \
	lintian man-db groff-base zsh fish bash-completion; do
	dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
	log "installing ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q >&2
	apt-get install -y -q "${need[@]}" >&2
fi
command -v swift >/dev/null || { echo "swift is not on PATH (expected the Swift 6 toolchain, e.g. /opt/swift/usr/bin)" >&2; exit 1; }

log "building inmates"
inmates=$(scripts/build-inmates.sh | tail -n 1)
log "building the minimal Linux guest (cached)"
guest=$(scripts/build-guest-kernel.sh | tail -n 1)

log "building rtvisor"
swift build --build-tests 2>&1 | grep -v '^\[' >&2
log "checking Package.swift against the imports and docs/architecture.md"
scripts/check-architecture.py >&2

log "docs/vm-definition.schema.json against the examples and Tests/Definitions"
scripts/test-schema.py >&2

log "cross-checking the inmates under QEMU TCG"
scripts/test-inmates-qemu.sh >&2
log "cross-checking the Linux guest under QEMU TCG"
scripts/test-guest-linux-qemu.sh >&2
net_args=()
if [ "$(id -u)" != 0 ]; then
	log "SKIP: not root, the virtio-net cases (network namespace + tap) are skipped"
	net_args=(--no-net)
fi
log "cross-checking the virtio inmates against QEMU's virtio-blk-pci/virtio-net-pci (TCG)"
scripts/test-virtio-inmates-qemu.sh "${net_args[@]}" "$inmates" >&2
log "cross-checking the ivshmem inmate against QEMU's ivshmem-plain and ivshmem-doorbell (TCG)"
scripts/test-ivshmem-qemu.sh "$inmates" >&2
log "VFIO against a real vfio-pci driver (QEMU q35 + intel-iommu + edu, TCG)"
scripts/test-vfio.sh >&2

log "fuzzing virtqueue, blk, net, definition, api, control and stream (libFuzzer + ASan, ${RTVISOR_FUZZ_SECONDS:-25} s each)"
scripts/fuzz.sh all "${RTVISOR_FUZZ_SECONDS:-25}" >&2

if [ -e /dev/kvm ]; then
	log "/dev/kvm present: integration tests boot real guests"
else
	log "SKIP: /dev/kvm is absent, the integration tests will report themselves skipped"
fi
export RTVISOR_INMATES=$inmates RTVISOR_GUEST_LINUX=$guest
[ $quick = 1 ] && export RTVISOR_SKIP_LINUX_BOOT=1
# Two runs: the unit tests' servers and timers (HTTP timeouts, control sockets) must not wait
# behind the integration tests' blocking waits, which hold the 2-thread cooperative pool for
# seconds at a time on the development machines (ConnectionLimitTests timed out that way).
log "swift test: unit tests"
swift test --skip-build --skip IntegrationTests 2>&1
log "swift test: /dev/kvm integration tests"
swift test --skip-build --filter IntegrationTests 2>&1

log "the dashboard in headless Chromium and /metrics on every listener, against a real rtvisord (about 30 s)"
scripts/test-dashboard.sh --screenshot "${TMPDIR:-/tmp}/rtvisor-dashboard.png"

log "scripts/install.sh into staging trees, and --uninstall"
scripts/test-install.sh

log "man pages and shell completions (the .deb's, from the debug build)"
scripts/test-packaging.sh

log "rtvisord end-to-end under systemd (systemd-nspawn)"
scripts/test-systemd-e2e.sh
