#!/usr/bin/env bash
# rtvisorctl's completion scripts as shipped load in bash, zsh and fish (non-interactively) and
# complete VM names: a stand-in API on a scratch socket (RTVISOR_API_SOCKET) lists two VMs, and
# each shell is asked to complete `rtvisorctl start `. bash calls the completion function with
# COMP_WORDS; zsh and fish complete only in an interactive line editor: each runs on a
# pseudo-terminal (zsh/zpty, Python's pty) and gets a Tab.
#
#   scripts/test-completions.sh ROOT      ROOT: a tree with usr/bin/rtvisorctl and the completions
#                                         where the .deb puts them (dpkg-deb -x rtvisor_*.deb ROOT)
# Installs bash-completion, zsh and fish when they are missing (Debian packages).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
root=$(cd "$1" && pwd)
say() { printf '== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

need=()
for p in bash-completion zsh fish; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
if [ ${#need[@]} -gt 0 ]; then
	say "installing ${need[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
fi
bash_file=$root/usr/share/bash-completion/completions/rtvisorctl
zsh_dir=$root/usr/share/zsh/vendor-completions
fish_file=$root/usr/share/fish/vendor_completions.d/rtvisorctl.fish
for f in "$bash_file" "$zsh_dir/_rtvisorctl" "$fish_file" "$root/usr/bin/rtvisorctl"; do [ -e "$f" ] || fail "$f missing"; done

work=$(mktemp -d /tmp/rtvisor-completions.XXXXXX)
server=
cleanup() { [ -z "$server" ] || kill "$server" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
export RTVISOR_API_SOCKET=$work/api.sock
# GET /v1/vms, whatever the request: alpha-vm and beta-vm.
python3 - "$RTVISOR_API_SOCKET" <<'PY' &
import json, socketserver, sys
vm = lambda n: {"name": n, "state": "stopped", "autostart": False, "restart_policy": "no", "restarts": 0,
                "pending_change": False, "definition_file": f"/etc/rtvisor/vms/{n}.json", "since": 0}
body = json.dumps({"vms": [vm("alpha-vm"), vm("beta-vm")], "invalid_definitions": []}).encode()
class H(socketserver.StreamRequestHandler):
    def handle(self):
        while self.rfile.readline() not in (b"\r\n", b"\n", b""): pass
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
socketserver.UnixStreamServer(sys.argv[1], H).serve_forever()
PY
server=$!
for _ in $(seq 50); do [ -S "$RTVISOR_API_SOCKET" ] && break; sleep 0.1; done
export PATH=$root/usr/bin:$PATH
names() { tr -s ' \t\r' '\n\n\n' | grep -oE '(alpha|beta)-vm' | sort -u | tr '\n' ' '; }
want="alpha-vm beta-vm "

say "bash: source the completion, complete 'rtvisorctl start '"
got=$(bash --norc --noprofile -c '
	[ -f /usr/share/bash-completion/bash_completion ] && source /usr/share/bash-completion/bash_completion
	source "$1"
	COMP_WORDS=(rtvisorctl start ""); COMP_CWORD=2; COMP_LINE="rtvisorctl start "; COMP_POINT=${#COMP_LINE}
	_rtvisorctl rtvisorctl "" start
	printf "%s\n" "${COMPREPLY[@]}"' bash "$bash_file" | names)
[ "$got" = "$want" ] || fail "bash completed '$got'"
echo "   $got"

say "fish: an interactive fish (on a pseudo-terminal) with the completion, Tab after 'rtvisorctl start '"
# (fish 3.6's `complete -C` outside an interactive session cannot run the script's `commandline`)
got=$(timeout 30 python3 - "$fish_file" <<'PY' | names
import os, pty, select, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.environ["TERM"] = "xterm"
    os.execvp("fish", ["fish", "--no-config", "-i", "-C", f"source {sys.argv[1]}"])
def read(seconds, until=b""):
    out, end = b"", time.time() + seconds
    while time.time() < end and not (until and until in out):
        if select.select([fd], [], [], 0.1)[0]:
            try: out += os.read(fd, 4096)
            except OSError: break
    return out
read(2)
os.write(fd, b"rtvisorctl start \t")
sys.stdout.write(read(10, b"beta-vm").decode(errors="replace"))
os.write(fd, b"\x03exit\n"); read(1)
PY
)
[ "$got" = "$want" ] || fail "fish completed '$got'"
echo "   $got"

say "zsh: compinit with the vendor-completions directory, Tab after 'rtvisorctl start ' (zpty)"
got=$(ZSH_DIR=$zsh_dir timeout 30 zsh -f -c '
	zmodload zsh/zpty
	zpty -b z zsh -f -i
	zpty -w z "PS1=\"%% \"; fpath=($ZSH_DIR \$fpath); autoload -Uz compinit; compinit -u -D; zstyle \":completion:*\" list-rows-first true"
	zpty -w -n z "rtvisorctl start "$'"'"'\t'"'"'
	out=; line=
	for i in {1..50}; do
		zpty -r -t z line && out+=$line
		[[ $out == *beta-vm* ]] && break
		sleep 0.1
	done
	print -r -- $out
	zpty -d z' | names)
[ "$got" = "$want" ] || fail "zsh completed '$got'"
echo "   $got"
say "completions: bash, fish and zsh complete VM names"
