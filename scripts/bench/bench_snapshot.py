#!/usr/bin/env python3
"""Snapshot, restore and clone benchmarks (issue 18): rtvisor-vmm vs QEMU (microvm, migration to a
file), same guests, alternating runs, medians. Run through scripts/bench-snapshot.sh, which builds
everything first.

What is measured (every time from just before spawning the VMM process, on its stdout = the
guest's serial console):
1. The `ticker` inmate (LAPIC timer at 1 kHz): cold boot → `TICKER_START`; restore → the first
   console byte (a snapshot of a ticker printing a line every tick: restore-to-first-instruction
   plus at most one tick and one line); restore → `ECHO <line>` of a line typed on the console
   (console-responsive: the ticker polls its UART once per tick). rtvisor in both memory modes
   (`copy`, `map`), its own `--trace-startup` steps of the restore (to vCPU 0's first KVM_RUN).
2. Snapshot time (rtvisor: the reply's pausedMilliseconds and the request's wall time; QEMU:
   query-migrate's downtime and total-time, and the wall time from `migrate` to `completed`) and
   size (apparent and on disk) for guest RAM 16, 64, 256, 1024 MiB, and restore → `ECHO` from each.
3. Clones: N = 1, 2, 4, 8 restores of one snapshot started at once (rtvisor: `--restore-memory
   map`, copy-on-write from the page cache, each under its own name as `rtvisorctl clone` does:
   `--config` with the snapshot's definition renamed), time until all N echoed a line typed on
   each; their PSS (summed) vs N × RSS.
4. The minimal Linux (64 MiB, `rtvisor.check=console`): booted once per VMM to
   `RTVISOR_CONSOLE_READY`, saved, restored many times: restore → the answer to
   `echo rst$((40+2))` typed on the console; boot time ÷ restore time.

Typing: rtvisor-vmm reads console input from stdin only once the restored guest runs, so the line
is written at spawn. QEMU loads the UART's state from the migration stream, which discards bytes
received before (a line typed at spawn is lost), so the line is written once QMP reports the VM
running (query-status, or its RESUME event): each VMM gets the earliest moment it accepts input.
"""
import argparse, json, os, pickle, re, secrets, select, shutil, signal, subprocess, sys, tempfile, time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_boot import LINUX_EXTRA, med, qemu_cmd  # noqa: E402
from qemu_peer import EMULATING, QMP, QMPError, qemu_cpu  # noqa: E402
import snapshot_client  # noqa: E402

# As Tests/IntegrationTests/LinuxGuestTests.swift, plus the console-command check.
LINUX_BASE = "console=ttyS0 panic=-1 mitigations=off nopti rodata=off emukvm.pvmsys emukvm.exit_port=0xf4"
LINUX_CMDLINE = LINUX_BASE + " rtvisor.check=console"
LINUX_MIB = 64
LINUX_COMMAND, LINUX_ANSWER = "echo rst$((40+2))", "rst42"
# The ticker at 1 kHz: quiet (a line a second) for console and clone runs, chatty (a line every
# tick) for the first output after a restore.
QUIET = "ticker.period_us=1000 ticker.report=1000 ticker.total=0"
CHATTY = "ticker.period_us=1000 ticker.report=1 ticker.total=0"
TICKER_MIB = 16
SIZES = (16, 64, 256, 1024)
CLONES = (1, 2, 4, 8)
# QEMU limits migration to 128 MiB/s by default (a live migration's courtesy to the network);
# saving to a file should not wait for it.
QEMU_BANDWIDTH = 100 << 30

# The trace table's last row: the same runs' time to their console marker.
MARKER_ROW = "same runs: process start → first console byte (ticker) / the answer (Linux)"
PROCS = []  # every process started here; cleanup() stops those still running


class Failure(Exception):
    pass


def cleanup():
    for p in PROCS:
        if p.poll() is None:
            p.kill()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


def file_sizes(path):
    """(apparent bytes, bytes allocated on disk)."""
    st = os.stat(path)
    return st.st_size, st.st_blocks * 512


