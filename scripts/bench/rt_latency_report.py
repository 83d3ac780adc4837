#!/usr/bin/env python3
"""Summarises the latency inmate's LAT_ lines (guests/inmates/latency.c) for scripts/rt-latency.sh.

    rt_latency_report.py --run NAME=FILE [--run NAME=FILE ...] --md OUT.md --json OUT.json
                         --plot-dir DIR [--meta KEY=VALUE ...]

Each FILE holds one run's LAT_START, LAT_BUCKET and LAT_SUMMARY lines. Prints the Markdown
table (also written to --md), writes the numbers as JSON and one gnuplot data file per run
(DIR/NAME.dat: lower_us upper_us count).

min, avg and max are exact (from LAT_SUMMARY). p99 and p99.99 come from the histogram: each is
the *upper bound* of the bucket holding that rank (buckets are 1 us wide below 1 ms, 10 us below
10 ms, 100 us below 100 ms, 1 ms below 1 s), capped at the exact max; so it may exceed the true
percentile by up to one bucket width, never fall below it.
"""
import argparse
import json
import sys


def parse(path):
    start, summary, buckets = {}, {}, []
    with open(path, errors="replace") as f:
        for line in f:
            line = line.strip()
            if line.startswith("LAT_START "):
                start = kv(line)
            elif line.startswith("LAT_SUMMARY "):
                summary = kv(line)
            elif line.startswith("LAT_BUCKET "):
                _, lo, hi, count = line.split()
                buckets.append((int(lo), int(hi), int(count)))
    if not summary:
        raise ValueError(f"{path}: no LAT_SUMMARY line")
    buckets.sort()
    n = int(summary["n"])
    if sum(c for _, _, c in buckets) != n:
        raise ValueError(f"{path}: the buckets hold {sum(c for _, _, c in buckets)} samples, LAT_SUMMARY says n={n}")
    return start, summary, buckets


def kv(line):
    out = {}
    for word in line.split()[1:]:
        if "=" in word:
            k, v = word.split("=", 1)
            out[k] = v
    return out


def percentile_upper(buckets, n, num, den, max_ns):
    """Upper bound (ns) of the bucket holding rank ceil(n * num / den), capped at max_ns."""
    rank = max(1, -(-n * num // den))
    seen = 0
    for lo, hi, count in buckets:
        seen += count
        if seen >= rank:
            return min(hi, max_ns)
    return max_ns


def stats(name, path):
    start, summary, buckets = parse(path)
    n = int(summary["n"])
    max_ns = int(summary["max_ns"])
    return {
        "configuration": name,
        "mode": summary.get("mode", "?"),
        "idle": summary.get("idle", "?"),
        "period_us": int(summary["period_us"]),
        "n": n,
        "warmup": int(summary.get("warmup", 0)),
        "overruns": int(summary.get("overruns", 0)),
        "early": int(summary.get("early", 0)),
        "elapsed_ms": int(summary.get("elapsed_ms", 0)),
        "tsc_khz": int(summary.get("tsc_khz", 0)),
        "min_ns": int(summary["min_ns"]),
        "avg_ns": int(summary["avg_ns"]),
        "p99_ns": percentile_upper(buckets, n, 99, 100, max_ns),
        "p9999_ns": percentile_upper(buckets, n, 9999, 10000, max_ns),
        "max_ns": max_ns,
        "buckets": buckets,
    }


def us(ns):
    return f"{ns / 1000:.1f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", default=[], metavar="NAME=FILE")
    ap.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--md", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--plot-dir", required=True)
    a = ap.parse_args()

    meta = dict(m.split("=", 1) for m in a.meta)
    runs = []
    for spec in a.run:
        name, path = spec.split("=", 1)
        try:
            runs.append(stats(name, path))
        except (OSError, ValueError, KeyError) as e:
            print(f"rt-latency: {name}: {e}", file=sys.stderr)
    if not runs:
        print("rt-latency: no run to report", file=sys.stderr)
        return 1

    lines = ["## rtvisor timer latency (latency inmate)", ""]
    for key in ("date", "machine", "cpu", "nproc", "kvm", "rt_cpu", "sched_rt_runtime_us", "load", "samples", "period_us"):
        if key in meta:
            lines.append(f"- {key}: {meta[key]}")
    lines += [
        "",
        "| configuration | timer | samples | overruns | min µs | avg µs | p99 µs | p99.99 µs | max µs | run s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in runs:
        lines.append(f"| {r['configuration']} | {r['mode']} | {r['n']} | {r['overruns']} | {us(r['min_ns'])} | "
                     f"{us(r['avg_ns'])} | {us(r['p99_ns'])} | {us(r['p9999_ns'])} | {us(r['max_ns'])} | "
                     f"{r['elapsed_ms'] / 1000:.1f} |")
    by = {r["configuration"]: r for r in runs}
    lines.append("")
    if "partitioned" in by and "unpartitioned" in by:
        p, u = by["partitioned"], by["unpartitioned"]

        def ratio(k):
            return f"{p[k] / u[k]:.2f}" if u[k] > 0 else "n/a"
        lines.append(f"Ratio partitioned / unpartitioned: p99.99 {ratio('p9999_ns')}, max {ratio('max_ns')} "
                     "(below 1: the RT partition helps).")
        lines.append("")
    lines.append("Latency = TSC at the start of the timer interrupt handler minus the programmed deadline. "
                 "min/avg/max are exact; p99 and p99.99 are the upper bound of the histogram bucket holding "
                 "that rank (1 µs buckets below 1 ms, 10 µs below 10 ms, 100 µs below 100 ms, 1 ms below 1 s), "
                 "capped at max. Overruns: interrupts that came after the next deadline had passed "
                 "(those periods are skipped, not sampled).")
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    with open(a.md, "w") as f:
        f.write(text)
    with open(a.json, "w") as f:
        json.dump({"meta": meta, "runs": [{k: v for k, v in r.items() if k != "buckets"} for r in runs]}, f, indent=1)
        f.write("\n")
    for r in runs:
        with open(f"{a.plot_dir}/{r['configuration']}.dat", "w") as f:
            f.write("# lower_us upper_us count  (early samples, one-shot mode only, are left out)\n")
            for lo, hi, count in r["buckets"]:
                if lo >= 0:
                    f.write(f"{lo / 1000:.3f} {hi / 1000:.3f} {count}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
