#!/usr/bin/env python3
"""Same-host upgrade benchmark (issue 19, `scripts/bench-migration.sh --upgrade`): a running VM
moves to a new VMM process on this host with its memory shared, not copied.

rtvisor: source `rtvisor-vmm --config DEF --control-socket C`, target `rtvisor-vmm --incoming
fd:N` on one end of a socket pair (as rtvisord starts it for `rtvisorctl upgrade`); the control
socket's `migrate` request with `handover` gets the other end: guest RAM's memfds and the taps
go over as descriptors. Its reply gives the downtime (the pause to the target's `running`).
QEMU: the nearest equivalent, a local migration whose RAM both processes map from one shared
file (`-object memory-backend-file,share=on,mem-path=/dev/shm/…` and the `x-ignore-shared`
capability on both, so no RAM is sent); the pause is the source's `STOP` to the target's
`RESUME` QMP event.

The guest is the memwriter inmate, as in bench_migration: three verified `MEMW step=` lines on
the source, the move, two more on the target, the steps of both consoles one sequence.
"""
import os, socket, subprocess, sys, time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_migration as bm  # noqa: E402
from bench_boot import med, qemu_cmd  # noqa: E402
from qemu_peer import EMULATING, QMP, qemu_cpu  # noqa: E402
import snapshot_client  # noqa: E402

RATE = 1  # pages per ms asked of the guest


def rtvisor(b, mib):
    definition = b.definition(mib, RATE)
    control = b.fresh("ctl") + ".sock"
    ours, theirs = socket.socketpair()
    quiet = ["--no-console-input", "--log-level", "notice"]
    target = bm.Guest([b.a.vmm, "--incoming", f"fd:{theirs.fileno()}"] + quiet, b.fresh("target.log"), "rtvisor target",
                      pass_fds=(theirs.fileno(),))
    theirs.close()
    source = bm.Guest([b.a.vmm, "--config", definition, "--control-socket", control] + quiet, b.fresh("source.log"), "rtvisor source")
    try:
        before = source.wait_steps(bm.LINES_BEFORE, 120)
        with open(definition, "rb") as f:
            definition_bytes = f.read()
        c = snapshot_client.connect(control, timeout=120, retry_until=time.monotonic() + 10)
        try:
            c.call({"hello": {"minVersion": 1, "maxVersion": 4}})
            t0 = time.monotonic()
            reply = c.call({"migrate": {"_0": {"downtimeMilliseconds": bm.DOWNTIME_MS, "maxRounds": bm.MAX_ROUNDS, "force": True,
                                               "handover": True, "definitionJSON": list(definition_bytes)}}}, [ours.fileno()])
            wall = time.monotonic() - t0
        finally:
            c.close()
            ours.close()
        if "migrated" not in reply:
            raise bm.Failure(f"rtvisor upgrade: {reply}\nsource log:\n{source.stderr_tail()}\ntarget log:\n{target.stderr_tail()}")
        report = reply["migrated"]["_0"]
        if not report.get("memoryHandedOver"):
            raise bm.Failure(f"rtvisor upgrade: memory was copied, not handed over: {report}")
        if source.wait_exit(30) != 9:
            raise bm.Failure(f"rtvisor source: no exit status 9 after the move; log:\n{source.stderr_tail()}")
        source.reader.join(timeout=5)
        source.check()
        target.wait_steps(bm.LINES_AFTER, 120)
        bm.check_sequence(source, target)
        return {"rate": bm.achieved_rate(before), "total": report["totalMilliseconds"],
                "seen": bm.guest_pause(source, target) or report["downtimeMilliseconds"], "own": report["downtimeMilliseconds"],
                "bytes": report["totalBytes"], "wall": wall * 1000}
    finally:
        source.stop()
        target.stop()


def qemu(b, mib):
    shared = f"/dev/shm/{b.prefix}-q{b.seq}"
    backend = ["-object", f"memory-backend-file,id=ram,size={mib}M,mem-path={shared},share=on", "-machine", "memory-backend=ram"]
    argv = qemu_cmd(b.a.memwriter, b.cmdline(RATE), mib) + backend
    qs, qt = b.fresh("qmp-src") + ".sock", b.fresh("qmp-tgt") + ".sock"
    addr, _ = b.address()
    source = bm.Guest(argv + ["-qmp", f"unix:{qs},server=on,wait=off"], b.fresh("qsource.log"), "QEMU source")
    target = bm.Guest(argv + ["-qmp", f"unix:{qt},server=on,wait=off", "-incoming", "defer"], b.fresh("qtarget.log"), "QEMU target")
    sq = tq = None
    try:
        tq = QMP(qt)
        before = source.wait_steps(bm.LINES_BEFORE, 120)
        sq = QMP(qs)
        for q in (sq, tq):
            q.cmd("migrate-set-capabilities", capabilities=[{"capability": "x-ignore-shared", "state": True}])
        tq.cmd("migrate-incoming", uri=addr)
        sq.cmd("migrate-set-parameters", **{"downtime-limit": bm.DOWNTIME_MS, "max-bandwidth": bm.QEMU_BANDWIDTH})
        r, _, wall = bm.qemu_migrate(sq, addr, timeout=120)
        if r["status"] != "completed":
            raise bm.Failure(f"QEMU migrate: {r}\nsource log:\n{source.stderr_tail()}\ntarget log:\n{target.stderr_tail()}")
        stop, resume = sq.event("STOP"), tq.wait_event("RESUME", 60)
        source.check()
        target.wait_steps(bm.LINES_AFTER, 120)
        source.stop()
        bm.check_sequence(source, target)
        return {"rate": bm.achieved_rate(before), "total": float(r["total-time"]),
                "seen": (bm.stamp(resume) - bm.stamp(stop)) * 1000 if stop else None,
                "bytes": r["ram"]["transferred"], "wall": wall * 1000}
    finally:
        bm.close_all((sq, tq), (source, target))
        try:
            os.unlink(shared)
        except OSError:
            pass