def evict(path):
    """Drops one file's pages from the page cache (its next read comes from the disk)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# VMM processes: console on stdin/stdout, log to a file.

class Guest:
    def __init__(self, argv, log, kind):
        self.kind, self.log, self.argv = kind, log, argv
        self.buf = b""
        self.chunks = []  # (end offset in buf, monotonic time it was read)
        with open(log, "wb") as err:
            self.t0 = time.monotonic()
            self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                      start_new_session=True)
        PROCS.append(self.p)
        self.qmp = None

    def type(self, line):
        self.p.stdin.write(line.encode() + b"\n")
        self.p.stdin.flush()

    def read(self):
        """One read of what is there; False at EOF."""
        chunk = os.read(self.p.stdout.fileno(), 65536)
        if not chunk:
            return False
        self.buf += chunk
        self.chunks.append((len(self.buf), time.monotonic()))
        return True

    def seen(self, marker, after=0):
        """Seconds from spawn to when `marker` (bytes; b"" = the first byte) was read, or None."""
        i = self.buf.find(marker, after)
        if i < 0 or (not marker and not self.buf):
            return None
        end = i + max(len(marker), 1)
        return next(t for off, t in self.chunks if off >= end) - self.t0

    def stderr_tail(self, n=1500):
        try:
            return open(self.log, errors="replace").read()[-n:]
        except OSError:
            return ""

    def stop(self):
        if self.qmp:
            self.qmp.close()
        if self.p.poll() is None:
            if self.kind == "r":
                self.p.send_signal(signal.SIGINT)  # stops the VM at once; logs the startup trace
                try:
                    self.p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.p.kill()
            else:
                self.p.kill()
        self.p.wait()
        for f in (self.p.stdin, self.p.stdout):
            try:
                f.close()
            except OSError:
                pass


def wait_all(guests, markers, timeout):
    """Waits until each guest's output holds its marker; returns the seconds from each one's spawn."""
    deadline = time.monotonic() + timeout
    found = [g.seen(m) for g, m in zip(guests, markers)]
    while None in found:
        open_ = [g for g, f in zip(guests, found) if f is None]
        left = deadline - time.monotonic()
        if left <= 0:
            g = open_[0]
            raise Failure(f"{g.argv[0]}: no {markers[guests.index(g)]!r} within {timeout}s; console tail "
                          f"{g.buf[-400:]!r}; log tail:\n{g.stderr_tail()}")
        ready, _, _ = select.select([g.p.stdout for g in open_], [], [], min(left, 1.0))
        for g in open_:
            if g.p.stdout in ready and not g.read():
                g.p.wait()
                raise Failure(f"{g.argv[0]} exited ({g.p.returncode}) before {markers[guests.index(g)]!r}; "
                              f"console tail {g.buf[-400:]!r}; log tail:\n{g.stderr_tail()}")
        found = [g.seen(m) for g, m in zip(guests, markers)]
    return found


def wait_for(g, marker, timeout):
    return wait_all([g], [marker], timeout)[0]


# ---------------------------------------------------------------------------------------------

class Bench:
    def __init__(self, a):
        self.a = a
        self.tmp = tempfile.mkdtemp(prefix="rtvsb-")
        os.chmod(self.tmp, 0o755)
        # VM names are global on a host (cgroup rtvisor/NAME, the jail's mount point): a random
        # prefix keeps this run's apart from anyone else's.
        self.prefix = "sb" + secrets.token_hex(3)
        self.seq = 0
        self.names = set()

    def path(self, name):
        return os.path.join(self.tmp, name)

    def fresh(self, stem):
        self.seq += 1
        return self.path(f"{stem}-{self.seq}")

    # --- definitions and command lines ---------------------------------------------------------
    def name(self, tag):
        n = f"{self.prefix}{tag}"
        self.names.add(n)
        return n

    def clone_definition(self, snap, i):
        """The snapshot's definition under another name: clones of one snapshot are separate VMs
        (each VM name has its own cgroup, and its pids limit fits one VMM, not eight)."""
        path = self.path(f"def-clone{i}.json")
        if not os.path.exists(path):
            with open(os.path.join(snap, snapshot_client.DEFINITION)) as f:
                d = json.load(f)
            d["name"] = self.name(f"k{i}")
            with open(path, "w") as f:
                json.dump(d, f)
        return path

    def remove_leftovers(self):
        """rtvisor-vmm run without rtvisord leaves its VM's empty jail mount point and cgroups:
        remove this run's (their names carry its random prefix)."""
        for n in sorted(self.names):
            hierarchies = ["/sys/fs/cgroup"] + [os.path.join("/sys/fs/cgroup", x) for x in os.listdir("/sys/fs/cgroup")]
            for d in [f"/run/rtvisor/jail/{n}"] + [os.path.join(c, "rtvisor", n) for c in hierarchies]:
                try:
                    os.rmdir(d)
                except OSError:
                    pass

    def definition(self, tag, kernel, cmdline, mib, initrd=None):
        d = {"name": self.name(tag), "vcpus": 1, "memory_mib": mib, "kernel": kernel, "cmdline": cmdline}
        if initrd:
            d["initrd"] = initrd
        path = self.path(f"def-{tag}.json")
        with open(path, "w") as f:
            json.dump(d, f)
        return path

    def ticker_def(self, cmdline, mib):
        return self.definition(f"t{mib}{'c' if cmdline == CHATTY else 'q'}", self.a.ticker, cmdline, mib)

    def rtvisor_boot(self, definition, control=None):
        argv = [self.a.vmm, "--config", definition, "--no-console-input", "--log-level", "error"]
        if control:
            argv += ["--control-socket", control]
        return Guest(argv, self.fresh("log"), "r")

    def rtvisor_restore(self, snap, mode, trace=False, config=None):
        argv = [self.a.vmm, "--restore", snap, "--restore-memory", mode, "--log-level", "notice" if trace else "error"]
        if config:
            argv += ["--config", config]
        if trace:
            argv[1:1] = ["--trace-startup", "--trace-origin-ns", str(time.monotonic_ns())]
        return Guest(argv, self.fresh("log"), "r")

    def qemu_argv(self, kernel, cmdline, mib, initrd=None):
        return qemu_cmd(kernel, cmdline, mib, initrd)

    def qemu(self, argv, incoming=None):
        qmp = self.fresh("qmp")
        full = argv + ["-qmp", f"unix:{qmp},server=on,wait=off"]
        if incoming:
            full += ["-incoming", f"exec:cat {incoming}"]
        g = Guest(full, self.fresh("log"), "q")
        g.qmp_path = qmp
        return g

    # --- saving ---------------------------------------------------------------------------------
    def rtvisor_save(self, definition, ready, settle, timeout=60):
        """Boots, waits for `ready` and `settle` seconds, snapshots with then=stop."""
        control = self.fresh("ctl") + ".sock"
        g = self.rtvisor_boot(definition, control)
        try:
            boot = wait_for(g, ready.encode(), timeout)
            time.sleep(settle)
            snap = self.fresh("snap")
            reply, wall = snapshot_client.snapshot(control, snap, definition, "stop")
            s = snapshot_client.saved(reply)
            status = g.p.wait(timeout=60)
            if status != 8:
                raise Failure(f"rtvisor-vmm: exit status {status} after snapshot-and-stop (8 expected); log:\n{g.stderr_tail()}")
        finally:
            g.stop()
        mem = os.path.join(snap, snapshot_client.MEMORY)
        st = os.path.join(snap, snapshot_client.STATE)
        return snap, {"boot": boot, "paused": s["pausedMilliseconds"], "wall": wall * 1000, "state": s["stateBytes"],
                      "data": s["memoryDataBytes"], "mem": file_sizes(mem), "state_file": file_sizes(st)}

    def qemu_save(self, argv, ready, settle, timeout=60):
        """Boots, waits for `ready` and `settle` seconds, migrates to a file (`exec:cat > FILE`)."""
        g = self.qemu(argv)
        try:
            boot = wait_for(g, ready.encode(), timeout)
            g.qmp = QMP(g.qmp_path)
            g.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": QEMU_BANDWIDTH})
            time.sleep(settle)
            out = self.fresh("qemu") + ".mig"
            t0 = time.monotonic()
            g.qmp.cmd("migrate", uri=f"exec:cat > {out}")
            while True:
                r = g.qmp.cmd("query-migrate")
                if r.get("status") in ("completed", "failed", "cancelled"):
                    break
                time.sleep(0.0005)
            wall = time.monotonic() - t0
            if r["status"] != "completed":
                raise Failure(f"QEMU migrate: {r}")
        finally:
            g.stop()
        # `cat` writes the last bytes after QEMU let go of the pipe.
        want = r["ram"]["transferred"]
        deadline = time.monotonic() + 30
        while os.path.getsize(out) < want and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
        return out, {"boot": boot, "paused": float(r.get("downtime", 0)), "wall": wall * 1000, "total": float(r.get("total-time", 0)),
                     "mem": file_sizes(out)}

    # --- restoring ------------------------------------------------------------------------------
    def restore(self, who, source, marker, mode="copy", line=None, argv=None, timeout=60):
        """Restores (rtvisor: snapshot dir; QEMU: migration file + its argv), types `line` (if
        any) as early as the VMM accepts it, returns seconds from spawn to `marker`."""
        g = self.rtvisor_restore(source, mode) if who == "r" else self.qemu(argv, incoming=source)
        try:
            if line is not None:
                if who == "q":
                    g.qmp = QMP(g.qmp_path)
                    g.qmp.wait_running()
                g.type(line)
            return wait_for(g, marker.encode(), timeout)
        finally:
            g.stop()

    def restore_trace(self, snap, mode, marker, line=None, timeout=60):
        """rtvisor's --trace-startup steps of a restore (to vCPU 0's first KVM_RUN), ms."""
        g = self.rtvisor_restore(snap, mode, trace=True)
        try:
            if line is not None:
                g.type(line)
            seen = wait_for(g, marker.encode(), timeout)
        finally:
            g.stop()
        m = re.search(r"startup trace \(ms\): (.*); total ([0-9.]+)", open(g.log).read())
        if not m:
            return None
        steps = {}
        for part in m.group(1).split(", "):
            name, _, ms = part.rpartition(" ")
            steps[name] = float(ms)
        steps["total: process start → vCPU 0's first KVM_RUN"] = float(m.group(2))
        steps[MARKER_ROW] = seen * 1000
        return steps

    def clones(self, who, n, source, argv=None, timeout=120):
        """n restores at once; (seconds from the first spawn until all echoed, PSS sum, RSS sum) in MiB."""
        t0 = time.monotonic()
        gs = []
        try:
            for i in range(n):
                if who == "r":
                    g = self.rtvisor_restore(source, "map", config=self.clone_definition(source, i))
                else:
                    g = self.qemu(argv, incoming=source)
                gs.append(g)
                if who == "r":
                    g.type(f"clone{i}")
            if who == "q":
                for i, g in enumerate(gs):
                    g.qmp = QMP(g.qmp_path)
                    g.qmp.wait_running()
                    g.type(f"clone{i}")
            wait_all(gs, [f"ECHO clone{i}".encode() for i in range(n)], timeout)
            t_all = max(g.t0 + g.seen(f"ECHO clone{i}".encode()) for i, g in enumerate(gs)) - t0
            time.sleep(0.3)
            pss = rss = 0
            for g in gs:
                rollup = open(f"/proc/{g.p.pid}/smaps_rollup").read()
                pss += int(re.search(r"^Pss:\s+(\d+)", rollup, re.M).group(1))
                rss += int(re.search(r"^Rss:\s+(\d+)", rollup, re.M).group(1))
            return t_all, pss / 1024, rss / 1024
        finally:
            for g in gs:
                g.stop()


