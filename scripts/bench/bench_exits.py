#!/usr/bin/env python3
"""Per-exit cost with the VMM's exit counters on and off (scripts/bench-exits.sh builds both):
the pioloop inmate's port-I/O exits timed in the guest, alternating runs, medians, ratio."""
import argparse, os, re, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_boot import finish, med, rtvisor_cmd, spawn_until  # noqa: E402
from qemu_peer import machine_description  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--on", required=True, help="rtvisor-vmm counting exits")
    ap.add_argument("--off", required=True, help="rtvisor-vmm built with -DRTVISOR_NO_EXIT_COUNTERS")
    ap.add_argument("--inmates", required=True)
    ap.add_argument("--runs", type=int, default=31, help="runs of each build")
    ap.add_argument("--count", type=int, default=20000, help="port writes (exits) per run")
    ap.add_argument("--out", help="markdown file to append results to")
    a = ap.parse_args()
    pioloop = os.path.join(os.path.abspath(a.inmates), "pioloop.elf")
    tmp = tempfile.mkdtemp(prefix="rtvisor-bench-exits-")
    pat = re.compile(rb"(\d+) cycles, (\d+) ns per write")
    ns = {"on": [], "off": []}
    for i in range(a.runs):
        for who in (["on", "off"] if i % 2 == 0 else ["off", "on"]):
            cmd = rtvisor_cmd(a.on if who == "on" else a.off, tmp, "pio", pioloop, f"count={a.count}", 64)
            _, p, buf = spawn_until(cmd, "INMATE pioloop PASS", 120)
            finish(p)
            m = pat.search(buf)
            ns[who].append(int(m.group(2)))
            print(f"run {i + 1} {who}: {m.group(2).decode()} ns per exit", file=sys.stderr)
    on, off = med(ns["on"]), med(ns["off"])
    ratio = on / off
    # The two runs of one round ran back to back: their ratio cancels the load that drifts
    # between rounds on a shared machine.
    paired = med([a / b for a, b in zip(ns["on"], ns["off"])])
    print(f"per-exit cost: counters on {on} ns, off {off} ns, on/off {ratio:.3f}, median of paired ratios {paired:.3f}")
    if not a.out:
        return
    with open(a.out, "a") as f:
        f.write(f"\n## bench-exits, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n")
        f.write(f"Machine: {machine_description()}. The pioloop inmate, {a.count} port writes per run "
                f"(one I/O exit each), timed in the guest with the TSC; medians of {a.runs} alternating runs of each release build "
                f"of rtvisor-vmm: exit counters on (the default) and compiled out (`-DRTVISOR_NO_EXIT_COUNTERS`).\n\n")
        f.write("| measurement | counters on | counters off | on / off | median of paired on / off |\n|---|---|---|---|---|\n")
        f.write(f"| PIO exit round trip in the guest (ns) | {on:.0f} | {off:.0f} | {ratio:.3f}× | {paired:.3f}× |\n\n")
        f.write("Every run (ns per exit), in order: on " + ", ".join(map(str, ns["on"])) + "; off " + ", ".join(map(str, ns["off"])) + ".\n")


if __name__ == "__main__":
    main()
