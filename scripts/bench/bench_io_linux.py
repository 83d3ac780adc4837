#!/usr/bin/env python3
"""fio and iperf3 in the minimal Linux guest, rtvisor vs QEMU: same kernel, same benchmark
initramfs (scripts/bench/bench_linux_initramfs.py), same raw disk image, same tap, alternating
runs, medians and ratios. Run through scripts/bench-io-linux.sh, which builds everything.

The guest (/checks/bench.sh, rtvisor.check=bench) runs one fio process (1 MiB sequential writes,
1 MiB sequential reads, 4 KiB random reads on /dev/vda; O_DIRECT, psync, queue depth 1) and
iperf3 -c both ways against an iperf3 server that this script runs in a network namespace on the
tap's host side, and prints the raw JSON between BENCH_JSON_BEGIN/END lines; it is parsed here.

Results go to docs/benchmarks.md only for a real measurement (both VMMs, hardware KVM that runs
guest kernel code natively). Under QEMU TCG, on the emulating development KVM, or with one VMM
only, the table is printed and not recorded (--record records it anyway, marked as such)."""
import argparse, json, os, re, shutil, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qemu_peer import EMULATING, qemu_cpu  # noqa: E402
NS = f"rtvbenchl{os.getpid()}"
TAP = "rtvbl0"
MAC = "02:00:00:be:0c:02"
HOST_IP, GUEST_IP = "10.77.0.1", "10.77.0.2"
BASE_CMDLINE = "console=ttyS0 panic=-1 mitigations=off nopti rodata=off emukvm.pvmsys emukvm.exit_port=0xf4"
# rtvisor's emulating-kvm CPU template hides these features from CPUID and adds the kernel-side
# parameters itself (docs/cpu-templates.md); QEMU gets the same mask by hand, as in bench_boot.py.
QEMU_LINUX_EXTRA = " noxsave clearcpuid=cx16,popcnt,smap highres=off" if EMULATING else ""
KEYS = [("fio_seqwrite_mbps", "fio 1 MiB sequential writes, MB/s"),
        ("fio_seqread_mbps", "fio 1 MiB sequential reads, MB/s"),
        ("fio_randread4k_iops", "fio 4 KiB random reads, IOPS"),
        ("fio_randread4k_lat_us", "fio 4 KiB random reads, mean latency µs"),
        ("iperf_tx_mbps", "iperf3 guest → host, Mbit/s"),
        ("iperf_rx_mbps", "iperf3 host → guest (-R), Mbit/s")]


def sh(*cmd, check=True):
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def in_ns(cmd):
    return ["ip", "netns", "exec", NS] + cmd


def rtvisor_cmd(vmm, tmp, kernel, initrd, cmdline, mem, disk):
    d = {"name": "benchlinux", "memory_mib": mem, "kernel": kernel, "initrd": initrd, "cmdline": cmdline,
         "disks": [{"path": disk}], "nets": [{"tap": TAP, "mac": MAC}]}
    path = os.path.join(tmp, "benchlinux.json")
    with open(path, "w") as f:
        json.dump(d, f)
    return [vmm, "--config", path, "--no-console-input"]


def qemu_cmd(accel, kernel, initrd, cmdline, mem, disk):
    cpu = ["-enable-kvm", "-cpu", qemu_cpu()] if accel == "kvm" else ["-accel", "tcg"]
    if accel == "kvm":
        cmdline += QEMU_LINUX_EXTRA
    return (["qemu-system-x86_64", "-M", "pc"] + cpu +
            ["-m", str(mem), "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot",
             "-device", "isa-debug-exit,iobase=0xf4,iosize=1", "-kernel", kernel, "-initrd", initrd, "-append", cmdline,
             "-drive", f"file={disk},if=none,id=d0,format=raw", "-device", "virtio-blk-pci,drive=d0,disable-legacy=on",
             "-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no,vhost=off",
             "-device", f"virtio-net-pci,netdev=n0,disable-legacy=on,mac={MAC}"])


