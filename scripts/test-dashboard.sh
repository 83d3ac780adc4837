#!/usr/bin/env bash
# The built-in dashboard in headless Chromium against a real rtvisord with three VMs, and
# /metrics on all three listeners (scripts/test-dashboard.py; docs/metrics.md). Installs its
# Debian packages (chromium, python3-websocket, python3-prometheus-client); needs /dev/kvm and
# root (the real-time VM's partition), and the debug build (swift build --build-tests).
#   scripts/test-dashboard.sh [--screenshot PATH] [--bin-dir DIR]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
if [ ! -e /dev/kvm ]; then echo "SKIP: /dev/kvm is absent, the dashboard test needs real guests" >&2; exit 0; fi
if [ "$(id -u)" != 0 ]; then echo "SKIP: not root, the real-time VM's partition needs root" >&2; exit 0; fi
need=()
for pkg in chromium python3-websocket python3-prometheus-client; do dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg"); done
if [ ${#need[@]} -gt 0 ]; then
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q >&2
	apt-get install -y -q "${need[@]}" >&2
fi
inmates=$(scripts/build-inmates.sh | tail -n 1)
# Debian's python3: the packages above are installed for it (not for a pyenv python3 on PATH).
exec /usr/bin/python3 scripts/test-dashboard.py --inmates "$inmates" "$@"
