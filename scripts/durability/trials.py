#!/usr/bin/env python3
"""Durability trials (issue 16): the virtio-blk inmate writes sector after sector, FLUSHes and
prints "ACK <sector>" for each; rtvisor-vmm is killed with SIGKILL at a random moment; every
acknowledged sector must then be in the image with the inmate's pattern. Prints one line per
trial and "N passed, N failed"; exits 1 if any acknowledged sector was lost."""
import argparse, json, os, random, re, select, signal, subprocess, sys, tempfile, time

SECTOR = 512


def fmix32(x):
    x ^= x >> 16; x = (x * 0x85EBCA6B) & 0xFFFFFFFF; x ^= x >> 13; x = (x * 0xC2B2AE35) & 0xFFFFFFFF; x ^= x >> 16
    return x


def pattern(seed, sector):
    """The inmate's sector contents (guests/inmates/virtio-blk.c, `pattern`)."""
    words = (fmix32(seed ^ ((sector * 0x9E3779B1) & 0xFFFFFFFF) ^ ((k * 0x85EBCA77) & 0xFFFFFFFF)) for k in range(SECTOR // 4))
    return b"".join(w.to_bytes(4, "little") for w in words)


def trial(vmm, inmate, work, n, sectors, flush, rng):
    image = os.path.join(work, f"disk-{n}.img")
    with open(image, "wb") as f:
        f.truncate(sectors * SECTOR)
    seed = rng.randrange(1, 2**31)
    definition = {"name": f"durable{n}", "vcpus": 1, "memory_mib": 32, "kernel": inmate,
                  "cmdline": f"blk.mode=durable blk.sectors={sectors} blk.seed={seed} blk.flush={1 if flush else 0}",
                  "disks": [{"path": image}]}
    config = os.path.join(work, f"durable-{n}.json")
    with open(config, "w") as f:
        json.dump(definition, f)
    p = subprocess.Popen([vmm, "--config", config, "--no-console-input", "--log-level", "error"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    out = b""
    # Kill once the guest is writing, at a random point of its run.
    deadline = None
    kill_after_acks = rng.randrange(1, sectors)
    while True:
        r, _, _ = select.select([p.stdout], [], [], 0.05)
        if r:
            chunk = os.read(p.stdout.fileno(), 65536)
            if not chunk:
                break
            out += chunk
        acks = out.count(b"ACK ")
        if deadline is None and acks >= kill_after_acks:
            deadline = time.monotonic() + rng.uniform(0, 0.02)
        if deadline is not None and time.monotonic() >= deadline:
            p.send_signal(signal.SIGKILL)
            break
        if p.poll() is not None and not r:
            break
    p.wait()
    out += p.stdout.read() or b""
    p.stdout.close()
    acked = [int(m) for m in re.findall(rb"ACK (\d+)", out)]
    with open(image, "rb") as f:
        data = f.read()
    lost = [s for s in acked if data[s * SECTOR:(s + 1) * SECTOR] != pattern(seed, s)]
    os.unlink(image); os.unlink(config)
    return len(acked), lost, p.returncode


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vmm", required=True)
    ap.add_argument("--inmate", required=True, help="virtio-blk.elf")
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--sectors", type=int, default=400)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    a = ap.parse_args()
    rng = random.Random(a.seed)
    work = tempfile.mkdtemp(prefix="rtvisor-durable-", dir=os.environ.get("RTVISOR_DURABLE_DIR", "/var/tmp"))
    passed = failed = 0
    total_acked = 0
    for n in range(a.trials):
        flush = n % 2 == 0  # half with FLUSH negotiated, half write-through
        acked, lost, rc = trial(os.path.abspath(a.vmm), os.path.abspath(a.inmate), work, n, a.sectors, flush, rng)
        total_acked += acked
        ok = not lost and acked > 0
        passed += ok
        failed += not ok
        print(f"trial {n + 1}: {'flush' if flush else 'write-through'}, killed after {acked} acknowledged sectors "
              f"(status {rc}), {len(lost)} lost{': ' + str(lost[:10]) if lost else ''}", flush=True)
    os.rmdir(work)
    print(f"durability: {total_acked} acknowledged sectors in {a.trials} trials (random seed {a.seed})")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
