#!/usr/bin/env bash
# Runs one libFuzzer target (+ AddressSanitizer) of Sources/rtvisor-fuzz; docs/fuzzing.md.
#
#   scripts/fuzz.sh TARGET [SECONDS]       time-bounded run (default 60 s)
#   scripts/fuzz.sh TARGET --runs N        until N inputs have run
#   scripts/fuzz.sh all [SECONDS]          every target in turn, SECONDS each
#   TARGET: virtqueue, blk, net, definition, api, control, stream.  FUZZ_JOBS=N runs N workers.
#   FUZZ_TIMEOUT=S (default 10): seconds one input may take before libFuzzer calls it a hang;
#   raise it for long niced runs on a busy machine (a starved process is not a hung one).
#   FUZZ_RSS_MB=M (default 2048): libFuzzer's RSS limit. The net target's RSS grows by about
#   190 bytes per input under ASan (a thread per input; docs/fuzzing.md): 4096 for 10^7 runs.
#
# Inputs: the committed corpus (Tests/Fuzz/TARGET-corpus, merge-minimised) and seeds
# (Tests/Fuzz/TARGET-seeds); new inputs go to ${RTVISOR_CACHE:-~/.cache/rtvisor}/fuzz/TARGET/corpus
# (outside the clone). A crash leaves its input in that directory's artifacts/ and fails the
# script; replay it without sanitizers with the plain build: `rtvisor-fuzz TARGET FILE`.
# The full libFuzzer log of the last run is kept in .../fuzz/TARGET/last.log.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
targets="virtqueue blk net definition api control stream"
target=${1:?usage: scripts/fuzz.sh TARGET|all [SECONDS | --runs N]  (TARGET: $targets)}
shift
if [ "$target" = all ]; then
	for t in $targets; do "$0" "$t" "$@"; done
	exit 0
fi
case " $targets " in *" $target "*) ;; *) echo "fuzz: unknown target $target (one of: $targets)" >&2; exit 2 ;; esac
limit=(-max_total_time="${1:-60}")
what="${1:-60} s"
if [ "${1:-}" = --runs ]; then
	limit=(-runs="${2:?--runs needs a count}")
	what="up to ${2} runs"
fi
export PATH=/opt/swift/usr/bin:$PATH
cache=${RTVISOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rtvisor}/fuzz/$target
mkdir -p "$cache/corpus" "$cache/artifacts"

# -use-ld=lld: gold crashes on the sanitizer runtime; SwiftPM's executables call
# <module>_main, which hands over to libFuzzer's driver (LLVMFuzzerRunDriver).
swift build --package-path "$repo" --scratch-path "$repo/.build-fuzz" -c release --product rtvisor-fuzz \
	-Xswiftc -sanitize=fuzzer,address -Xswiftc -DFUZZING -Xswiftc -use-ld=lld >&2
bin="$repo/.build-fuzz/release/rtvisor-fuzz"

case $target in
	definition | api) opts=(-max_len=4096 -dict="$repo/Tests/Fuzz/$target.dict") ;;
	*) opts=(-max_len=8192) ;;
esac
inputs=("$cache/corpus" "$repo/Tests/Fuzz/$target-seeds")
[ -d "$repo/Tests/Fuzz/$target-corpus" ] && inputs+=("$repo/Tests/Fuzz/$target-corpus")

log=$cache/last.log
status=0
SWIFT_BACKTRACE=enable=no RTVISOR_FUZZ_TARGET=$target "$bin" "${limit[@]}" "${opts[@]}" -timeout="${FUZZ_TIMEOUT:-10}" -rss_limit_mb="${FUZZ_RSS_MB:-2048}" \
	-artifact_prefix="$cache/artifacts/" -print_final_stats=1 ${FUZZ_JOBS:+-jobs=$FUZZ_JOBS -workers=$FUZZ_JOBS} \
	"${inputs[@]}" >"$log" 2>&1 || status=$?
grep -E "^#[0-9]+ +(DONE|INITED)|stat::number_of_executed_units|stat::new_units_added|ERROR|SUMMARY|Test unit written" "$log" >&2 || true
if [ "$status" != 0 ]; then
	tail -n 60 "$log" >&2
	echo "fuzz $target: FAILED (status $status); reproducer(s) in $cache/artifacts/, log in $log" >&2
	exit 1
fi
execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
echo "fuzz $target: ok, $execs inputs ($what), no crash"
