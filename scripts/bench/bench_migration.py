#!/usr/bin/env python3
"""Live migration benchmark (issue 19): rtvisor-vmm vs QEMU microvm, two VMM processes on this
host, the same guest, alternating runs, medians. Run through scripts/bench-migration.sh, which
builds everything first.

The guest is the `memwriter` inmate (guests/inmates/memwriter.c): it writes one page of a window
of `memw.mib` MiB per step at `memw.pages_per_ms` steps per ms (TSC-paced; 0 = as fast as it
can), and every 1024 steps reads its whole window back against what the step count says it must
hold, then prints `MEMW step=K ok`. A page a migration lost or left stale fails it
(`INMATE memwriter FAIL`): this benchmark then stops at once with that line.

One run: source and target started, the source's console shows three `MEMW step=` lines (the
achieved dirty rate is the steps between the first and the third over the time between them, as
read here), the migration runs, the target's console must show two more `MEMW step=` lines, and
the steps of both consoles must read as one sequence (1024, 2048, … once each, in order).

rtvisor: source `rtvisor-vmm --config DEF --control-socket C`, target `rtvisor-vmm --incoming
unix:PATH` (or tcp:127.0.0.1:PORT); the control socket's `migrate` request (downtime 300 ms, at
most 30 rounds, force) gets the connected stream by SCM_RIGHTS; its reply is the report (rounds,
bytes, total time, downtime = the pause to the target's `running`).
QEMU: the same inmate under `-M microvm` (bench_boot.qemu_cmd), target with `-incoming
unix:PATH`; over QMP `migrate-set-parameters` downtime-limit 300 and max-bandwidth 100 GiB/s
(QEMU's default is 128 MiB/s, rtvisor does not limit), `migrate`, `query-migrate` polled until
`completed`. QEMU's own `downtime` ends when the source has sent everything; the pause as the
guest sees it is the source's `STOP` event to the target's `RESUME` event (QMP timestamps, the
host's real-time clock), which is what rtvisor's downtime measures.
"""
import argparse, json, os, pickle, re, secrets, shutil, signal, socket, subprocess, sys, tempfile, threading, time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_boot import med, qemu_cmd  # noqa: E402
from qemu_peer import EMULATING, QMP, QMPError, qemu_cpu  # noqa: E402
import snapshot_client  # noqa: E402

SIZES = (32, 256, 1024)
QUICK_SIZES = (32,)
RATES = (1, 2, 0)  # pages per ms asked of the guest; 0 = unpaced (as fast as the guest runs)
QUICK_RATES = (1, 0)
WINDOW_MIB = 4  # the memwriter's default; it fits every RAM size here
DOWNTIME_MS = 300
MAX_ROUNDS = 30
QEMU_BANDWIDTH = 100 << 30
LINES_BEFORE = 3  # MEMW lines on the source before the move
LINES_AFTER = 2  # and on the target after it
STEP_LINE = re.compile(r"MEMW step=(\d+) ok")
PROCS = []


class Failure(Exception):
    pass


class VerificationFailed(Failure):
    """The guest found a page the migration lost or left stale: never averaged away."""


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def cleanup():
    for p in PROCS:
        if p.poll() is None:
            p.kill()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