def parse(console):
    """(results dict, problems list) from a guest console."""
    text = console.replace("\r", "")
    # Kernel messages on the same console: the guest turns them off during the check, but one
    # printed before that, or mid-line, must not break the JSON.
    text = re.sub(r"\[ *\d+\.\d{6}\] [^\n]*\n", "", text)
    blocks = {m.group(1): (m.group(2), int(m.group(3))) for m in
              re.finditer(r"^BENCH_JSON_BEGIN (\S+)\n(.*?)^BENCH_JSON_END \1 status=(\d+)$", text, re.S | re.M)}
    r, problems = {}, []
    if "fio" in blocks:
        body, st = blocks["fio"]
        try:
            j = json.loads(body[body.index("{"):])
            jobs = {x["jobname"]: x for x in j["jobs"]}
            r["fio_seqwrite_mbps"] = jobs["seqwrite1m"]["write"]["bw_bytes"] / 1e6
            r["fio_seqread_mbps"] = jobs["seqread1m"]["read"]["bw_bytes"] / 1e6
            r["fio_randread4k_iops"] = jobs["randread4k"]["read"]["iops"]
            r["fio_randread4k_lat_us"] = jobs["randread4k"]["read"]["lat_ns"]["mean"] / 1e3
            errs = [x["error"] for x in j["jobs"] if x.get("error")]
            if errs or st:
                problems.append(f"fio status {st}, job errors {errs}")
        except (ValueError, KeyError) as e:
            problems.append(f"fio JSON: {e!r}; first lines: {body[:400]!r}")
    for d in ("tx", "rx"):
        if f"iperf_{d}" in blocks:
            body, st = blocks[f"iperf_{d}"]
            try:
                j = json.loads(body[body.index("{"):])
                if "error" in j:
                    problems.append(f"iperf3 {d}: {j['error']}")
                r[f"iperf_{d}_mbps"] = j["end"]["sum_received"]["bits_per_second"] / 1e6
            except (ValueError, KeyError) as e:
                problems.append(f"iperf3 {d} JSON (status {st}): {e!r}; {body[:400]!r}")
    m = re.search(r"^RTVISOR_CHECK_END bench status=(\d+)$", text, re.M)
    if not m:
        problems.append("no RTVISOR_CHECK_END bench line")
    elif m.group(1) != "0":
        problems.append(f"check status {m.group(1)}")
    return r, problems


