#!/usr/bin/env bash
# The cost that decided against swift-prometheus (docs/metrics.md): rendering 50 VMs' stats by
# hand (Sources/Metrics) against swift-prometheus 2.x fed the same totals (a registry per
# scrape, counters incremented by their totals, every latency sample recorded again). Release
# builds of both in one throwaway package under /tmp (scripts/bench/prometheus-cost), so the
# project itself does not depend on swift-prometheus. Prints medians; nothing is appended.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH=/opt/swift/usr/bin:$PATH
work=${TMPDIR:-/tmp}/rtvisor-prometheus-cost
mkdir -p "$work/Sources/PromCost"
cp "$repo/scripts/bench/prometheus-cost/Package.swift" "$work/"
cp "$repo/scripts/bench/prometheus-cost/main.swift" "$work/Sources/PromCost/"
# The renderer and the contract, as one module (their imports of each other dropped).
for f in Sources/Metrics/PrometheusExposition.swift Sources/Metrics/ExpositionWriter.swift Sources/APIModels/StatsModels.swift; do
	grep -v '^import APIModels\|^import VMMInterface' "$repo/$f" >"$work/Sources/PromCost/$(basename "$f")"
done
{ echo 'import Foundation'; sed -n '/^public struct LatencySnapshot/,/^}/p' "$repo/Sources/VMMInterface/LatencySnapshot.swift"; } >"$work/Sources/PromCost/Latency.swift"
sed -n '/^public enum VMStateName/,/^}/p' "$repo/Sources/APIModels/APIModels.swift" >"$work/Sources/PromCost/State.swift"
cd "$work"
swift build -c release 2>&1 | grep -E '^error|error:' >&2 || true
grep "model name" /proc/cpuinfo | head -n 1
.build/release/PromCost