class Guest:
    """A VMM process whose stdout is the guest's console, read by a thread of its own; each
    complete line is kept with the monotonic time it was read."""

    def __init__(self, argv, log_path, who, pass_fds=()):
        self.argv, self.log, self.who = argv, log_path, who
        self.lines = []  # (time, text)
        self.partial = b""
        self.eof = False
        self.cv = threading.Condition()
        with open(log_path, "wb") as err:
            self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                      start_new_session=True, pass_fds=pass_fds)
        PROCS.append(self.p)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        fd = self.p.stdout.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            now = time.monotonic()
            with self.cv:
                if not chunk:
                    self.eof = True
                    self.cv.notify_all()
                    return
                self.partial += chunk
                *done, self.partial = self.partial.split(b"\n")
                for line in done:
                    self.lines.append((now, line.decode(errors="replace")))
                self.cv.notify_all()

    def console(self):
        with self.cv:
            return "\n".join(t for _, t in self.lines) + ("\n" + self.partial.decode(errors="replace") if self.partial else "")

    def steps(self):
        """[(time, step)] of the `MEMW step=K ok` lines so far."""
        with self.cv:
            return [(t, int(m.group(1))) for t, line in self.lines for m in [STEP_LINE.search(line)] if m]

    def check(self):
        text = self.console()
        for line in text.splitlines():
            if "FAIL" in line:
                raise VerificationFailed(f"{self.who}: the guest says: {line.strip()}\nconsole tail:\n{text[-1500:]}\n"
                                         f"log tail:\n{self.stderr_tail()}")

    def stderr_tail(self, n=1500):
        try:
            return open(self.log, errors="replace").read()[-n:]
        except OSError:
            return ""

    def wait_steps(self, n, timeout):
        """Waits until the console shows n `MEMW step=` lines; returns them."""
        deadline = time.monotonic() + timeout
        while True:
            self.check()
            s = self.steps()
            if len(s) >= n:
                return s
            with self.cv:
                if self.eof:
                    self.p.wait()
                    raise Failure(f"{self.who} ({self.argv[0]}) exited ({self.p.returncode}) before {n} MEMW lines; console tail:\n"
                                  f"{self.console()[-800:]}\nlog tail:\n{self.stderr_tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Failure(f"{self.who}: no {n} MEMW lines within {timeout} s; console tail:\n{self.console()[-800:]}\n"
                                  f"log tail:\n{self.stderr_tail()}")
                self.cv.wait(min(left, 0.5))

    def wait_exit(self, timeout):
        try:
            return self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self):
        if self.p.poll() is None:
            if self.who.startswith("rtvisor"):
                self.p.send_signal(signal.SIGINT)  # stops the VM at once and cleans up after itself
                try:
                    self.p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.p.kill()
            else:
                self.p.kill()
        self.p.wait()
        self.reader.join(timeout=5)
        try:
            self.p.stdout.close()
        except OSError:
            pass


def stamp(event):
    t = event["timestamp"]
    return t["seconds"] + t["microseconds"] / 1e6


def achieved_rate(steps):
    """Pages per ms the guest wrote: from the first to the last `MEMW step=` line given."""
    (t0, k0), (t1, k1) = steps[0], steps[-1]
    return (k1 - k0) / ((t1 - t0) * 1000) if t1 > t0 else None


PAUSED_AT = re.compile(r"paused at monotonic (\d+) ns")
RESUMED_AT = re.compile(r"vCPU 0 enters the guest at monotonic (\d+) ns")


def guest_pause(source, target):
    """ms from the source's pause to the target's vCPU 0 entering the guest (both VMMs log their
    CLOCK_MONOTONIC time, one host's clock), or None without both lines."""
    p, r = PAUSED_AT.findall(source.stderr_tail(1 << 20)), RESUMED_AT.findall(target.stderr_tail(1 << 20))
    return (int(r[-1]) - int(p[-1])) / 1e6 if p and r else None


def check_sequence(source, target):
    """Every verification once, in order, across the move, and checks ran on the target."""
    seen = [k for _, k in source.steps()] + [k for _, k in target.steps()]
    want = list(range(1024, 1024 * (len(seen) + 1), 1024))
    if seen != want:
        # A line the source was printing when it paused is finished by the target: join the
        # two consoles and parse once more before calling it a gap.
        joined = [int(k) for k in STEP_LINE.findall(source.console() + target.console())]
        if joined != list(range(1024, 1024 * (len(joined) + 1), 1024)):
            raise VerificationFailed(f"the steps across the move are not one sequence: {seen}")


