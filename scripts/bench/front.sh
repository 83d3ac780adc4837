# Sourced by the scripts/bench-*.sh fronts that take the common options: the Debian packages,
# the options every front has, and the static executables (scripts/build-static.sh, the one
# static build, cached outside the clone; what the .deb ships and the e2e runs).
#   bench_front "$@"   sets bin_dir (--bin-dir DIR, or the static build), out (--out
#                      docs/benchmarks.md, or nothing with --no-out) and args (the rest, for the
#                      Python part); -h/--help prints the front's header comment
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
export PATH=/opt/swift/usr/bin:$PATH

bench_front() {
	for pkg in build-essential qemu-system-x86 python3; do
		dpkg -s "$pkg" >/dev/null 2>&1 || { apt-get update -q; apt-get install -y -q "$pkg"; }
	done
	bin_dir=
	out=(--out docs/benchmarks.md)
	args=()
	while [ $# -gt 0 ]; do
		case $1 in
		--no-out) out=() ;;
		--bin-dir) bin_dir=$2; shift ;;
		--bin-dir=*) bin_dir=${1#--bin-dir=} ;;
		-h|--help) sed -n '2,/^[^#]/p' "$0" | sed '$d'; exit 0 ;;
		*) args+=("$1") ;;
		esac
		shift
	done
	[ -n "$bin_dir" ] || bin_dir=$(scripts/build-static.sh | tail -n 1)
}
