#!/usr/bin/env bash
# Builds rtvisord, rtvisorctl and rtvisor-vmm as static release executables (what the .deb and
# the systemd e2e ship) and prints the directory holding them, last line of stdout.
#
# Cached outside the clone, keyed by its inputs (Package.swift, Package.resolved, every file
# under Sources/, the toolchain's version): ~/.cache/rtvisor/static-build/KEY/. A hit costs
# nothing; a miss builds in one scratch directory shared by every clone
# (~/.cache/rtvisor/static-build/scratch, so a small change rebuilds only what it touches: the
# first build takes 7+ minutes here), under a lock, at nice 10.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH=/opt/swift/usr/bin:$PATH
command -v swift >/dev/null || { echo "build-static.sh: swift is not on PATH" >&2; exit 1; }
cache=${RTVISOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rtvisor}/static-build
mkdir -p "$cache"
key=$( { swift --version 2>/dev/null; cd "$repo" && find Package.swift Package.resolved Sources -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum; } | sha256sum | cut -c1-16)
out=$cache/$key
products=(rtvisord rtvisorctl rtvisor-vmm)
have() { for p in "${products[@]}"; do [ -x "$out/$p" ] || return 1; done; }
if ! have; then
	exec 9>"$cache/.lock"
	flock 9
	if ! have; then
		printf '== static release build (%s; cached as %s)\n' "$repo" "$out" >&2
		start=$(date +%s)
		for p in "${products[@]}"; do
			nice -n 10 swift build -c release --product "$p" --package-path "$repo" --scratch-path "$cache/scratch" \
				-Xswiftc -static-executable 2>&1 | grep -v '^\[' >&2 || true
			[ -x "$cache/scratch/release/$p" ] || { echo "build-static.sh: the build of $p failed" >&2; exit 1; }
		done
		mkdir -p "$out.tmp"
		for p in "${products[@]}"; do cp "$cache/scratch/release/$p" "$out.tmp/"; done
		rm -rf "$out"; mv "$out.tmp" "$out"
		printf '== static release build: %ss\n' "$(($(date +%s) - start))" >&2
		# Older keys' binaries go (about 150 MB each); the scratch directory stays.
		find "$cache" -mindepth 1 -maxdepth 1 -type d ! -name scratch ! -name "$key" -exec rm -rf {} +
	fi
fi
echo "$out"