class Bench:
    def __init__(self, a):
        self.a = a
        self.tmp = tempfile.mkdtemp(prefix="rtvmb-")
        os.chmod(self.tmp, 0o755)
        self.prefix = "mb" + secrets.token_hex(3)  # VM names are host-global (cgroup, jail)
        self.seq = 0
        self.names = set()
        self.port = 41000 + os.getpid() % 5000

    def fresh(self, stem):
        self.seq += 1
        return os.path.join(self.tmp, f"{stem}-{self.seq}")

    def address(self):
        """(rtvisor/QEMU address string, how to connect) of a fresh incoming endpoint."""
        if self.a.tcp:
            self.port += 1
            return f"tcp:127.0.0.1:{self.port}", ("tcp", self.port)
        path = self.fresh("incoming") + ".sock"
        return f"unix:{path}", ("unix", path)

    def cmdline(self, rate):
        return f"memw.mib={self.a.window} memw.pages_per_ms={rate} memw.steps=0"

    def definition(self, mib, rate):
        name = f"{self.prefix}m{mib}r{rate}"
        self.names.add(name)
        path = os.path.join(self.tmp, f"def-{name}.json")
        if not os.path.exists(path):
            with open(path, "w") as f:
                json.dump({"name": name, "vcpus": 1, "memory_mib": mib, "kernel": self.a.memwriter,
                           "cmdline": self.cmdline(rate)}, f)
        return path

    def remove_leftovers(self):
        """rtvisor-vmm without rtvisord leaves its VM's empty jail mount point and cgroups."""
        for n in sorted(self.names):
            hierarchies = ["/sys/fs/cgroup"] + [os.path.join("/sys/fs/cgroup", x) for x in os.listdir("/sys/fs/cgroup")]
            for d in [f"/run/rtvisor/jail/{n}"] + [os.path.join(c, "rtvisor", n) for c in hierarchies]:
                try:
                    os.rmdir(d)
                except OSError:
                    pass

    @staticmethod
    def connect_incoming(how, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            try:
                if how[0] == "unix":
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    try:
                        s.connect(how[1])
                    except OSError:
                        s.close()
                        raise
                    return s
                return socket.create_connection(("127.0.0.1", how[1]))
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise Failure(f"the target's {how} never came up")
                time.sleep(0.02)

    def rtvisor(self, mib, rate):
        definition = self.definition(mib, rate)
        control = self.fresh("ctl") + ".sock"
        addr, how = self.address()
        quiet = ["--no-console-input", "--log-level", "notice"]
        target = Guest([self.a.vmm, "--incoming", addr] + quiet, self.fresh("target.log"), "rtvisor target")
        source = Guest([self.a.vmm, "--config", definition, "--control-socket", control] + quiet,
                       self.fresh("source.log"), "rtvisor source")
        try:
            before = source.wait_steps(LINES_BEFORE, 120)
            stream = self.connect_incoming(how)
            with open(definition, "rb") as f:
                definition_bytes = f.read()
            c = snapshot_client.connect(control, timeout=600, retry_until=time.monotonic() + 10)
            try:
                hello = c.call({"hello": {"minVersion": 1, "maxVersion": 3}})
                if hello.get("hello", {}).get("version", 0) < 3:
                    raise Failure(f"rtvisor-vmm speaks no control protocol 3 (migrate): {hello}")
                t0 = time.monotonic()
                reply = c.call({"migrate": {"_0": {"downtimeMilliseconds": DOWNTIME_MS, "maxRounds": MAX_ROUNDS, "force": True,
                                                   "definitionJSON": list(definition_bytes)}}}, [stream.fileno()])
                wall = time.monotonic() - t0
            finally:
                c.close()
                stream.close()
            if "migrated" not in reply:
                raise Failure(f"rtvisor migrate: {reply}\nsource log:\n{source.stderr_tail()}\ntarget log:\n{target.stderr_tail()}")
            report = reply["migrated"]["_0"]
            status = source.wait_exit(30)
            if status != 9:
                raise Failure(f"rtvisor source: exit status {status} after the move (9 expected); log:\n{source.stderr_tail()}")
            source.reader.join(timeout=5)
            source.check()
            after = target.wait_steps(LINES_AFTER, 120)
            check_sequence(source, target)
            rounds = report["rounds"]
            return {"rate": achieved_rate(before), "rate_after": achieved_rate(after) if len(after) > 1 else None,
                    "total": report["totalMilliseconds"], "downtime": report["downtimeMilliseconds"],
                    "seen": guest_pause(source, target) or report["downtimeMilliseconds"],
                    "bytes": report["totalBytes"], "last_bytes": rounds[-1]["bytes"], "rounds": len(rounds),
                    "round_pages": [r["pages"] for r in rounds], "round_ms": [r["milliseconds"] for r in rounds],
                    "round_bytes": [r["bytes"] for r in rounds],
                    "mbps": rounds[0]["bytes"] / rounds[0]["milliseconds"] / 1048.576 if rounds[0]["milliseconds"] > 0 else None,
                    "first_ms": rounds[0]["milliseconds"], "last_ms": rounds[-1]["milliseconds"],
                    "wall": wall * 1000, "first_step_after": after[0][1]}
        finally:
            source.stop()
            target.stop()

    def qemu(self, mib, rate):
        argv = qemu_cmd(self.a.memwriter, self.cmdline(rate), mib)
        qs, qt = self.fresh("qmp-src") + ".sock", self.fresh("qmp-tgt") + ".sock"
        addr, how = self.address()
        target = Guest(argv + ["-qmp", f"unix:{qt},server=on,wait=off", "-incoming", addr], self.fresh("qtarget.log"), "QEMU target")
        source = Guest(argv + ["-qmp", f"unix:{qs},server=on,wait=off"], self.fresh("qsource.log"), "QEMU source")
        sq = tq = None
        try:
            tq = QMP(qt)
            before = source.wait_steps(LINES_BEFORE, 120)
            sq = QMP(qs)
            sq.cmd("migrate-set-parameters", **{"downtime-limit": DOWNTIME_MS, "max-bandwidth": QEMU_BANDWIDTH})
            r, last, wall = qemu_migrate(sq, addr)
            if r["status"] != "completed":
                raise Failure(f"QEMU migrate: {r}\nsource log:\n{source.stderr_tail()}\ntarget log:\n{target.stderr_tail()}")
            stop = sq.event("STOP")
            resume = tq.wait_event("RESUME", 60)
            source.check()
            after = target.wait_steps(LINES_AFTER, 120)
            source.stop()  # paused for good (postmigrate): its console is complete
            check_sequence(source, target)
            ram = r["ram"]
            return {"rate": achieved_rate(before), "rate_after": achieved_rate(after) if len(after) > 1 else None,
                    "total": float(r["total-time"]), "downtime": float(r["downtime"]),
                    "seen": (stamp(resume) - stamp(stop)) * 1000 if stop else None,
                    "bytes": ram["transferred"], "last_bytes": ram.get("downtime-bytes"), "rounds": ram.get("dirty-sync-count"),
                    "setup": r.get("setup-time"), "qemu_dirty_rate": (last or r)["ram"].get("dirty-pages-rate"),
                    "mbps": ram.get("mbps") / 8.388608 if ram.get("mbps") else None,
                    "wall": wall * 1000, "first_step_after": after[0][1]}
        finally:
            close_all((sq, tq), (source, target))


def qemu_migrate(sq, addr, timeout=600):
    """QMP `migrate` to `addr`, then `query-migrate` until it ends: (the last reply, the last
    `active` one, the wall time in seconds)."""
    t0 = time.monotonic()
    sq.cmd("migrate", uri=addr)
    last = None
    while True:
        r = sq.cmd("query-migrate")
        if r.get("status") == "active":
            last = r
        if r.get("status") in ("completed", "failed", "cancelled"):
            return r, last, time.monotonic() - t0
        if time.monotonic() > t0 + timeout:
            raise Failure(f"QEMU migrate: not completed within {timeout} s: {r}")
        time.sleep(0.005)


def close_all(qmps, guests):
    for q in qmps:
        if q:
            q.close()
    for g in guests:
        g.stop()


def order(i):
    return ("r", "q") if i % 2 == 0 else ("q", "r")


def fmt(x, digits=1):
    return "–" if x is None else f"{x:.{digits}f}"


def mib_(n):
    return "–" if n is None else f"{n / 1048576:.1f}"


KEYS = ("rate", "rate_after", "total", "downtime", "seen", "bytes", "last_bytes", "rounds", "wall", "mbps", "first_ms", "last_ms")


def summarize(runs):
    out = {}
    for k in KEYS:
        xs = [x[k] for x in runs if x.get(k) is not None]
        out[k] = med(xs) if xs else None
    out["n"] = len(runs)
    return out


def run(b, a, res):
    sizes, rates = a.sizes, a.rates
    res.update({"started": time.strftime("%Y-%m-%d %H:%M %Z"), "load0": os.getloadavg()[0], "runs": a.runs,
                "sizes": sizes, "rates": rates, "window": a.window, "tcp": a.tcp, "cpu": qemu_cpu(),
                "qemu": subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout.splitlines()[0],
                "raw": {}, "errors": []})
    for i in range(a.runs):
        for mib in sizes:
            for rate in rates:
                for who in order(i):
                    key = (mib, rate, who)
                    try:
                        x = b.rtvisor(mib, rate) if who == "r" else b.qemu(mib, rate)
                    except VerificationFailed:
                        raise
                    except Exception as e:  # noqa: BLE001 - one failed run is reported, the others go on
                        msg = f"run {i + 1}, {mib} MiB, rate {rate}, {'rtvisor' if who == 'r' else 'QEMU'}: {e if isinstance(e, (Failure, QMPError)) else repr(e)}"
                        log("ERROR " + msg)
                        res["errors"].append(msg.splitlines()[0][:400])
                        continue
                    res["raw"].setdefault(key, []).append(x)
                    log(f"run {i + 1}/{a.runs} {mib:5d} MiB rate {rate:3d} {'rtvisor' if who == 'r' else 'QEMU   '}: "
                        f"achieved {fmt(x['rate'], 2)} pages/ms, total {x['total']:.0f} ms, downtime {x['downtime']:.1f} ms "
                        f"(pause→running {fmt(x['seen'])}), {mib_(x['bytes'])} MiB, rounds {x['rounds']}")
                    if a.results:
                        with open(a.results, "wb") as f:
                            pickle.dump(res, f)
    res["ended"] = time.strftime("%H:%M %Z")
    res["load1"] = os.getloadavg()[0]
    return res


def rate_label(rate):
    return "unpaced" if rate == 0 else str(rate)


def render(res, a):
    R = res["runs"]
    machine = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True, text=True).stdout.strip()
    kvm = "kvm_pvm (nested, emulates guest ring 0)" if EMULATING else "kvm"
    transport = "tcp:127.0.0.1:PORT" if res["tcp"] else "unix:PATH"
    s = {k: summarize(v) for k, v in res["raw"].items()}
    o = [f"\n## bench-migration, {res['started']}\n\n"]
    o.append(f"Machine: {os.cpu_count()} CPUs, {machine}, kernel {os.uname().release}, host KVM: {kvm}. Both VMM processes of a "
             f"migration on this host, the stream over `{transport}`. Guest: the `memwriter` inmate, 1 vCPU, "
             f"`memw.mib={res['window']} memw.pages_per_ms=RATE memw.steps=0` (a {res['window']} MiB window, one page written per "
             f"step, the whole window verified every 1024 steps). rtvisor: source `rtvisor-vmm --config DEF --control-socket S "
             f"--no-console-input`, target `rtvisor-vmm --incoming {transport} --no-console-input`, the control socket's `migrate` "
             f"request (downtime {DOWNTIME_MS} ms, max {MAX_ROUNDS} rounds, force) with the connected stream. QEMU: {res['qemu']}, "
             f"`-M microvm,acpi=off -enable-kvm -cpu {res['cpu']} -m MIB -nodefaults -no-user-config -nographic -serial stdio "
             f"-no-reboot -kernel memwriter.elf -append … -device isa-debug-exit,iobase=0xf4,iosize=1 -qmp unix:S,server=on,wait=off`, "
             f"target with `-incoming {transport}`; QMP `migrate-set-parameters downtime-limit={DOWNTIME_MS} "
             f"max-bandwidth={QEMU_BANDWIDTH >> 30} GiB/s`, `migrate uri={transport}`, `query-migrate` until `completed`. "
             f"Each run: {LINES_BEFORE} verified `MEMW step=` lines on the source, the move, {LINES_AFTER} more on the target, the "
             f"steps of both consoles one sequence (no `FAIL` in {sum(v['n'] for v in s.values())} runs). Medians of {R} "
             f"alternating runs. Load average {res['load0']:.2f} at the start, {res['load1']:.2f} at the end ({res['ended']}).\n")
    o.append("\nColumns: *achieved* = pages per ms the guest wrote on the source before the move (its `MEMW` lines' "
             "timing; asked: the rate column, `unpaced` = as fast as it runs); *total* and *downtime* as each VMM reports "
             "them (rtvisor: `hello` to the target's `running`, and the pause to the target's `running`; QEMU: `total-time` "
             "and `downtime`, which ends when the source has sent the last byte); *pause → running on the target* = "
             "for rtvisor the source's pause to the target's vCPU 0 entering the guest (both VMMs log their CLOCK_MONOTONIC "
             "time), and for QEMU the source's `STOP` to the target's `RESUME` QMP event; *sent* = rtvisor's "
             "whole stream, QEMU's `ram.transferred`; *last round* = sent while paused (rtvisor: the last round's pages; QEMU: "
             "`ram.downtime-bytes`); *rounds* = rtvisor's rounds including round 0 and the paused one, QEMU's "
             "`ram.dirty-sync-count` (dirty-log syncs, likewise from the first pass to the paused one).\n")
    o.append("\n| guest RAM | rate asked (pages/ms) | VMM | achieved (pages/ms) | total (ms) | downtime, own (ms) | "
             "pause → running on the target (ms) | sent (MiB) | last round (MiB) | rounds |\n|---|---|---|---|---|---|---|---|---|---|\n")
    for mib in res["sizes"]:
        for rate in res["rates"]:
            for who, name in (("r", "rtvisor"), ("q", "QEMU")):
                x = s.get((mib, rate, who))
                if not x:
                    o.append(f"| {mib} MiB | {rate_label(rate)} | {name} | no run completed | | | | | | |\n")
                    continue
                rounds = f"{x['rounds']:.0f}" if x["rounds"] is not None else "–"
                if x["n"] != R:
                    rounds += f" ({x['n']} of {R} runs)"
                o.append(f"| {mib} MiB | {rate_label(rate)} | {name} | {fmt(x['rate'], 2)} | {fmt(x['total'], 0)} | "
                         f"{fmt(x['downtime'])} | {fmt(x['seen'])} | {mib_(x['bytes'])} | {mib_(x['last_bytes'])} | {rounds} |\n")
    if res["errors"]:
        o.append("\nRuns that failed (not counted above):\n\n" + "".join(f"- {e}\n" for e in res["errors"]))

    o.append("\nNotes (computed from this run):\n")
    pairs = [(k[:2], s[k], s.get((k[0], k[1], "q"))) for k in s if k[2] == "r" and s.get((k[0], k[1], "q"))]
    pairs = [(c, r, q) for c, r, q in pairs if r["seen"] is not None and q["seen"] is not None]
    if pairs:
        wins = [c for c, r, q in pairs if r["seen"] <= q["seen"]]
        worst = max(pairs, key=lambda p: p[1]["seen"] / p[2]["seen"])
        o.append(f"- Goal \"downtime ≤ QEMU's at the same dirty rate\" (pause → running on the target): met in {len(wins)} of "
                 f"{len(pairs)} configurations; the largest ratio rtvisor / QEMU is {worst[1]['seen'] / worst[2]['seen']:.2f}× "
                 f"({worst[0][0]} MiB, rate {rate_label(worst[0][1])}: {worst[1]['seen']:.1f} vs {worst[2]['seen']:.1f} ms). QEMU's "
                 f"own `downtime` is shorter than its pause → resume because it stops counting when the source has sent "
                 f"everything; the target still loads the device state and starts its vCPUs.\n")
    small, big = min(res["sizes"]), max(res["sizes"])
    r0, r1 = s.get((small, res["rates"][0], "r")), s.get((big, res["rates"][0], "r"))
    q0, q1 = s.get((small, res["rates"][0], "q")), s.get((big, res["rates"][0], "q"))
    if r0 and r1 and q0 and q1 and small != big:
        o.append(f"- Guest RAM {small} → {big} MiB (rate {rate_label(res['rates'][0])}; the guest touches only its "
                 f"{res['window']} MiB window and its code): rtvisor's total {r0['total']:.0f} → {r1['total']:.0f} ms, stream "
                 f"{mib_(r0['bytes'])} → {mib_(r1['bytes'])} MiB; QEMU's {q0['total']:.0f} → {q1['total']:.0f} ms, "
                 f"{mib_(q0['bytes'])} → {mib_(q1['bytes'])} MiB. rtvisor skips the pages the guest never touched "
                 f"(the holes of its memfd-backed RAM, docs/snapshot.md); QEMU reads every page of RAM to find the zero ones and sends a "
                 f"small header for each, so its time and stream grow with the RAM size, not with what the guest wrote.\n")
    rs = [x for k, x in s.items() if k[2] == "r" and x.get("last_ms") is not None]
    if rs:
        dt = med([x["downtime"] for x in rs])
        last = med([x["last_ms"] for x in rs])
        last_mib = med([x["last_bytes"] for x in rs]) / 1048576
        rd = [x["downtime"] for k, v in res["raw"].items() if k[2] == "r" for x in v]
        qd = [x["seen"] for k, v in res["raw"].items() if k[2] == "q" for x in v if x.get("seen") is not None]
        o.append(f"- What rtvisor's downtime is made of (median over all configurations): {dt:.1f} ms from the pause to the "
                 f"target's `running`, of which {last:.1f} ms send the last round ({last_mib:.2f} MiB): the pages are not "
                 f"what costs, the fixed part is (capturing the machine state, sending it, the target loading it, the "
                 f"`ready`/`go`/`running` exchange; not broken down further here). Single runs: rtvisor {min(rd):.1f}–"
                 f"{max(rd):.1f} ms" + (f", QEMU's `STOP` → `RESUME` {min(qd):.1f}–{max(qd):.1f} ms" if qd else "") + ".\n")
    rates = [x["rate"] for x in s.values() if x["rate"] is not None]
    if rates:
        unpaced = [x["rate"] for k, x in s.items() if k[1] == 0 and x["rate"] is not None]
        bw = {who: [x["mbps"] for k, x in s.items() if k[2] == who and x.get("mbps")] for who in "rq"}
        bws = "; ".join(f"{name} {min(bw[w]):.0f}–{max(bw[w]):.0f} MiB/s" for w, name in (("r", "rtvisor's round 0"),
                                                                                     ("q", "QEMU's `ram.mbps`")) if bw[w])
        host = ("the development host's nested KVM (`kvm_pvm`) emulates the guest's ring-0 code, so the guest is slow: "
                if EMULATING else "")
        o.append(f"- The dirty rates are low: {host}the achieved rates span {min(rates):.2f}–{max(rates):.2f} pages/ms"
                 + (f" (unpaced: {min(unpaced):.2f}–{max(unpaced):.2f}; every 1024 steps include a read of the whole window)"
                    if unpaced else "")
                 + f", at most {max(rates) * 4.096 * 1000 / 1024:.0f} MiB/s of dirtying, and the guest rewrites only its "
                 f"{res['window']} MiB window, against a stream of {bws or '–'} here. So pre-copy converges after few rounds "
                 f"in every configuration and the pause is short for both VMMs; a guest dirtying memory faster than the "
                 f"stream (bare-metal KVM, a larger window) is not tested here.\n")
    o.append("- The same-host upgrade (guest memory handed over as descriptors) is measured by "
             "`scripts/bench-migration.sh --upgrade` (\"bench-migration --upgrade\" sections).\n")
    return "".join(o)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vmm")
    ap.add_argument("--inmates")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help=f"guest RAM {QUICK_SIZES}, rates {QUICK_RATES} only")
    ap.add_argument("--sizes", help="guest RAM sizes, MiB, comma-separated (default 32,256,1024)")
    ap.add_argument("--rates", help="pages per ms asked of the guest, comma-separated; 0 = unpaced (default 1,2,0)")
    ap.add_argument("--window", type=int, default=WINDOW_MIB, help="memwriter window, MiB (power of two, ≤ 64)")
    ap.add_argument("--tcp", action="store_true", help="the stream over tcp:127.0.0.1 instead of a unix socket")
    ap.add_argument("--out", help="markdown file to append results to (omit: print only)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    ap.add_argument("--results", help="also save the raw results here (pickle), after every run")
    ap.add_argument("--render", metavar="RESULTS", help="only print (and --out) the report of saved --results")
    ap.add_argument("--upgrade", action="store_true", help="measure the same-host upgrade instead (bench_upgrade.py)")
    a = ap.parse_args()
    if a.upgrade:
        import bench_upgrade
        return bench_upgrade.main(a)
    if a.render:
        with open(a.render, "rb") as f:
            res = pickle.load(f)
        res.setdefault("ended", "interrupted")
        res.setdefault("load1", os.getloadavg()[0])
        report = render(res, a)
        print(report)
        if a.out:
            with open(a.out, "a") as f:
                f.write(report)
        return
    if not (a.vmm and a.inmates):
        ap.error("--vmm and --inmates are required (unless --render)")
    a.sizes = tuple(int(x) for x in a.sizes.split(",")) if a.sizes else (QUICK_SIZES if a.quick else SIZES)
    a.rates = tuple(int(x) for x in a.rates.split(",")) if a.rates else (QUICK_RATES if a.quick else RATES)
    if a.window < 1 or a.window > 64 or a.window & (a.window - 1) or any(a.window + 4 > m for m in a.sizes):
        ap.error("--window: a power of two ≤ 64 that fits above 4 MiB in every guest RAM size")
    a.vmm, a.inmates = os.path.abspath(a.vmm), os.path.abspath(a.inmates)
    a.memwriter = os.path.join(a.inmates, "memwriter.elf")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    b = Bench(a)
    res = {}
    try:
        run(b, a, res)
        if a.results:
            with open(a.results, "wb") as f:
                pickle.dump(res, f)
        report = render(res, a)
    except VerificationFailed as e:
        log(f"FAIL: the guest's memory did not survive a migration:\n{e}")
        a.keep = True
        sys.exit(1)
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
    if res["errors"]:
        log(f"{len(res['errors'])} runs failed (listed in the report)")
        sys.exit(1)


if __name__ == "__main__":
    main()
