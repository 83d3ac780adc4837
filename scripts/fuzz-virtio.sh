#!/usr/bin/env bash
# Fuzzes the virtqueue core and the virtio-blk request parser with libFuzzer (+ AddressSanitizer).
#
#   scripts/fuzz-virtio.sh [SECONDS]     default 60; FUZZ_JOBS=N runs N workers
#
# The input is guest RAM plus a few queue parameters (Sources/virtio-fuzz). Seeds: well-formed
# requests in Tests/Fuzz/virtio-seeds. The corpus grows in ${RTVISOR_CACHE:-~/.cache/rtvisor}/fuzz/virtio
# (outside the clone); a crash leaves its input in that directory's artifacts/ and fails the
# script, printing how to replay it (`.build/debug/virtio-fuzz FILE` without sanitizers).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
seconds=${1:-60}
export PATH=/opt/swift/usr/bin:$PATH
cache=${RTVISOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rtvisor}/fuzz/virtio
mkdir -p "$cache/corpus" "$cache/artifacts"

# -use-ld=lld: gold crashes on the sanitizer runtime; SwiftPM's executables call
# <module>_main, which hands over to libFuzzer's driver (LLVMFuzzerRunDriver).
swift build --package-path "$repo" --scratch-path "$repo/.build-fuzz" -c release --product virtio-fuzz \
	-Xswiftc -sanitize=fuzzer,address -Xswiftc -DFUZZING -Xswiftc -use-ld=lld >&2
bin="$repo/.build-fuzz/release/virtio-fuzz"

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
"$bin" -max_total_time="$seconds" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
	-artifact_prefix="$cache/artifacts/" -print_final_stats=1 ${FUZZ_JOBS:+-jobs=$FUZZ_JOBS -workers=$FUZZ_JOBS} \
	"$cache/corpus" "$repo/Tests/Fuzz/virtio-seeds" >"$log" 2>&1 || status=$?
grep -E "^#[0-9]+ +(DONE|INITED)|stat::number_of_executed_units|stat::new_units_added|ERROR|SUMMARY|Test unit written" "$log" >&2 || true
if [ "$status" != 0 ]; then
	tail -n 60 "$log" >&2
	echo "fuzz-virtio: FAILED (status $status); reproducer(s) in $cache/artifacts/" >&2
	exit 1
fi
execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
echo "fuzz-virtio: ok, $execs inputs in $seconds s, no crash"
