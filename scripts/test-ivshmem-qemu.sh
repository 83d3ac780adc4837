#!/usr/bin/env bash
# Runs the ivshmem inmate under QEMU against QEMU's own ivshmem (docs/channels.md), so the inmate's
# driver, and with it what rtvisor's device model is tested with, is held to an independent
# implementation:
#   plain     ivshmem-plain on a /dev/shm file: the inmate (ivshmem.role=probe) finds 1af4:1110
#             rev 1, writes BAR2, and the string is in the file
#   doorbell  two QEMUs with ivshmem-doorbell (2 vectors, MSI-X) and scripts/bench/ivshmem_server.py:
#             the message and its echo on vector 1, then ivshmem.rounds= round trips
#
#   scripts/test-ivshmem-qemu.sh [--accel tcg|kvm] [--rounds N] [INMATE_DIR]
# --accel tcg (default: no KVM involved at all) or kvm. Ends with "N passed, N failed".
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
accel=tcg rounds=200 dir=
while [ $# -gt 0 ]; do
	case $1 in
	--accel) accel=$2; shift 2 ;;
	--rounds) rounds=$2; shift 2 ;;
	-h|--help) sed -n '2,13p' "$0"; exit 0 ;;
	*) dir=$1; shift ;;
	esac
done
command -v qemu-system-x86_64 >/dev/null || { apt-get update -qq && apt-get install -y -qq qemu-system-x86; } >&2
[ -n "$dir" ] || dir=$("$repo/scripts/build-inmates.sh" | tail -n 1)
exec python3 - "$repo" "$dir" "$accel" "$rounds" <<'PY'
import os, subprocess, sys, tempfile, threading
repo, inmates, accel, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
sys.path.insert(0, os.path.join(repo, "scripts/bench"))
from ivshmem_server import IvshmemServer

kernel = os.path.join(inmates, "ivshmem.elf")
cpu = "max" if accel == "tcg" else __import__("qemu_peer").qemu_cpu()
def qemu(cmdline, *device):
    return ["qemu-system-x86_64", "-accel", accel, "-M", "q35", "-cpu", cpu, "-m", "32", "-nodefaults", "-no-user-config",
            "-nographic", "-serial", "stdio", "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=1",
            "-kernel", kernel, "-append", cmdline, *device]

passed = failed = 0
def check(case, ok, detail):
    global passed, failed
    print(f"{'PASS' if ok else 'FAIL'} {case}" + ("" if ok else f": {detail}"))
    passed, failed = passed + ok, failed + (not ok)

with tempfile.TemporaryDirectory() as tmp:
    shm = f"/dev/shm/rtv-ivshmem-test-{os.getpid()}"
    try:
        p = subprocess.run(qemu("ivshmem.role=probe", "-object", f"memory-backend-file,id=m,size=4M,share=on,mem-path={shm}",
                                "-device", "ivshmem-plain,memdev=m"), capture_output=True, text=True, timeout=300)
        with open(shm, "rb") as f:
            f.seek(4096)
            found = f.read(64).split(b"\0")[0].decode(errors="replace")
        check("plain", p.returncode == 1 and found.startswith("probe from peer "),
              f"status {p.returncode}, file has {found!r}; console: {p.stdout[-800:]}")
    finally:
        if os.path.exists(shm):
            os.unlink(shm)

    sock = os.path.join(tmp, "ivshmem.sock")
    server = IvshmemServer(sock, size=4 << 20, vectors=2)
    threading.Thread(target=server.serve, daemon=True).start()
    chardev = lambda: ["-chardev", f"socket,path={sock},id=ivs", "-device", "ivshmem-doorbell,chardev=ivs,vectors=2"]
    ping = subprocess.Popen(qemu(f"ivshmem.role=ping ivshmem.rounds={rounds} ivshmem.timeout_ms=30000", *chardev()),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    server.wait_clients(1, 60)
    pong = subprocess.Popen(qemu("ivshmem.role=pong", *chardev()), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, stdin=subprocess.DEVNULL)
    try:
        out, err = ping.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        ping.kill(); out, err = ping.communicate()
    pong.kill()
    pong_out = pong.communicate()[0]
    server.close()
    ok = (ping.returncode == 1 and "ivshmem: IVPosition 0," in out and 'ivshmem: echo "echo: hello from peer 0" on vector 1' in out
          and f"ivshmem: {rounds} round trips: median" in out and "ivshmem: IVPosition 1," in pong_out)
    check("doorbell", ok, f"status {ping.returncode}; ping: {out[-1200:]} {err[-400:]}; pong: {pong_out[-400:]}")
    for line in out.splitlines():
        if "round trips" in line:
            print("  " + line)
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
