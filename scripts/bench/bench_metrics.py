#!/usr/bin/env python3
"""GET /metrics with many VMs (issue 20): one rtvisord with N idle VMs (the `idle` inmate, 16 MiB
each) and its metrics TCP listener enabled; then S scrapes of /metrics, one after the other, on
the TCP listener (a new connection each, as a Prometheus server without keep-alive) and S on
metrics.sock, and S of GET /v1/stats (the JSON the exposition is rendered from) for comparison.
Reports the scrape time (median, p99), the answer's size, and the CPU time per scrape of
rtvisord (the collection) and of its API front (routing and the rendering), from
/proc/PID/stat, minus what both use idle over the same time. Run through scripts/bench-metrics.sh.
"""
import argparse, http.client, json, os, signal, socket, statistics, subprocess, sys, tempfile, time, shutil

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from unix_http import UnixHTTPConnection  # noqa: E402


def get(connect, target):
    t0 = time.perf_counter()
    c = connect()
    c.request("GET", target)
    r = c.getresponse()
    body = r.read()
    c.close()
    dt = time.perf_counter() - t0
    if r.status != 200:
        raise SystemExit(f"GET {target}: {r.status} {body[:200]!r}")
    return dt, body


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def front_pid(daemon_pid):
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            cmdline = open(f"/proc/{entry}/cmdline", "rb").read()
        except OSError:
            continue
        if int(stat[1]) == daemon_pid and b"--api-front" in cmdline:
            return int(entry)
    raise SystemExit("rtvisord's API front process not found")


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--inmates", required=True)
    ap.add_argument("--vms", type=int, default=50)
    ap.add_argument("--scrapes", type=int, default=200)
    ap.add_argument("--out")
    a = ap.parse_args()
    started = time.time()
    work = tempfile.mkdtemp(prefix="bench-metrics-", dir="/tmp")
    vms, run = f"{work}/vms", f"{work}/run"
    os.makedirs(vms)
    for i in range(a.vms):
        with open(f"{vms}/m{i:02}.json", "w") as f:
            json.dump({"name": f"m{i:02}", "memory_mib": 16, "kernel": f"{a.inmates}/idle.elf", "cmdline": "idle.heartbeat=0",
                       "autostart": True, "stop_timeout_s": 5}, f)
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    with open(f"{work}/rtvisord.json", "w") as f:
        json.dump({"metrics": {"tcp": {"enabled": True, "port": port}}}, f)
    daemon = subprocess.Popen([f"{a.bin_dir}/rtvisord", "--definitions", vms, "--run-directory", run,
                               "--vmm", f"{a.bin_dir}/rtvisor-vmm", "--settings", f"{work}/rtvisord.json"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tcp = lambda: http.client.HTTPConnection("127.0.0.1", port, timeout=30)  # noqa: E731
    unix = lambda: UnixHTTPConnection(f"{run}/metrics.sock")  # noqa: E731
    try:
        deadline = time.time() + 180
        while True:
            try:
                stats = json.loads(get(tcp, "/v1/stats")[1])
                if sum(v["state"] == "running" for v in stats["vms"]) == a.vms:
                    break
            except (OSError, SystemExit):
                pass
            if time.time() > deadline or daemon.poll() is not None:
                raise SystemExit(f"{a.vms} VMs did not all run within 180 s")
            time.sleep(1)
        time.sleep(3)  # the starts' own work settles
        front = front_pid(daemon.pid)

        def measure(connect, target):
            cpu0 = cpu_seconds(daemon.pid), cpu_seconds(front)
            t0 = time.monotonic()
            times, size = [], 0
            for _ in range(a.scrapes):
                dt, body = get(connect, target)
                times.append(dt); size = len(body)
            wall = time.monotonic() - t0
            return times, size, wall, (cpu_seconds(daemon.pid) - cpu0[0], cpu_seconds(front) - cpu0[1])

        # Idle: both processes' CPU over the time the scrapes will take (estimated by one round).
        probe = measure(tcp, "/metrics")
        idle_wall = max(5.0, probe[2])
        cpu0 = cpu_seconds(daemon.pid), cpu_seconds(front)
        time.sleep(idle_wall)
        idle = ((cpu_seconds(daemon.pid) - cpu0[0]) / idle_wall, (cpu_seconds(front) - cpu0[1]) / idle_wall)
        results = {}
        for name, connect, target in [("/metrics, TCP listener", tcp, "/metrics"), ("/metrics, metrics.sock", unix, "/metrics"),
                                      ("/v1/stats (JSON), metrics.sock", unix, "/v1/stats")]:
            results[name] = measure(connect, target)
        samples = sum(1 for l in get(tcp, "/metrics")[1].decode().splitlines() if l and not l.startswith("#"))
    finally:
        daemon.send_signal(signal.SIGINT)
        try:
            daemon.wait(120)
        except subprocess.TimeoutExpired:
            daemon.kill()
        shutil.rmtree(work, ignore_errors=True)

    model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    build = "debug build" if "/debug" in a.bin_dir else f"executables from {a.bin_dir}"
    lines = [f"\n## bench-metrics, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}\n",
             f"Machine: {os.cpu_count()} CPUs, {model}, kernel {os.uname().release}; {build}. One rtvisord with "
             f"{a.vms} idle VMs (the `idle` inmate, 16 MiB, all running), {a.scrapes} requests one after the other per row, "
             f"a new connection each (Python http.client on the same CPUs). The /metrics answer: {results['/metrics, TCP listener'][1]} "
             f"bytes, {samples} samples. CPU per request: rtvisord (the stats collection) and its API front (routing, "
             f"rendering, HTTP), from /proc/PID/stat, minus their idle use over the same time "
             f"({idle[0] * 1000:.1f} and {idle[1] * 1000:.1f} ms per second idle).\n",
             "| request | median ms | p99 ms | rtvisord CPU ms per request | API front CPU ms per request |",
             "|---|---|---|---|---|"]
    for name, (times, size, wall, cpu) in results.items():
        per = [max(0.0, (cpu[i] - idle[i] * wall) / a.scrapes) * 1000 for i in range(2)]
        lines.append(f"| {name} | {statistics.median(times) * 1000:.2f} | {percentile(times, 99) * 1000:.2f} | {per[0]:.2f} | {per[1]:.2f} |")
    m, j = results["/metrics, metrics.sock"], results["/v1/stats (JSON), metrics.sock"]
    lines.append(f"\n/metrics over /v1/stats, median time: {statistics.median(m[0]) / statistics.median(j[0]):.2f}×.\n")
    text = "\n".join(lines)
    print(text)
    if a.out:
        with open(a.out, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
