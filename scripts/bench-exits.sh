#!/usr/bin/env bash
# The per-exit cost of rtvisor's vCPU loop with its exit counters (issue 20's statistics) on
# and off: two release builds of rtvisor-vmm, the second with -DRTVISOR_NO_EXIT_COUNTERS (the
# counting compiled out), the pioloop inmate's port-I/O exits timed in the guest (TSC),
# alternating runs, medians and the ratio. Appends to docs/benchmarks.md.
#   scripts/bench-exits.sh [--runs N] [--count EXITS] [--no-out]
# The builds are cached outside the clone (~/.cache/rtvisor/bench-exits/{on,off}: incremental
# after the first, which takes several minutes), at nice 10, one after the other.
# The other fronts' preamble (repo, PATH); not bench_front: no QEMU, no static build here.
source "$(dirname "${BASH_SOURCE[0]}")/bench/front.sh"
dpkg -s build-essential python3 >/dev/null 2>&1 || { apt-get update -q; apt-get install -y -q build-essential python3; }
out=(--out docs/benchmarks.md)
args=()
while [ $# -gt 0 ]; do
	case $1 in
	--no-out) out=() ;;
	-h|--help) sed -n '2,/^[^#]/p' "$0" | sed '$d'; exit 0 ;;
	*) args+=("$1") ;;
	esac
	shift
done
cache=${RTVISOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rtvisor}/bench-exits
mkdir -p "$cache"
inmates=$(scripts/build-inmates.sh "$cache/inmates" | tail -n 1)
build() { # VARIANT [SWIFT FLAGS...]
	local variant=$1; shift
	printf '== release build of rtvisor-vmm, counters %s\n' "$variant" >&2
	nice -n 10 swift build -c release --product rtvisor-vmm --package-path "$repo" --scratch-path "$cache/$variant" "$@" 2>&1 | grep -v '^\[' >&2 || true
	[ -x "$cache/$variant/release/rtvisor-vmm" ] || { echo "bench-exits.sh: the build ($variant) failed" >&2; exit 1; }
}
build on
build off -Xswiftc -DRTVISOR_NO_EXIT_COUNTERS
python3 scripts/bench/bench_exits.py --on "$cache/on/release/rtvisor-vmm" --off "$cache/off/release/rtvisor-vmm" \
	--inmates "$inmates" "${out[@]}" "${args[@]}"