def run_guest(cmd, timeout, log):
    """Run a VMM in the namespace with an iperf3 server beside it; return (status, console,
    stderr, seconds). The console streams into `log` (tail -f it: a run on slow hardware)."""
    srv_log = open(log + ".iperf3-server", "w")
    srv = subprocess.Popen(in_ns(["iperf3", "-s", "-B", HOST_IP]), stdout=srv_log, stderr=subprocess.STDOUT)
    t0 = time.monotonic()
    with open(log, "w") as out_f, open(log + ".stderr", "w") as err_f:
        p = subprocess.Popen(in_ns(cmd), stdout=out_f, stderr=err_f, stdin=subprocess.DEVNULL)
        try:
            st = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill(); p.wait()
            st = "timeout"
        finally:
            secs = time.monotonic() - t0
            if p.poll() is None:
                p.kill(); p.wait()
            srv.terminate()
            try:
                srv.wait(timeout=10)
            except subprocess.TimeoutExpired:
                srv.kill(); srv.wait()
            srv_log.close()
    out = open(log, errors="replace").read()
    err = open(log + ".stderr", errors="replace").read()
    return st, out, err, secs


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vmm", help="rtvisor-vmm binary (omit with --peer-only)")
    ap.add_argument("--guest", required=True, help="build-guest-kernel.sh output dir (vmlinux)")
    ap.add_argument("--initrd", required=True, help="the benchmark initramfs")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--secs", type=int, default=10)
    ap.add_argument("--accel", choices=["kvm", "tcg"], default="kvm")
    ap.add_argument("--peer-only", action="store_true", help="QEMU only")
    ap.add_argument("--rtvisor-only", action="store_true", help="rtvisor only (a functional run)")
    ap.add_argument("--memory", type=int, default=256, help="guest MiB")
    ap.add_argument("--timeout", type=int, help="per guest run, seconds")
    ap.add_argument("--out", required=True)
    ap.add_argument("--netns", help="name of the network namespace to create (default: rtvbenchl<pid>)")
    ap.add_argument("--record", action="store_true", help="append to --out even when it is not a real measurement")
    ap.add_argument("--logs", help="keep consoles here (default: a temporary directory, kept on failure)")
    a = ap.parse_args()
    global NS
    NS = a.netns or NS
    if a.accel == "tcg" and not a.rtvisor_only:
        a.peer_only = True  # rtvisor needs KVM
    if a.accel == "tcg" and a.rtvisor_only:
        sys.exit("--accel tcg is QEMU only")
    peers = ["qemu"] if a.peer_only else ["rtvisor"] if a.rtvisor_only else ["rtvisor", "qemu"]
    if "rtvisor" in peers and not a.vmm:
        sys.exit("--vmm is required")
    kernel = os.path.join(a.guest, "vmlinux")
    # Emulating KVM: boot ~1–2 min, every process ~5 s; TCG and real KVM: seconds.
    timeout = a.timeout or ((1800 if EMULATING and a.accel == "kvm" else 300) + 8 * a.secs)
    logs = a.logs or tempfile.mkdtemp(prefix="rtvisor-bench-io-linux-logs-")
    os.makedirs(logs, exist_ok=True)
    cmdline = (f"{BASE_CMDLINE} rtvisor.check=bench rtvisor.bench_secs={a.secs} "
               f"rtvisor.bench_host={HOST_IP} rtvisor.bench_ip={GUEST_IP}/24")
    results = {p: {} for p in peers}
    times = {p: [] for p in peers}
    failed = False

    with tempfile.TemporaryDirectory(prefix="rtvisor-bench-io-linux-") as tmp:
        disk = os.path.join(tmp, "disk.img")
        with open(disk, "wb") as f:
            f.truncate(256 << 20)
        sh("ip", "netns", "add", NS)
        try:
            sh(*in_ns(["ip", "link", "set", "lo", "up"]))
            sh(*in_ns(["ip", "tuntap", "add", "dev", TAP, "mode", "tap"]))
            sh(*in_ns(["ip", "addr", "add", f"{HOST_IP}/24", "dev", TAP]))
            sh(*in_ns(["ip", "link", "set", TAP, "up"]))
            sh(*in_ns(["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]), check=False)
            for i in range(a.runs):
                for p in (peers if i % 2 == 0 else peers[::-1]):
                    cmd = rtvisor_cmd(a.vmm, tmp, kernel, a.initrd, cmdline, a.memory, disk) if p == "rtvisor" else \
                        qemu_cmd(a.accel, kernel, a.initrd, cmdline, a.memory, disk)
                    log = os.path.join(logs, f"{p}-{i}.log")
                    print(f"{p} run {i}: started {time.strftime('%H:%M:%S')} (timeout {timeout} s, console → {log})", file=sys.stderr)
                    st, out, err, secs = run_guest(cmd, timeout, log)
                    r, problems = parse(out)
                    print(f"{p} run {i}: status {st}, {secs:.1f} s", file=sys.stderr)
                    if r:
                        print(f"BENCH linux {p} " + " ".join(f"{k}={v:.1f}" for k, v in r.items()))
                    # QEMU's isa-debug-exit turns the guest's power-off (0) into status 1.
                    ok_status = 0 if p == "rtvisor" else 1
                    if problems or st != ok_status or len(r) != len(KEYS):
                        failed = True
                        print(f"{p} run {i} FAILED: status {st}; {'; '.join(problems) or 'missing results'}\n"
                              f"console tail:\n{out[-2500:]}\nstderr tail:\n{err[-1500:]}", file=sys.stderr)
                        break
                    times[p].append(secs)
                    for k, v in r.items():
                        results[p].setdefault(k, []).append(v)
                if failed:
                    break
        finally:
            sh("ip", "netns", "del", NS, check=False)

    if failed:
        sys.exit(f"bench-io-linux: failed; consoles in {logs}")

    machine = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True, text=True).stdout.strip()
    kvm = "kvm_pvm (nested, emulates guest ring 0)" if EMULATING else "kvm"
    qv = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    real = a.accel == "kvm" and not EMULATING and peers == ["rtvisor", "qemu"]
    qaccel = f"-enable-kvm -cpu {qemu_cpu()}" if a.accel == "kvm" else "-accel tcg"
    text = [f"\n## bench-io-linux, {time.strftime('%Y-%m-%d %H:%M %Z')}\n\n"]
    if not real:
        why = ("QEMU TCG (software emulation)" if a.accel == "tcg" else
               "this host's KVM emulates guest ring-0 code" if EMULATING else "one VMM only")
        text.append(f"**Not a measurement** ({why}): a functional run of the script; the numbers say nothing "
                    f"about virtio performance.\n\n")
    text.append(f"Machine: {os.cpu_count()} CPUs, {machine}, host KVM: {kvm}. Guest: the minimal Linux "
                f"(`vmlinux`, 1 vCPU, {a.memory} MiB) with the benchmark initramfs (Debian fio "
                f"{sh('dpkg-query', '-W', '-f=${Version}', 'fio').stdout}, iperf3 {sh('dpkg-query', '-W', '-f=${Version}', 'iperf3').stdout}). "
                f"fio on `/dev/vda` (a 256 MiB sparse raw file in {tempfile.gettempdir()}; O_DIRECT, psync, "
                f"queue depth 1, {a.secs} s per job), iperf3 (TCP, 1 stream, {a.secs} s each way) against a server "
                f"in a netns on the tap. Peer: {qv}, `-M pc {qaccel}`, `virtio-blk-pci` and `virtio-net-pci` "
                f"(modern only, tap with `vhost=off`). Medians of {a.runs} alternating runs; wall time per run "
                + ", ".join(f"{p} {med(times[p]):.0f} s" for p in peers) + ".\n\n")
    if len(peers) == 2:
        text.append("| measurement | rtvisor | QEMU | rtvisor / QEMU |\n|---|---|---|---|\n")
        for key, label in KEYS:
            r, q = med(results["rtvisor"].get(key, [])), med(results["qemu"].get(key, []))
            text.append(f"| {label} | {r:.1f} | {q:.1f} | {(f'{r / q:.2f}×' if q else '–')} |\n")
    else:
        p = peers[0]
        text.append(f"| measurement | {'rtvisor' if p == 'rtvisor' else 'QEMU'} |\n|---|---|\n")
        for key, label in KEYS:
            text.append(f"| {label} | {med(results[p].get(key, [])):.1f} |\n")
    text = "".join(text)
    print(text)
    if real or a.record:
        with open(a.out, "a") as f:
            f.write(text)
        print(f"appended to {a.out}", file=sys.stderr)
    else:
        print(f"not appended to {a.out} (not a real measurement; --record to append anyway)", file=sys.stderr)
    if a.logs:
        print(f"consoles: {logs}", file=sys.stderr)
    else:
        shutil.rmtree(logs, ignore_errors=True)  # kept only on failure, or in --logs DIR


if __name__ == "__main__":
    main()
