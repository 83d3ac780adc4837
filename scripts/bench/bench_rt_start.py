#!/usr/bin/env python3
"""Times rtvisord start-up of a real-time VM and an ordinary one (see scripts/bench-rt-start.sh).

Each run starts rtvisord in the foreground (stderr logging where no journald listens) with two autostart
definitions of the idle inmate, `rt` (realtime block on the last CPU) and `plain`, and stamps
every stderr line as it arrives. Reported per VM, from the daemon's exec:
  vmm     the daemon logged "VM X started" (VMM spawned)
  first   the VMM logged "vCPU 0 enters the guest" (RT only: its first KVM_RUN, pinned + FIFO)
  ready   the guest's boot marker ("boot marker: guest X signalled ready")
Prints medians over the runs as a Markdown table.
"""
import argparse, os, select, signal, statistics, subprocess, sys, tempfile, time, json

def run_once(binary, inmates, cpu):
    d = tempfile.mkdtemp(prefix="rtvbench-", dir="/tmp")
    vms = os.path.join(d, "vms"); os.makedirs(vms)
    idle = os.path.join(inmates, "idle.elf")
    rt = {"name": "rt", "memory_mib": 32, "kernel": idle, "cmdline": "idle.heartbeat=0", "autostart": True,
          "stop_timeout_s": 5, "realtime": {"cpus": [cpu], "priority": 80}}
    plain = {"name": "plain", "memory_mib": 32, "kernel": idle, "cmdline": "idle.heartbeat=0", "autostart": True, "stop_timeout_s": 5}
    for v in (rt, plain):
        with open(os.path.join(vms, v["name"] + ".json"), "w") as f: json.dump(v, f)
    t0 = time.monotonic()
    p = subprocess.Popen([os.path.join(binary, "rtvisord"), "--definitions", vms, "--run-directory", os.path.join(d, "run"),
                          "--vmm", os.path.join(binary, "rtvisor-vmm")], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    marks = {}
    want = {("rt", "vmm"): "VM rt started", ("plain", "vmm"): "VM plain started",
            ("rt", "first"): "vCPU 0 enters the guest", ("rt", "ready"): "boot marker: guest rt signalled",
            ("plain", "ready"): "boot marker: guest plain signalled"}
    deadline = t0 + 30
    while len(marks) < len(want) and time.monotonic() < deadline:
        # Never block past the deadline on a daemon that went quiet.
        if not select.select([p.stderr], [], [], max(0.0, deadline - time.monotonic()))[0]: break
        line = p.stderr.readline()
        if not line: break
        if "vCPU 0 enters the guest" in line and "VM_NAME=rt " not in line + " ": continue
        now = (time.monotonic() - t0) * 1000
        for k, text in want.items():
            if k not in marks and text in line: marks[k] = now
    p.send_signal(signal.SIGTERM)
    try: p.wait(timeout=30)
    except subprocess.TimeoutExpired: p.kill()
    subprocess.run(["rm", "-rf", d])
    return marks

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--inmates", required=True)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    a.bin, a.inmates = os.path.abspath(a.bin), os.path.abspath(a.inmates)  # definitions live in a temp dir
    cpu = max(int(c) for c in open("/sys/devices/system/cpu/online").read().strip().replace("-", ",").split(","))
    runs = []
    for i in range(a.runs):
        m = run_once(a.bin, a.inmates, cpu)
        runs.append(m)
        print(f"run {i + 1}: " + ", ".join(f"{k[0]}.{k[1]}={v:.1f} ms" for k, v in sorted(m.items())), file=sys.stderr)
    def med(k):
        vals = [r[k] for r in runs if k in r]
        return f"{statistics.median(vals):.1f}" if vals else "-"
    print(f"\n### rtvisord start-up of a real-time VM ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.uname().release}, {os.cpu_count()} CPUs, median of {a.runs})\n")
    print("| VM | daemon exec → VMM spawned ms | → vCPU 0 in the guest ms | → guest ready ms |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| rt (realtime CPU {cpu}, FIFO 80) | {med(('rt', 'vmm'))} | {med(('rt', 'first'))} | {med(('rt', 'ready'))} |")
    print(f"| plain | {med(('plain', 'vmm'))} | - | {med(('plain', 'ready'))} |")

if __name__ == "__main__":
    main()