def render(res):
    machine = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True, text=True).stdout.strip()
    kvm = "kvm_pvm (nested, emulates guest ring 0)" if EMULATING else "kvm"
    o = [f"\n## bench-migration --upgrade, {res['started']}\n\n",
         f"Machine: {os.cpu_count()} CPUs, {machine}, kernel {os.uname().release}, host KVM: {kvm}. A running VM moves to a new "
         f"VMM process on this host, its RAM shared, not copied. Guest: the `memwriter` inmate, 1 vCPU, "
         f"`memw.pages_per_ms={RATE} memw.steps=0`. rtvisor: target `rtvisor-vmm --incoming fd:N` on a socket pair (as rtvisord "
         f"starts it for `rtvisorctl upgrade`), the source's `migrate` request with `handover`: guest RAM's memfds go over as "
         f"descriptors; the downtime is the source's pause to the target's vCPU 0 entering the guest (both log their "
         f"CLOCK_MONOTONIC time). QEMU ({res['qemu']}, `-cpu {res['cpu']}`): the nearest equivalent, both processes mapping the RAM from one "
         f"file (`memory-backend-file,share=on` in /dev/shm) and `x-ignore-shared` on both, target `-incoming defer` then "
         f"`migrate-incoming`. Each run: 3 verified `MEMW` lines on the source, the move, 2 on the target, one sequence across "
         f"it. Medians of {res['runs']} alternating runs (min–max); load average {res['load0']:.2f} at the start, "
         f"{res['load1']:.2f} at the end.\n\n",
         "| guest RAM | VMM | downtime: pause → running on the target (ms) | total (ms) | sent (KiB) |\n|---|---|---|---|---|\n"]
    for mib in res["sizes"]:
        for who, name in (("r", "rtvisor"), ("q", "QEMU (x-ignore-shared)")):
            xs = res["raw"].get((mib, who), [])
            if not xs:
                o.append(f"| {mib} MiB | {name} | no run completed | | |\n")
                continue
            seen = [x["seen"] for x in xs if x["seen"] is not None]
            o.append(f"| {mib} MiB | {name} | {med(seen):.2f} ({min(seen):.2f}–{max(seen):.2f}) | {med([x['total'] for x in xs]):.1f} | "
                     f"{med([x['bytes'] for x in xs]) / 1024:.0f} |\n")
    r = [x["seen"] for k, v in res["raw"].items() if k[1] == "r" for x in v]
    q = [x["seen"] for k, v in res["raw"].items() if k[1] == "q" for x in v if x["seen"] is not None]
    if r:
        o.append(f"\nGoal \"local upgrade downtime ≤ 10 ms for an inmate\": {'met' if max(r) <= 10 else 'not met'} "
                 f"(rtvisor's largest single run {max(r):.2f} ms" + (f"; median ratio rtvisor / QEMU {med(r) / med(q):.2f}×" if q else "")
                 + "). rtvisor's downtime is the pause, the state's capture, encoding and sending, the target's decoding and "
                 "loading, and `go`/`running`; the memory is not touched.\n")
    if res["errors"]:
        o.append("\nRuns that failed (not counted above):\n\n" + "".join(f"- {e}\n" for e in res["errors"]))
    return "".join(o)


def main(a):
    if not (a.vmm and a.inmates):
        sys.exit("--vmm and --inmates are required")
    a.sizes = tuple(int(x) for x in a.sizes.split(",")) if a.sizes else (32, 256)
    a.vmm, a.inmates = os.path.abspath(a.vmm), os.path.abspath(a.inmates)
    a.memwriter = os.path.join(a.inmates, "memwriter.elf")
    a.tcp = False
    b = bm.Bench(a)
    res = {"started": time.strftime("%Y-%m-%d %H:%M %Z"), "load0": os.getloadavg()[0], "runs": a.runs, "sizes": a.sizes,
           "cpu": qemu_cpu(), "raw": {}, "errors": [],
           "qemu": subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout.splitlines()[0]}
    try:
        for i in range(a.runs):
            for mib in a.sizes:
                for who in bm.order(i):
                    try:
                        x = rtvisor(b, mib) if who == "r" else qemu(b, mib)
                    except bm.VerificationFailed:
                        raise
                    except Exception as e:  # noqa: BLE001 - reported, the other runs go on
                        msg = f"run {i + 1}, {mib} MiB, {'rtvisor' if who == 'r' else 'QEMU'}: {e}"
                        bm.log("ERROR " + msg)
                        res["errors"].append(msg.splitlines()[0][:400])
                        continue
                    res["raw"].setdefault((mib, who), []).append(x)
                    bm.log(f"run {i + 1}/{a.runs} {mib:5d} MiB {'rtvisor' if who == 'r' else 'QEMU   '}: downtime {x['seen']:.2f} ms, "
                           f"total {x['total']:.1f} ms, {x['bytes'] / 1024:.0f} KiB")
        res["load1"] = os.getloadavg()[0]
        report = render(res)
    except bm.VerificationFailed as e:
        bm.log(f"FAIL: the guest's memory did not survive an upgrade:\n{e}")
        sys.exit(1)
    finally:
        bm.cleanup()
        b.remove_leftovers()
    print(report)
    if a.out:
        with open(a.out, "a") as f:
            f.write(report)
    if res["errors"]:
        sys.exit(1)
