"""Doorbell round trips between two VMs (docs/channels.md): the ivshmem inmate's ping-pong through a
shared-memory channel under rtvisor (doorbells on ioeventfd/irqfd), the same ping-pong over
virtio-net through a bridge (the virtio-net inmate's net.mode=pingpong), the channel again with
the pinger in a real-time partition (--rt-cpu), and QEMU's ivshmem-doorbell with our ivshmem
server (ivshmem_server.py) on the same inmate. Median, p99 and max per run as the inmates
measure them (TSC); the table reports the median of the runs' medians and the worst p99 and max.

The channel's descriptors are made here as rtvisord makes them (a memfd, 16 × vectors eventfds)
and passed to both rtvisor-vmm processes with --channel NAME,fd=N,doorbells=M."""
import argparse, json, os, re, socket, statistics, subprocess, sys, tempfile, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ivshmem_server import IvshmemServer  # noqa: E402
from qemu_peer import qemu_cpu  # noqa: E402

LINE = re.compile(r"(\d+) round trips: median (\d+) ns, p99 (\d+) ns, max (\d+) ns")
NS = "rtv-chan"
PEERS, VECTORS, SIZE_MIB = 16, 2, 4
MEMORY_FD, FIRST_DOORBELL = 100, 101


def definition(tmp, name, kernel, cmdline, extra):
    d = {"name": name, "vcpus": 1, "memory_mib": 32, "kernel": kernel, "cmdline": cmdline}
    d.update(extra)
    path = os.path.join(tmp, name + ".json")
    with open(path, "w") as f:
        json.dump(d, f)
    return path


def channel_fds():
    """The memfd and eventfds at MEMORY_FD and FIRST_DOORBELL…, as both VMMs inherit them."""
    mem = os.memfd_create("rtvisor-channel-bench")
    os.ftruncate(mem, SIZE_MIB << 20)
    os.dup2(mem, MEMORY_FD)
    os.close(mem)
    for i in range(PEERS * VECTORS):
        e = os.eventfd(0, os.EFD_NONBLOCK)
        os.dup2(e, FIRST_DOORBELL + i)
        os.close(e)
    return list(range(MEMORY_FD, FIRST_DOORBELL + PEERS * VECTORS))


def parse(text):
    m = LINE.search(text)
    return tuple(int(x) for x in m.groups()[1:]) if m else None


def run_pair(pong_cmd, ping_cmd, timeout, pass_fds=(), prefix=()):
    """Starts the ponger, runs the pinger to its end, stops the ponger; the pinger's result."""
    pong = subprocess.Popen(list(prefix) + pong_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, pass_fds=pass_fds)
    try:
        ping = subprocess.run(list(prefix) + ping_cmd, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, pass_fds=pass_fds)
    finally:
        pong.kill()
        pong.wait()
    r = parse(ping.stdout)
    if not r:
        sys.exit(f"no round-trip line (status {ping.returncode}): {ping.stdout[-1500:]} {ping.stderr[-1500:]}")
    return r


def rtvisor_channel(vmm, inmates, tmp, rounds, rt_cpu=None):
    fds = channel_fds()
    kernel = os.path.join(inmates, "ivshmem.elf")
    chan = lambda peer: {"channels": [{"name": "bench", "size_mib": SIZE_MIB, "peer": peer, "vectors": VECTORS}]}
    rt = {"realtime": {"cpus": [rt_cpu], "priority": 80}} if rt_cpu is not None else {}
    pong = definition(tmp, "pong", kernel, "ivshmem.role=pong", chan(1))
    ping = definition(tmp, "ping", kernel, f"ivshmem.role=ping ivshmem.rounds={rounds}", {**chan(0), **rt})
    arg = ["--no-console-input", "--channel", f"bench,fd={MEMORY_FD},doorbells={FIRST_DOORBELL}"]
    try:
        return run_pair([vmm, "--config", pong] + arg, [vmm, "--config", ping] + arg, 600, pass_fds=fds)
    finally:
        for fd in fds:
            os.close(fd)


