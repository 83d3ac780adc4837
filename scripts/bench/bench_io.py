#!/usr/bin/env python3
"""Block and network throughput measured by the virtio inmates, rtvisor vs QEMU (-enable-kvm,
virtio-blk-pci and virtio-net-pci on a tap with vhost=off), same inmate, same image, same tap,
alternating runs, medians and ratios. Run through scripts/bench-io.sh, which builds everything.

Each rtvisor run is done twice, once per doorbell path (--notify exit, the default, and
--notify ioeventfd), so the table also answers whether ioeventfd helps."""
import argparse, json, os, re, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qemu_peer import EMULATING, qemu_cpu  # noqa: E402
NS = f"rtvbench{os.getpid()}"
TAP = "rtvb0"
MAC = "02:00:00:be:0c:01"


def sh(*cmd, check=True):
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def run(cmd, timeout, netns=False):
    if netns:
        cmd = ["ip", "netns", "exec", NS] + cmd
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def parse(kind, out):
    m = re.search(rf"BENCH {kind} (.*)", out)
    if not m:
        return None
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))}


def rtvisor(vmm, tmp, kernel, cmdline, notify, disk=None, net=False):
    d = {"name": "bench", "memory_mib": 64, "kernel": kernel, "cmdline": cmdline}
    if disk:
        d["disks"] = [{"path": disk}]
    if net:
        d["nets"] = [{"tap": TAP, "mac": MAC}]
    path = os.path.join(tmp, "bench.json")
    with open(path, "w") as f:
        json.dump(d, f)
    return [vmm, "--config", path, "--no-console-input", "--notify", notify]


