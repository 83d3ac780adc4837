#!/usr/bin/env bash
# Two virtio-net inmates on one Linux bridge (docs/networking.md): a scratch network namespace
# with a bridge, one VM reflecting (net.mode=reflect) and one echoing --frames frames through it
# to the reflector's MAC. With --window 1 every frame is one round trip: a virtio-net ping-pong
# through a bridge, its time in the echo guest's "replies in … us" line. Needs root and /dev/kvm.
#   scripts/bridge-inmates.sh [--frames N] [--window W] [--mtu M] [--vmm PATH] [--inmates DIR]
# --vmm defaults to the static release build (scripts/build-static.sh) when there is one, else the
# debug build; --inmates to a fresh scripts/build-inmates.sh. Exits non-zero when either guest fails.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
frames=1000 window=1 mtu=1500 vmm="" inmates=""
while [ $# -gt 0 ]; do
	case "$1" in
	--frames) frames=$2; shift 2 ;;
	--window) window=$2; shift 2 ;;
	--mtu) mtu=$2; shift 2 ;;
	--vmm) vmm=$2; shift 2 ;;
	--inmates) inmates=$2; shift 2 ;;
	-h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "bridge-inmates: unknown argument $1 (--help)" >&2; exit 2 ;;
	esac
done
if [ -z "$vmm" ]; then
	vmm=$repo/.build-static/release/rtvisor-vmm
	[ -x "$vmm" ] || vmm=$repo/.build/debug/rtvisor-vmm
fi
[ -x "$vmm" ] || { echo "bridge-inmates: no rtvisor-vmm at $vmm (swift build, or --vmm)" >&2; exit 1; }
[ -n "$inmates" ] || inmates=$("$repo/scripts/build-inmates.sh" | tail -n 1)

ns=rtvbridge$$ dir=$(mktemp -d)
cleanup() { ip netns del "$ns" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
ip netns add "$ns"
# IPv6 router solicitations from the bridge would be extra frames on every port.
ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
ip -n "$ns" link add br-inmates type bridge
ip -n "$ns" link set br-inmates mtu "$mtu" up

define() { # NAME MAC CMDLINE
	cat >"$dir/$1.json" <<-JSON
	{"name": "$1", "memory_mib": 64, "kernel": "$inmates/virtio-net.elf", "cmdline": "$3",
	 "nets": [{"bridge": "br-inmates", "mac": "$2"}]}
	JSON
}
define reflect 02:00:00:00:b0:02 "net.mode=reflect net.frames=$frames net.timeout_ms=30000"
define echo 02:00:00:00:b0:01 "net.frames=$frames net.window=$window net.peer=02:00:00:00:b0:02 net.timeout_ms=10000"

ip netns exec "$ns" "$vmm" --config "$dir/reflect.json" --no-console-input >"$dir/reflect.out" 2>"$dir/reflect.err" &
reflector=$!
for _ in $(seq 100); do grep -q "virtio-net: reflecting" "$dir/reflect.out" 2>/dev/null && break; sleep 0.1; done
status=0
ip netns exec "$ns" "$vmm" --config "$dir/echo.json" --no-console-input >"$dir/echo.out" 2>"$dir/echo.err" || status=$?
wait "$reflector" || status=$?
grep -h "INMATE\|replies in\|FAIL" "$dir/echo.out" "$dir/reflect.out" || true
if [ "$status" -ne 0 ]; then
	echo "bridge-inmates: failed (status $status); VMM logs:" >&2
	cat "$dir/echo.err" "$dir/reflect.err" >&2
fi
exit "$status"
