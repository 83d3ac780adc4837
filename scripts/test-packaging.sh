#!/usr/bin/env bash
# The parts of the Debian package that need no static build, from the debug build: the man pages
# render with `man -l` and no groff warning, and the completion scripts load in bash, zsh and
# fish and complete VM names (scripts/test-completions.sh). The package itself is built,
# linted, installed and purged by scripts/test-systemd-e2e.sh. About 15 s.
#
#   scripts/test-packaging.sh [BINDIR]     default .build/debug (swift build)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${1:-$repo/.build/debug}
say() { printf '== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
command -v man >/dev/null && command -v groff >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q man-db groff-base >/dev/null
work=$(mktemp -d /tmp/rtvisor-packaging.XXXXXX)
trap 'rm -rf "$work"' EXIT

say "man pages (scripts/gen-man.py) render with man -l, without groff warnings"
python3 "$repo/scripts/gen-man.py" "$bin" "$work/man"
for page in rtvisord.8 rtvisorctl.1 rtvisor-vmm.1 rtvisor-vm.json.5; do
	f=$work/man/$page
	[ -s "$f" ] || fail "no $page"
	warnings=$(groff -man -ww -z -Tutf8 "$f" 2>&1 || true)
	[ -z "$warnings" ] || { echo "$warnings"; fail "$page: groff warnings"; }
	MANWIDTH=80 man -l "$f" >"$work/$page.txt" 2>"$work/$page.err" || { cat "$work/$page.err"; fail "man -l $page"; }
	grep -q "^NAME" "$work/$page.txt" && grep -q "SEE ALSO" "$work/$page.txt" || fail "$page: no NAME or SEE ALSO section"
	echo "   $page: $(wc -l <"$work/$page.txt") lines"
done
grep -q "rtvisorctl status" "$work/rtvisorctl.1.txt" && grep -q "64" "$work/rtvisorctl.1.txt" || fail "rtvisorctl(1) lacks status or the usage exit code"
grep -q "realtime.latency_probe_us" "$work/rtvisor-vm.json.5.txt" || fail "rtvisor-vm.json(5) lacks a schema field"

# A tree laid out like the .deb's, for the completions.
install -d "$work/root/usr/bin" "$work/root/usr/share/bash-completion/completions" "$work/root/usr/share/zsh/vendor-completions" \
	"$work/root/usr/share/fish/vendor_completions.d"
cp "$bin/rtvisorctl" "$work/root/usr/bin/"
"$bin/rtvisorctl" --generate-completion-script bash >"$work/root/usr/share/bash-completion/completions/rtvisorctl"
"$bin/rtvisorctl" --generate-completion-script zsh >"$work/root/usr/share/zsh/vendor-completions/_rtvisorctl"
"$bin/rtvisorctl" --generate-completion-script fish >"$work/root/usr/share/fish/vendor_completions.d/rtvisorctl.fish"
"$repo/scripts/test-completions.sh" "$work/root"
say "packaging checks passed"