def sh(*cmd, check=True):
    subprocess.run(cmd, check=check, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def rtvisor_net(vmm, inmates, tmp, rounds):
    """Two taps on one bridge in a network namespace of their own."""
    kernel = os.path.join(inmates, "virtio-net.elf")
    pong = definition(tmp, "npong", kernel, "net.mode=pingpong net.role=pong",
                      {"nets": [{"tap": "rtvb1", "mac": "02:00:00:00:00:11"}]})
    ping = definition(tmp, "nping", kernel, f"net.mode=pingpong net.role=ping net.rounds={rounds}",
                      {"nets": [{"tap": "rtvb0", "mac": "02:00:00:00:00:10"}]})
    return run_pair([vmm, "--config", pong, "--no-console-input"], [vmm, "--config", ping, "--no-console-input"], 600,
                    prefix=("ip", "netns", "exec", NS))


def qemu_channel(inmates, tmp, rounds):
    kernel = os.path.join(inmates, "ivshmem.elf")
    sock = os.path.join(tmp, "ivshmem.sock")
    server = IvshmemServer(sock, size=SIZE_MIB << 20, vectors=VECTORS)
    threading.Thread(target=server.serve, daemon=True).start()

    def qemu(cmdline):
        return ["qemu-system-x86_64", "-M", "pc", "-enable-kvm", "-cpu", qemu_cpu(), "-m", "32", "-nodefaults",
                "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot",
                "-device", "isa-debug-exit,iobase=0xf4,iosize=1", "-kernel", kernel, "-append", cmdline,
                "-chardev", f"socket,path={sock},id=ivs", "-device", f"ivshmem-doorbell,chardev=ivs,vectors={VECTORS}"]
    # The pinger connects first and gets id 0: the inmate's roles follow IVPosition.
    ping_cmd = qemu(f"ivshmem.role=ping ivshmem.rounds={rounds}")
    pong_cmd = qemu("ivshmem.role=pong")
    ping = subprocess.Popen(ping_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    server.wait_clients(1, 30)
    pong = subprocess.Popen(pong_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        out, err = ping.communicate(timeout=600)
    finally:
        pong.kill()
        pong.wait()
        server.close()
    r = parse(out)
    if not r:
        sys.exit(f"qemu: no round-trip line: {out[-1500:]} {err[-1500:]}")
    return r


def summary(results):
    return (statistics.median(r[0] for r in results), max(r[1] for r in results), max(r[2] for r in results))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vmm", required=True)
    ap.add_argument("--inmates", required=True)
    ap.add_argument("--rounds", type=int, default=10000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rt-cpu", type=int, help="also run the channel with the pinger's vCPU on this host CPU (real-time partition)")
    ap.add_argument("--no-qemu", action="store_true")
    ap.add_argument("--no-net", action="store_true")
    ap.add_argument("--out")
    a = ap.parse_args()
    cases = [("rtvisor channel (ivshmem, ioeventfd → irqfd)", lambda tmp: rtvisor_channel(a.vmm, a.inmates, tmp, a.rounds))]
    if a.rt_cpu is not None:
        cases.append((f"rtvisor channel, pinger real-time on CPU {a.rt_cpu}",
                      lambda tmp: rtvisor_channel(a.vmm, a.inmates, tmp, a.rounds, a.rt_cpu)))
    if not a.no_net:
        cases.append(("rtvisor virtio-net through a bridge", lambda tmp: rtvisor_net(a.vmm, a.inmates, tmp, a.rounds)))
    if not a.no_qemu:
        cases.append(("QEMU ivshmem-doorbell + ivshmem server", lambda tmp: qemu_channel(a.inmates, tmp, a.rounds)))
    if not a.no_net:
        sh("ip", "netns", "add", NS)
        sh("ip", "netns", "exec", NS, "ip", "link", "add", "rtvbr", "type", "bridge")
        for tap in ("rtvb0", "rtvb1"):
            sh("ip", "netns", "exec", NS, "ip", "tuntap", "add", "dev", tap, "mode", "tap")
            sh("ip", "netns", "exec", NS, "ip", "link", "set", tap, "master", "rtvbr", "up")
        sh("ip", "netns", "exec", NS, "ip", "link", "set", "rtvbr", "up")
        sh("ip", "netns", "exec", NS, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", check=False)
    results = {}
    try:
        for label, run in cases:
            results[label] = []
            for i in range(a.runs):
                with tempfile.TemporaryDirectory() as tmp:
                    r = run(tmp)
                print(f"{label} run {i}: median {r[0]} ns, p99 {r[1]} ns, max {r[2]} ns", file=sys.stderr)
                results[label].append(r)
    finally:
        if not a.no_net:
            sh("ip", "netns", "del", NS, check=False)

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    lines = [f"## bench-channel, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
             f"Machine: {socket.gethostname()}, {os.cpu_count()} CPUs, {cpu}; `scripts/bench-channel.sh --runs {a.runs} "
             f"--rounds {a.rounds}{'' if a.rt_cpu is None else f' --rt-cpu {a.rt_cpu}'}`. Inmate ↔ inmate round trips "
             "(ping on the peer's vector 0 / frame, pong back; the pinger spins, the ponger halts between doorbells "
             "(ivshmem) or polls (virtio-net)). Median of the runs' medians, worst p99 and max.", "",
             "| path | median µs | p99 µs | max µs | median vs channel |", "|---|---|---|---|---|"]
    base = summary(results[cases[0][0]])[0]
    for label, _ in cases:
        m, p99, mx = summary(results[label])
        lines.append(f"| {label} | {m / 1000:.1f} | {p99 / 1000:.1f} | {mx / 1000:.1f} | {m / base:.2f}× |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        with open(a.out, "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
