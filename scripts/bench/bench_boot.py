#!/usr/bin/env python3
"""Boot-time, memory-overhead and per-exit benchmarks: rtvisor-vmm vs QEMU (and vs a minimal C
KVM loop for the per-exit cost), same guest, alternating runs, medians and ratios.
Run through scripts/bench-boot.sh, which builds everything first."""
import argparse, json, os, re, select, signal, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qemu_peer import EMULATING, machine_description, qemu_cpu  # noqa: E402
# The features rtvisor's emulating-kvm template hides, as QEMU -cpu flags, and the Linux
# parameters the template adds for Linux guests (docs/cpu-templates.md).
LINUX_EXTRA = " noxsave clearcpuid=cx16,popcnt,smap highres=off" if EMULATING else ""


def spawn_until(cmd, marker, timeout, stdin=subprocess.DEVNULL):
    """Start cmd, return (seconds until `marker` appears on stdout, process)."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=stdin)
    buf = b""
    while True:
        left = timeout - (time.monotonic() - t0)
        if left <= 0:
            p.kill(); p.wait()
            raise RuntimeError(f"{cmd[0]}: no {marker!r} within {timeout}s; output tail: {buf[-500:]!r}")
        r, _, _ = select.select([p.stdout], [], [], min(left, 1.0))
        if r:
            chunk = os.read(p.stdout.fileno(), 65536)
            if not chunk:
                p.wait()
                raise RuntimeError(f"{cmd[0]} exited ({p.returncode}) before {marker!r}; tail: {buf[-500:]!r}")
            buf += chunk
            if marker.encode() in buf:
                return time.monotonic() - t0, p, buf


def finish(p, timeout=30):
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill(); p.wait()
    if p.stdout:
        p.stdout.close()


def memory_overhead_kib(pid, guest_bytes):
    """(RSS, Private_Dirty) of the process minus those of its guest-RAM mapping (the largest
    anonymous mapping of at least the guest's size), in KiB. RSS minus guest RAM is how
    Firecracker states VMM overhead; it counts the VMM binary's file pages, which every VM
    process shares. Private_Dirty minus guest RAM is what one more VM really costs."""
    rss = dirty = guest_rss = guest_dirty = 0
    size, anon = 0, False
    cur = {}
    def close():
        nonlocal guest_rss, guest_dirty
        if anon and size >= guest_bytes and cur.get("Rss", 0) > guest_rss:
            guest_rss, guest_dirty = cur.get("Rss", 0), cur.get("Private_Dirty", 0)
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$", line)
            if m:
                close()
                size = int(m.group(2), 16) - int(m.group(1), 16)
                anon = m.group(3).strip() == ""
                cur = {}
                continue
            key = line.split(":")[0]
            if key in ("Rss", "Private_Dirty"):
                kib = int(line.split()[1])
                cur[key] = kib
                if key == "Rss":
                    rss += kib
                else:
                    dirty += kib
    close()
    return rss - guest_rss, dirty - guest_dirty


def qemu_cmd(kernel, cmdline, mem_mib, initrd=None, vcpus=1):
    cmd = ["qemu-system-x86_64", "-M", "microvm,acpi=off", "-enable-kvm", "-cpu", qemu_cpu(),
           "-smp", str(vcpus), "-m", str(mem_mib), "-nodefaults", "-no-user-config", "-nographic",
           "-serial", "stdio", "-no-reboot", "-kernel", kernel, "-append", cmdline,
           "-device", "isa-debug-exit,iobase=0xf4,iosize=1"]
    if initrd:
        cmd += ["-initrd", initrd]
    return cmd


def rtvisor_cmd(vmm, tmp, name, kernel, cmdline, mem_mib, initrd=None, vcpus=1):
    d = {"name": name, "vcpus": vcpus, "memory_mib": mem_mib, "kernel": kernel, "cmdline": cmdline}
    if initrd:
        d["initrd"] = initrd
    path = os.path.join(tmp, name + ".json")
    with open(path, "w") as f:
        json.dump(d, f)
    return [vmm, "--config", path, "--no-console-input", "--log-level", "error"]


def med(xs):
    return statistics.median(xs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vmm", required=True)
    ap.add_argument("--c-loop", required=True)
    ap.add_argument("--inmates", required=True)
    ap.add_argument("--guest", help="guest-linux dir (vmlinux, initramfs.cpio); omit to skip Linux")
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--linux-runs", type=int, default=3)
    ap.add_argument("--out", required=True, help="markdown file to append results to")
    a = ap.parse_args()
    a.vmm, a.c_loop, a.inmates = map(os.path.abspath, (a.vmm, a.c_loop, a.inmates))
    if a.guest:
        a.guest = os.path.abspath(a.guest)
    # A freshly linked binary's pages are dirty in the page cache until written back, and smaps
    # then counts them as Private_Dirty of every process mapping them: flush first.
    os.sync()
    tmp = tempfile.mkdtemp(prefix="rtvisor-bench-")
    hello = os.path.join(a.inmates, "hello.elf")
    pioloop = os.path.join(a.inmates, "pioloop.elf")
    rows = []

    # 1. Inmate: process start to the inmate's PASS line (it prints it right after its marker).
    r_t, q_t = [], []
    for i in range(a.runs):
        for who in (["r", "q"] if i % 2 == 0 else ["q", "r"]):
            cmd = rtvisor_cmd(a.vmm, tmp, "hello", hello, "bench=1", 64) if who == "r" else qemu_cmd(hello, "bench=1", 64)
            t, p, _ = spawn_until(cmd, "INMATE hello PASS", 60)
            finish(p)
            (r_t if who == "r" else q_t).append(t * 1000)
    rows.append(("inmate `hello`: process start → marker (ms)", med(r_t), med(q_t)))

    # 1b. Where rtvisor's start-up time goes: --trace-startup, origin = just before the spawn.
    steps = {}
    step_re = re.compile(r"startup trace \(ms\): (.*); total ([0-9.]+)")
    for i in range(a.runs):
        cmd = rtvisor_cmd(a.vmm, tmp, "hello", hello, "bench=1", 64)
        cmd = [("notice" if x == "error" else x) for x in cmd]  # the trace is logged at notice
        cmd = cmd[:1] + ["--trace-startup", "--trace-origin-ns", str(time.monotonic_ns())] + cmd[1:]
        p = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
        m = step_re.search(p.stderr)
        if not m:
            continue
        for part in m.group(1).split(", "):
            name, _, ms = part.rpartition(" ")
            steps.setdefault(name, []).append(float(ms))
        steps.setdefault("total (to the boot marker)", []).append(float(m.group(2)))

    # 2. Memory overhead while a guest runs (pioloop with a huge count keeps it busy).
    mem = {"r": ([], []), "q": ([], [])}
    for i in range(max(3, a.runs // 3)):
        for who in ("r", "q"):
            cmd = rtvisor_cmd(a.vmm, tmp, "mem", pioloop, "count=1000000000", 64) if who == "r" else qemu_cmd(pioloop, "count=1000000000", 64)
            p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
            time.sleep(1.5)
            rss, dirty = memory_overhead_kib(p.pid, 64 << 20)
            p.send_signal(signal.SIGKILL); p.wait()
            mem[who][0].append(rss / 1024)
            mem[who][1].append(dirty / 1024)
    rows.append(("VMM memory overhead, RSS − guest RAM (MiB)", med(mem["r"][0]), med(mem["q"][0])))
    rows.append(("VMM memory overhead, Private_Dirty − guest RAM (MiB)", med(mem["r"][1]), med(mem["q"][1])))

    # 2b. Ten VMs at once: PSS divides the shared pages (the VMM's text, the Swift runtime) among
    # the processes that map them, so PSS − guest RAM is what each further VM costs.
    pss = {}
    for who in ("r", "q"):
        procs = []
        for i in range(10):
            cmd = rtvisor_cmd(a.vmm, tmp, f"pss{i}", pioloop, "count=1000000000", 64) if who == "r" else qemu_cmd(pioloop, "count=1000000000", 64)
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL))
        time.sleep(3)
        per = []
        for p in procs:
            rollup = open(f"/proc/{p.pid}/smaps_rollup").read()
            total = int(re.search(r"^Pss:\s+(\d+)", rollup, re.M).group(1))
            rss, _ = memory_overhead_kib(p.pid, 64 << 20)
            guest = int(re.search(r"^Rss:\s+(\d+)", rollup, re.M).group(1)) - rss
            per.append((total - guest) / 1024)
        for p in procs:
            p.send_signal(signal.SIGKILL); p.wait()
        pss[who] = med(per)
    rows.append(("VMM memory with 10 VMs running, PSS − guest RAM per VM (MiB)", pss["r"], pss["q"]))

    # 3. Per-exit cost measured in the guest (TSC), rtvisor vs the minimal C loop.
    r_e, c_e = [], []
    pat = re.compile(rb"(\d+) ns per write")
    for i in range(a.runs):
        for who in (["r", "c"] if i % 2 == 0 else ["c", "r"]):
            cmd = rtvisor_cmd(a.vmm, tmp, "pio", pioloop, "count=20000", 64) if who == "r" else [a.c_loop, pioloop, "count=20000"]
            t, p, buf = spawn_until(cmd, "INMATE pioloop PASS", 120)
            finish(p)
            (r_e if who == "r" else c_e).append(int(pat.search(buf).group(1)) / 1000)
    exit_row = ("PIO exit round trip in the guest (µs), vs minimal C loop", med(r_e), med(c_e))

    # 4. The minimal Linux: process start to RTVISOR_INIT_MARKER.
    linux_row = None
    if a.guest:
        vmlinux = os.path.join(a.guest, "vmlinux")
        initrd = os.path.join(a.guest, "initramfs.cpio")
        base = "console=ttyS0 panic=-1 mitigations=off nopti rodata=off emukvm.pvmsys emukvm.exit_port=0xf4"
        r_l, q_l = [], []
        for i in range(a.linux_runs):
            for who in (["r", "q"] if i % 2 == 0 else ["q", "r"]):
                if who == "r":
                    cmd = rtvisor_cmd(a.vmm, tmp, "linux", vmlinux, base, 64, initrd)
                else:
                    cmd = qemu_cmd(vmlinux, base + LINUX_EXTRA, 64, initrd)
                t, p, _ = spawn_until(cmd, "RTVISOR_INIT_MARKER", 900)
                finish(p, 300)
                (r_l if who == "r" else q_l).append(t)
                print(f"linux {who}: {t:.1f}s", file=sys.stderr)
        linux_row = ("minimal Linux 6.1: process start → init marker (s)", med(r_l), med(q_l))

    with open(a.out, "a") as f:
        f.write(f"\n## bench-boot, {time.strftime('%Y-%m-%d %H:%M %Z')}\n\n")
        f.write(f"Machine: {machine_description()}. QEMU: "
                f"{subprocess.run(['qemu-system-x86_64', '--version'], capture_output=True, text=True).stdout.splitlines()[0]}, "
                f"`-M microvm,acpi=off -enable-kvm -cpu {qemu_cpu()}`. Medians of {a.runs} alternating runs "
                f"({a.linux_runs} for Linux).\n\n")
        f.write("| measurement | rtvisor | peer | rtvisor / peer |\n|---|---|---|---|\n")
        for name, r, q in rows + ([linux_row] if linux_row else []):
            f.write(f"| {name} | {r:.2f} | {q:.2f} (QEMU) | {r / q:.2f}× |\n")
        name, r, c = exit_row
        f.write(f"| {name} | {r:.2f} | {c:.2f} (C loop) | {r / c:.2f}× |\n")
        if steps:
            f.write(f"\nrtvisor's start-up, step by step (`--trace-startup`, medians of {a.runs} runs, ms; "
                    "the first step is exec, the Swift runtime and argument parsing):\n\n| step | ms |\n|---|---|\n")
            for name, xs in steps.items():
                f.write(f"| {name} | {med(xs):.2f} |\n")
    print(open(a.out).read().split("## bench-boot")[-1])


if __name__ == "__main__":
    main()