def order(i):
    return ("r", "q") if i % 2 == 0 else ("q", "r")


def fmt(x, digits=1):
    if x is None:
        return "–"
    if isinstance(x, str):
        return x
    return f"{x:.{digits}f}"


def kib(n):
    return f"{n / 1024:,.0f}"


def ratio(r, q):
    return f"{r / q:.2f}×" if r is not None and q else ""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vmm")
    ap.add_argument("--inmates")
    ap.add_argument("--guest", help="guest-linux dir (vmlinux, initramfs.cpio); omit to skip Linux")
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--no-qemu-linux", action="store_true", help="skip QEMU's Linux boot (minutes)")
    ap.add_argument("--out", help="markdown file to append results to (omit: print only)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--results", help="also save the raw results here (pickle)")
    ap.add_argument("--render", metavar="RESULTS", help="only print (and --out) the report of saved --results")
    a = ap.parse_args()
    if a.render:
        with open(a.render, "rb") as f:
            report = render(pickle.load(f), a)
        print(report)
        if a.out:
            with open(a.out, "a") as f:
                f.write(report)
        return
    if not (a.vmm and a.inmates):
        ap.error("--vmm and --inmates are required (unless --render)")
    a.vmm, a.inmates = os.path.abspath(a.vmm), os.path.abspath(a.inmates)
    a.ticker = os.path.join(a.inmates, "ticker.elf")
    if a.guest:
        a.guest = os.path.abspath(a.guest)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    b = Bench(a)
    try:
        res = run(b, a)
        if a.results:
            with open(a.results, "wb") as f:
                pickle.dump(res, f)
        report = render(res, a)
    finally:
        cleanup()
        b.remove_leftovers()
        if a.keep:
            print(f"kept {b.tmp}", file=sys.stderr)
        else:
            shutil.rmtree(b.tmp, ignore_errors=True)
    print(report)
    if a.out:
        with open(a.out, "a") as f:
            f.write(report)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def run(b, a):
    R = a.runs
    res = {"started": time.strftime("%Y-%m-%d %H:%M %Z"), "load0": os.getloadavg()[0], "runs": R,
           "cpu": qemu_cpu(),
           "qemu": subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout.splitlines()[0]}

    # --- 1. The ticker: boot vs restore ----------------------------------------------------------
    log("ticker: snapshots")
    quiet_def, chatty_def = b.ticker_def(QUIET, TICKER_MIB), b.ticker_def(CHATTY, TICKER_MIB)
    quiet_q = b.qemu_argv(a.ticker, QUIET, TICKER_MIB)
    chatty_q = b.qemu_argv(a.ticker, CHATTY, TICKER_MIB)
    r_quiet, _ = b.rtvisor_save(quiet_def, "TICKER_START", 0.3)
    r_chatty, _ = b.rtvisor_save(chatty_def, "TICK cpu=0 n=200\n", 0.0)
    q_quiet, _ = b.qemu_save(quiet_q, "TICKER_START", 0.3)
    q_chatty, _ = b.qemu_save(chatty_q, "TICK cpu=0 n=200\n", 0.0)
    t = {k: [] for k in ("r_boot", "q_boot", "r_first_copy", "r_first_map", "q_first",
                         "r_echo_copy", "r_echo_map", "q_echo")}
    log(f"ticker: {R} alternating runs")
    for i in range(R):
        for who in order(i):
            if who == "r":
                g = b.rtvisor_boot(quiet_def)
                try:
                    t["r_boot"].append(wait_for(g, b"TICKER_START", 60) * 1000)
                finally:
                    g.stop()
                for mode in ("copy", "map"):
                    t[f"r_first_{mode}"].append(b.restore("r", r_chatty, "", mode) * 1000)
                    t[f"r_echo_{mode}"].append(b.restore("r", r_quiet, f"ECHO line{i}", mode, line=f"line{i}") * 1000)
            else:
                g = b.qemu(quiet_q)
                try:
                    t["q_boot"].append(wait_for(g, b"TICKER_START", 60) * 1000)
                finally:
                    g.stop()
                t["q_first"].append(b.restore("q", q_chatty, "", argv=chatty_q) * 1000)
                t["q_echo"].append(b.restore("q", q_quiet, f"ECHO line{i}", line=f"line{i}", argv=quiet_q) * 1000)
    res["ticker"] = {k: med(v) for k, v in t.items()}
    res["traces"] = {}
    for i in range(R):
        for mode in (("copy", "map") if i % 2 == 0 else ("map", "copy")):
            x = b.restore_trace(r_chatty, mode, "")
            if x:
                res["traces"].setdefault(f"ticker, {mode}", []).append(x)

    # --- 2. Snapshot time and size vs guest RAM -------------------------------------------------
    log("snapshot vs guest RAM")
    saves = {(mib, who): [] for mib in SIZES for who in "rq"}
    last = {}
    size_defs = {mib: b.ticker_def(QUIET, mib) for mib in SIZES}
    size_q = {mib: b.qemu_argv(a.ticker, QUIET, mib) for mib in SIZES}
    for i in range(R):
        for mib in SIZES:
            for who in order(i):
                if who == "r":
                    snap, info = b.rtvisor_save(size_defs[mib], "TICKER_START", 0.3)
                else:
                    snap, info = b.qemu_save(size_q[mib], "TICKER_START", 0.3)
                saves[(mib, who)].append(info)
                old = last.get((mib, who))
                if old:
                    if who == "r":
                        shutil.rmtree(old, ignore_errors=True)
                    else:
                        os.unlink(old)
                last[(mib, who)] = snap
    restores = {(mib, who): [] for mib in SIZES for who in "rq"}
    for i in range(R):
        for mib in SIZES:
            for who in order(i):
                restores[(mib, who)].append(1000 * b.restore(who, last[(mib, who)], f"ECHO s{i}", "copy", line=f"s{i}",
                                                             argv=size_q[mib]))
    res["sizes"] = {}
    for key, infos in saves.items():
        res["sizes"][key] = {
            "paused": med([x["paused"] for x in infos]), "wall": med([x["wall"] for x in infos]),
            "total": med([x["total"] for x in infos]) if "total" in infos[0] else None,
            "state": infos[-1].get("state_file"), "data": infos[-1].get("data"), "mem": infos[-1]["mem"],
            "restore": med(restores[key])}

    # --- 3. Clones ------------------------------------------------------------------------------
    log("clones")
    clone_runs = {(n, who): [] for n in CLONES for who in "rq"}
    for i in range(max(CLONES)):
        b.clone_definition(r_quiet, i)
    for i in range(R):
        for n in CLONES:
            for who in order(i):
                clone_runs[(n, who)].append(b.clones(who, n, r_quiet if who == "r" else q_quiet, argv=quiet_q))
    res["clones"] = {k: tuple(med([x[j] for x in v]) for j in range(3)) for k, v in clone_runs.items()}

    # --- 4. The minimal Linux -------------------------------------------------------------------
    if a.guest:
        vmlinux = os.path.join(a.guest, "vmlinux")
        initrd = os.path.join(a.guest, "initramfs.cpio")
        lx = res["linux"] = {"q_error": None}
        ldef = b.definition("lx", vmlinux, LINUX_CMDLINE, LINUX_MIB, initrd)
        lq = b.qemu_argv(vmlinux, LINUX_CMDLINE + LINUX_EXTRA, LINUX_MIB, initrd)
        log("linux: rtvisor boot (minutes here)")
        lsnap, lx["r_info"] = b.rtvisor_save(ldef, "RTVISOR_CONSOLE_READY", 1.0, timeout=1800)
        log(f"linux: rtvisor boot {lx['r_info']['boot']:.0f} s")
        qsnap = None
        if a.no_qemu_linux:
            lx["q_error"] = "not measured in this run (--no-qemu-linux)"
        else:
            log("linux: QEMU boot (minutes here)")
            try:
                qsnap, lx["q_info"] = b.qemu_save(lq, "RTVISOR_CONSOLE_READY", 1.0, timeout=1800)
                log(f"linux: QEMU boot {lx['q_info']['boot']:.0f} s")
            except (Failure, QMPError) as e:
                lx["q_error"] = str(e).splitlines()[0][:300]
                log(f"linux: QEMU: {e}")
        lt = {k: [] for k in ("r_copy", "r_map", "r_copy_cold", "r_map_cold", "q", "q_cold")}
        lmem = os.path.join(lsnap, snapshot_client.MEMORY)
        log(f"linux: {R} alternating restores")
        for i in range(R):
            for who in order(i):
                if who == "r":
                    for mode in ("copy", "map"):
                        lt[f"r_{mode}"].append(1000 * b.restore("r", lsnap, LINUX_ANSWER, mode, line=LINUX_COMMAND, timeout=600))
                        evict(lmem)
                        lt[f"r_{mode}_cold"].append(1000 * b.restore("r", lsnap, LINUX_ANSWER, mode, line=LINUX_COMMAND, timeout=600))
                elif qsnap:
                    try:
                        lt["q"].append(1000 * b.restore("q", qsnap, LINUX_ANSWER, line=LINUX_COMMAND, argv=lq, timeout=600))
                        evict(qsnap)
                        lt["q_cold"].append(1000 * b.restore("q", qsnap, LINUX_ANSWER, line=LINUX_COMMAND, argv=lq, timeout=600))
                    except (Failure, QMPError) as e:
                        lx["q_error"] = "restore: " + str(e).splitlines()[0][:300]
                        log(f"linux: QEMU restore: {e}")
                        qsnap = None
        lx["t"] = {k: (med(v) if v else None) for k, v in lt.items()}
        for i in range(R):
            for mode in (("copy", "map") if i % 2 == 0 else ("map", "copy")):
                x = b.restore_trace(lsnap, mode, LINUX_ANSWER, line=LINUX_COMMAND, timeout=600)
                if x:
                    res["traces"].setdefault(f"Linux, {mode}", []).append(x)
    res["ended"] = time.strftime("%H:%M %Z")
    res["load1"] = os.getloadavg()[0]
    return res


