#!/usr/bin/env bash
# Dirty logging on this host, both ways KVM offers it (issue 19: "measure both"): the bitmap
# (KVM_GET_DIRTY_LOG, what rtvisor's pre-copy uses) and the dirty ring (KVM_CAP_DIRTY_LOG_RING).
# A real-mode guest writes 200 pages per round; per method, round and guest RAM size: how many of
# the pages it reports, and how long the harvest takes (the last one is part of the downtime).
# Appends to docs/benchmarks.md (--no-out: print only). Needs /dev/kvm and a C compiler.
#   scripts/bench-dirty-log.sh [--rounds N] [--sizes 2,1024,4096] [--no-out]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
rounds=3 sizes=2,1024,4096 out=docs/benchmarks.md
while [ $# -gt 0 ]; do
	case $1 in
	--rounds) rounds=$2; shift ;;
	--sizes) sizes=$2; shift ;;
	--no-out) out= ;;
	-h|--help) sed -n '2,7p' "$0"; exit 0 ;;
	*) echo "unknown option $1" >&2; exit 2 ;;
	esac
	shift
done
dpkg -s build-essential >/dev/null 2>&1 || { apt-get update -q; apt-get install -y -q build-essential; }
[ -r /dev/kvm ] && [ -w /dev/kvm ] || { echo "SKIP: /dev/kvm is absent or not accessible"; exit 0; }
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
cc -O2 -Wall -o "$bin/probe" scripts/bench/dirty-log-probe.c
report=$(
	echo
	echo "## bench-dirty-log, $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo
	kvm=kvm; [ -e /sys/module/kvm_pvm ] && kvm="kvm_pvm (nested, emulates guest ring 0)"
	echo "Machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p'), kernel $(uname -r), host KVM: $kvm. \`scripts/bench/dirty-log-probe.c\`: one vCPU in real mode writes one byte to each of 200 pages per round; after each round the bitmap (\`KVM_GET_DIRTY_LOG\`) or the dirty ring (4096 entries, harvested, then \`KVM_RESET_DIRTY_RINGS\`) is read. $rounds rounds per guest RAM size."
	echo
	echo '```'
	for s in ${sizes//,/ }; do "$bin/probe" "$rounds" "$s" | { [ "$s" = "${sizes%%,*}" ] && cat || tail -n +2; }; done
	echo '```'
)
echo "$report"
[ -z "$out" ] || printf '%s\n' "$report" >> "$out"