def qemu(kernel, cmdline, disk=None, net=False):
    cmd = ["qemu-system-x86_64", "-M", "pc", "-enable-kvm", "-cpu", qemu_cpu(), "-m", "64",
           "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot",
           "-device", "isa-debug-exit,iobase=0xf4,iosize=1", "-kernel", kernel, "-append", cmdline]
    if disk:
        cmd += ["-drive", f"file={disk},if=none,id=d0,format=raw", "-device", "virtio-blk-pci,drive=d0,disable-legacy=on"]
    if net:
        cmd += ["-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no,vhost=off",
                "-device", f"virtio-net-pci,netdev=n0,disable-legacy=on,mac={MAC}"]
    return cmd


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vmm", required=True)
    ap.add_argument("--inmates", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--secs", type=int, default=3)
    ap.add_argument("--out", required=True)
    ap.add_argument("--no-net", action="store_true")
    a = ap.parse_args()
    blk = os.path.join(a.inmates, "virtio-blk.elf")
    netk = os.path.join(a.inmates, "virtio-net.elf")
    peers = ["rtvisor", "rtvisor-ioeventfd", "qemu"]
    results = {p: {} for p in peers}

    with tempfile.TemporaryDirectory(prefix="rtvisor-bench-io-") as tmp:
        disk = os.path.join(tmp, "disk.img")
        with open(disk, "wb") as f:
            f.truncate(256 << 20)
        cmdline = f"blk.mode=bench bench.secs={a.secs}"
        for i in range(a.runs):
            for p in peers:
                cmd = qemu(blk, cmdline, disk=disk) if p == "qemu" else \
                    rtvisor(a.vmm, tmp, blk, cmdline, "ioeventfd" if p.endswith("ioeventfd") else "exit", disk=disk)
                st, out, err = run(cmd, 600)
                r = parse("blk", out)
                if r is None:
                    sys.exit(f"{p} blk run {i}: no BENCH line (status {st}); tail: {out[-800:]} {err[-800:]}")
                print(f"blk {p} run {i}: {r}", file=sys.stderr)
                for k, v in r.items():
                    results[p].setdefault(k, []).append(v)

        if not a.no_net:
            sh("ip", "netns", "add", NS)
            try:
                sh("ip", "netns", "exec", NS, "ip", "tuntap", "add", "dev", TAP, "mode", "tap")
                sh("ip", "netns", "exec", NS, "ip", "link", "set", TAP, "up")
                sh("ip", "netns", "exec", NS, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", check=False)
                echo_py = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "net-echo.py")
                cmdline = f"net.mode=bench bench.secs={a.secs}"
                for i in range(a.runs):
                    for p in peers:
                        ready = os.path.join(tmp, "ready")
                        if os.path.exists(ready):
                            os.remove(ready)
                        echo = subprocess.Popen(["ip", "netns", "exec", NS, "python3", echo_py, TAP, "--flood",
                                                 "--timeout", "120", "--ready-file", ready],
                                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                        for _ in range(100):
                            if os.path.exists(ready):
                                break
                            time.sleep(0.05)
                        cmd = qemu(netk, cmdline, net=True) if p == "qemu" else \
                            rtvisor(a.vmm, tmp, netk, cmdline, "ioeventfd" if p.endswith("ioeventfd") else "exit", net=True)
                        st, out, err = run(cmd, 600, netns=True)
                        echo.terminate()
                        echo_out = echo.communicate(timeout=30)[0]
                        r = parse("net", out)
                        if r is None:
                            sys.exit(f"{p} net run {i}: no BENCH line (status {st}); tail: {out[-800:]} {err[-800:]} echo: {echo_out[-400:]}")
                        print(f"net {p} run {i}: {r}", file=sys.stderr)
                        for k, v in r.items():
                            results[p].setdefault(k, []).append(v)
            finally:
                sh("ip", "netns", "del", NS, check=False)

    labels = [("randread4k_iops", "blk 4 KiB random reads, IOPS (1 outstanding)"),
              ("seqread_mbps", "blk 1 MiB sequential reads, MB/s"),
              ("seqwrite_mbps", "blk 1 MiB sequential writes, MB/s"),
              ("tx_fps", "net guest → tap, frames/s (1514 B)"),
              ("tx_mbps", "net guest → tap, MB/s"),
              ("rx_fps", "net tap → guest, frames/s (1514 B)"),
              ("rx_mbps", "net tap → guest, MB/s")]
    machine = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True, text=True).stdout.strip()
    kvm = "kvm_pvm (nested, emulates guest ring 0)" if EMULATING else "kvm"
    qv = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    with open(a.out, "a") as f:
        f.write(f"\n## bench-io, {time.strftime('%Y-%m-%d %H:%M %Z')}\n\n")
        f.write(f"Machine: {os.cpu_count()} CPUs, {machine}, host KVM: {kvm}. Peer: {qv}, `-M pc -enable-kvm -cpu {qemu_cpu()}`, "
                f"`virtio-blk-pci` (raw file, default cache) and `virtio-net-pci` (tap, `vhost=off`), modern only. "
                f"Guest: the virtio-blk/virtio-net inmates' bench modes ({a.secs} s per phase, polled completions). "
                f"Disk: a 256 MiB sparse file in {tempfile.gettempdir()}. Net peer: scripts/net-echo.py --flood in a netns. "
                f"Medians of {a.runs} alternating runs.\n\n")
        f.write("| measurement | rtvisor (exit) | rtvisor (ioeventfd) | QEMU | rtvisor / QEMU | ioeventfd / exit |\n|---|---|---|---|---|---|\n")
        for key, label in labels:
            r, e, q = (med(results[p].get(key, [])) for p in peers)
            if r != r:  # nan: phase not run
                continue
            f.write(f"| {label} | {r:.0f} | {e:.0f} | {q:.0f} | {r / q:.2f}× | {e / r:.2f}× |\n")
        f.write("\nEvery run, in order (rtvisor exit / ioeventfd / QEMU):\n\n")
        for key, label in labels:
            if key not in results["rtvisor"]:
                continue
            f.write(f"- {key}: " + "; ".join(" / ".join(str(results[p][key][i]) for p in peers)
                                          for i in range(len(results["rtvisor"][key]))) + "\n")
        load = os.getloadavg()[0]
        f.write(f"\nLoad average when the run ended: {load:.2f} (2 CPUs).\n")
    print(open(a.out).read().split("## bench-io")[-1])


if __name__ == "__main__":
    main()