def render(res, a):
    R = res["runs"]
    machine = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True, text=True).stdout.strip()
    kvm = "kvm_pvm (nested, emulates guest ring 0)" if EMULATING else "kvm"
    o = [f"\n## bench-snapshot, {res['started']}\n\n"]
    o.append(f"Machine: {os.cpu_count()} CPUs, {machine}, kernel {os.uname().release}, host KVM: {kvm}. "
             f"QEMU: {res['qemu']}, `-M microvm,acpi=off -enable-kvm -cpu {res['cpu']} -m MIB -nodefaults "
             f"-no-user-config -nographic -serial stdio -no-reboot -kernel K -append … -device isa-debug-exit,iobase=0xf4,iosize=1 "
             f"-qmp unix:S,server=on,wait=off`, saved live with QMP `migrate-set-parameters max-bandwidth={QEMU_BANDWIDTH >> 30} GiB/s` "
             f"and `migrate uri=exec:cat > FILE` (polled with `query-migrate` until `completed`), restored with the same "
             f"command line plus `-incoming \"exec:cat FILE\"`. rtvisor: `rtvisor-vmm --config DEF --control-socket S`, "
             f"saved with the control socket's `snapshot` request (then: stop; scripts/bench/snapshot_client.py), restored with "
             f"`rtvisor-vmm --restore DIR --restore-memory copy|map`. Times from spawning the VMM to a line on its serial "
             f"console (stdout). A typed line is written to rtvisor at spawn and to QEMU once QMP reports it running (input "
             f"QEMU receives before its UART state is loaded is lost). Medians of {R} alternating runs; snapshot files in the "
             f"page cache unless said otherwise. Load average {res['load0']:.2f} at the start, {res['load1']:.2f} at the end "
             f"({res['ended']}).\n")

    tk = res["ticker"]
    o.append(f"\nBoot vs restore, the `ticker` inmate ({TICKER_MIB} MiB, 1 vCPU, LAPIC timer at 1 kHz, polls its "
             "console once per tick), ms:\n")
    o.append("\n| measurement | rtvisor `copy` | rtvisor `map` | QEMU | rtvisor `copy` / QEMU |\n|---|---|---|---|---|\n")
    o.append(f"| cold boot → `TICKER_START` | {fmt(tk['r_boot'])} | | {fmt(tk['q_boot'])} | {ratio(tk['r_boot'], tk['q_boot'])} |\n")
    o.append(f"| restore → first console byte (a ticker printing every tick) | {fmt(tk['r_first_copy'])} | "
             f"{fmt(tk['r_first_map'])} | {fmt(tk['q_first'])} | {ratio(tk['r_first_copy'], tk['q_first'])} |\n")
    o.append(f"| restore → `ECHO` of a typed line (console responsive) | {fmt(tk['r_echo_copy'])} | {fmt(tk['r_echo_map'])} | "
             f"{fmt(tk['q_echo'])} | {ratio(tk['r_echo_copy'], tk['q_echo'])} |\n")
    o.append(f"| cold boot ÷ restore → `ECHO` | {tk['r_boot'] / tk['r_echo_copy']:.1f}× | {tk['r_boot'] / tk['r_echo_map']:.1f}× | "
             f"{tk['q_boot'] / tk['q_echo']:.1f}× | |\n")

    lx = res.get("linux")
    if lx:
        lt = lx["t"]
        ri, qi = lx["r_info"], lx.get("q_info")
        q = qi is not None and lt.get("q") is not None
        o.append(f"\nThe minimal Linux ({LINUX_MIB} MiB, 1 vCPU, `{LINUX_CMDLINE}`; QEMU adds `{LINUX_EXTRA.strip()}` as "
                 "rtvisor's CPU template does): booted once per VMM, saved 1 s after `RTVISOR_CONSOLE_READY`, restored "
                 f"{R} times; restore → the answer to `{LINUX_COMMAND}` typed on the console:\n")
        o.append("\n| measurement | rtvisor `copy` | rtvisor `map` | QEMU |\n|---|---|---|---|\n")
        o.append(f"| cold boot → `RTVISOR_CONSOLE_READY` (s, one boot) | {ri['boot']:.1f} | | "
                 f"{fmt(qi['boot']) if qi else '–'} |\n")
        o.append(f"| restore → answer, memory file in the page cache (ms) | {fmt(lt['r_copy'])} | {fmt(lt['r_map'])} | "
                 f"{fmt(lt['q']) if q else '–'} |\n")
        o.append(f"| restore → answer, memory file evicted first (`POSIX_FADV_DONTNEED`) (ms) | {fmt(lt['r_copy_cold'])} | "
                 f"{fmt(lt['r_map_cold'])} | {fmt(lt['q_cold']) if q else '–'} |\n")
        q_ratio = f"{qi['boot'] * 1000 / lt['q']:.0f}×" if q else "–"
        q_save = f"{qi['paused']:.0f} / {qi['wall']:.1f}" if qi else "–"
        q_size = f"one stream: {kib(qi['mem'][0])} KiB" if qi else "–"
        o.append(f"| **cold boot ÷ restore** (page cache) | **{ri['boot'] * 1000 / lt['r_copy']:.0f}×** | "
                 f"**{ri['boot'] * 1000 / lt['r_map']:.0f}×** | {q_ratio} |\n")
        o.append(f"| snapshot: guest paused / request wall time (ms; QEMU: downtime / `migrate` → `completed`) | "
                 f"{ri['paused']:.1f} / {ri['wall']:.1f} | | {q_save} |\n")
        o.append(f"| snapshot size: state + memory data (KiB) / memory file apparent (MiB) / on disk (KiB) | "
                 f"{kib(ri['state_file'][0])} + {kib(ri['data'])} / {ri['mem'][0] >> 20} / {kib(ri['mem'][1])} | | {q_size} |\n")
        if lx["q_error"]:
            o.append(f"\nQEMU and the minimal Linux: {lx['q_error']}\n")

    o.append(f"\nSnapshot time and size vs guest RAM: the `ticker` inmate, which touches well under 1 MiB of its RAM, saved "
             f"0.3 s after `TICKER_START` (medians of {R}; sizes from the last run; restore with `copy`):\n")
    o.append("\n| guest RAM | VMM | paused (ms) | save wall (ms) | state file (KiB) | memory data written (KiB) | "
             "memory file: apparent (MiB) / on disk (KiB) | restore → `ECHO` (ms) |\n|---|---|---|---|---|---|---|---|\n")
    for mib in SIZES:
        r, q = res["sizes"][(mib, "r")], res["sizes"][(mib, "q")]
        o.append(f"| {mib} MiB | rtvisor | {r['paused']:.1f} | {r['wall']:.1f} | {kib(r['state'][0])} | {kib(r['data'])} | "
                 f"{r['mem'][0] >> 20} / {kib(r['mem'][1])} | {r['restore']:.1f} |\n")
        o.append(f"| {mib} MiB | QEMU | {q['paused']:.0f} (downtime) | {q['wall']:.1f} (total-time {q['total']:.0f}) | "
                 f"one stream | | {q['mem'][0] / 1048576:.2f} / {kib(q['mem'][1])} | {q['restore']:.1f} |\n")

    o.append(f"\nClones: N restores of one 16 MiB `ticker` snapshot started at once (rtvisor `--restore-memory map`: guest "
             f"memory copy-on-write from the memory file's page cache; QEMU: N `-incoming` from one file), time from the "
             f"first spawn until every one echoed a line typed on it; memory of the N VMM processes 0.3 s later "
             f"(`/proc/PID/smaps_rollup`, summed):\n")
    o.append("\n| N | rtvisor: all echoed (ms) | QEMU (ms) | rtvisor / QEMU | rtvisor PSS / N × RSS (MiB) | "
             "QEMU PSS / N × RSS (MiB) |\n|---|---|---|---|---|---|\n")
    for n in CLONES:
        r, q = res["clones"][(n, "r")], res["clones"][(n, "q")]
        o.append(f"| {n} | {r[0] * 1000:.1f} | {q[0] * 1000:.1f} | {ratio(r[0], q[0])} | {r[1]:.1f} / {r[2]:.1f} | "
                 f"{q[1]:.1f} / {q[2]:.1f} |\n")

    traces = {k: v for k, v in res["traces"].items() if v}
    if traces:
        names = []
        for runs in traces.values():
            for x in runs:
                for name in x:
                    n = re.sub(r"snapshot memory \((copy|map)\)", "snapshot memory", name)
                    if n not in names:
                        names.append(n)
        o.append(f"\nrtvisor's restore step by step (`--trace-startup`, medians of {R} runs, ms; origin: the spawn, so the "
                 "first step is exec, the Swift runtime and argument parsing; the trace ends at vCPU 0's first `KVM_RUN`):\n")
        o.append("\n| step | " + " | ".join(traces) + " |\n|---|" + "---|" * len(traces) + "\n")
        for n in names:
            cells = []
            for runs in traces.values():
                xs = [v for x in runs for k, v in x.items() if re.sub(r"snapshot memory \((copy|map)\)", "snapshot memory", k) == n]
                cells.append(f"{med(xs):.2f}" if xs else "")
            o.append(f"| {n} | " + " | ".join(cells) + " |\n")

    o.append("\nNotes (computed from this run):\n")
    total = lambda runs: med([x["total: process start → vCPU 0's first KVM_RUN"] for x in runs])  # noqa: E731
    tr = traces.get("ticker, map")
    if tr:
        slots = med([x.get("memory slots (overlapped)", 0) for x in tr])
        exec_ = med([x.get("exec + runtime start + arguments", 0) for x in tr])
        o.append(f"- A restored ticker runs its first instruction {total(tr):.1f} ms after the spawn (`map`; trace); {slots:.1f} ms "
                 f"of that is the kernel's wait for the VM's first memory slot (an SRCU grace period, the same at boot) and "
                 f"{exec_:.1f} ms exec and the Swift runtime, not reading the snapshot.\n")
    s16, s1g = res["sizes"][(16, "r")], res["sizes"][(1024, "r")]
    q16, q1g = res["sizes"][(16, "q")], res["sizes"][(1024, "q")]
    if s1g["paused"] > 2 * s16["paused"]:
        pause = (f"The pause does not: {s16['paused']:.1f} ms at 16 MiB, {s1g['paused']:.1f} ms at 1024 MiB. The save reads "
                 f"every page of guest RAM to find the zero ones, and each 4 KiB page the guest never touched costs a read "
                 f"fault; QEMU's RAM pass ({q16['total']:.0f} → {q1g['total']:.0f} ms, live: the guest runs meanwhile) is "
                 f"cheaper because QEMU maps guest RAM with `MADV_HUGEPAGE` (smaps flag `hg`), one fault per 2 MiB.")
    else:
        pause = f"So does the pause: {s16['paused']:.1f} ms at 16 MiB, {s1g['paused']:.1f} ms at 1024 MiB."
    flat = "stays flat" if s1g["restore"] < 1.5 * s16["restore"] else "does not"
    o.append(f"- Snapshot size follows the memory the guest used: {kib(s16['data'])} KiB of memory data at 16 MiB, "
             f"{kib(s1g['data'])} KiB at 1024 MiB ({kib(s1g['mem'][1])} KiB on disk for a 1 GiB file: zero pages are holes), "
             f"and the restore time {flat} ({s16['restore']:.1f} and {s1g['restore']:.1f} ms). {pause}\n")
    if lx:
        ri, lt = lx["r_info"], lx["t"]
        first = f"; {total(traces['Linux, map']):.0f} ms of it to the first `KVM_RUN`, the rest is the guest reading the line and running it" \
            if traces.get("Linux, map") else ""
        host = (f" Both are this host's: nested `kvm_pvm` emulates guest ring-0 code, so the boot takes {ri['boot']:.0f} s "
                "and the guest's own work after the restore (console interrupts, the shell) is slow too; on bare-metal KVM "
                "both are far shorter." if EMULATING else "")
        o.append(f"- Linux: restoring the booted guest is {ri['boot'] * 1000 / lt['r_copy']:.0f}× (`copy`) and "
                 f"{ri['boot'] * 1000 / lt['r_map']:.0f}× (`map`) faster than booting it (goal ≥ 100×): {lt['r_map']:.0f} ms "
                 f"to the answer{first}.{host}\n")
    r8, q8 = res["clones"][(8, "r")], res["clones"][(8, "q")]
    o.append(f"- Eight rtvisor clones take {r8[1]:.1f} MiB PSS in all against {r8[2]:.1f} MiB of summed RSS: the VMM binary "
             f"and the guest memory none of them wrote (the memory file's page cache) are there once. Eight QEMUs: "
             f"{q8[1]:.1f} MiB PSS ({q8[2]:.1f} MiB RSS).\n")
    return "".join(o)


if __name__ == "__main__":
    main()
