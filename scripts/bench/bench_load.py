#!/usr/bin/env python3
"""VM creation rate (issue 17) and one daemon under load (issue 16). Run through
scripts/bench-load.sh, which builds everything first.

"Started" means, for both VMMs, that the guest (the `idle` inmate) printed a line on its serial
console, measured twice: its first line `IDLE_START` (the VMM's creation path) and its ready
line `IDLE_READY` (after the guest's own timer calibration): from rtvisor, read on the VM's console socket
(RUN/vms/NAME/console.sock, which replays its backlog to a client that connects late); from
QEMU microvm, read on its stdout (`-serial stdio`), as scripts/bench/bench_boot.py does.
The clock starts when the start request is sent (rtvisor: connecting to the API socket for
`POST /v1/vms/NAME/start`; QEMU: spawning the process).

1. Creation rate: one rtvisord, VMs started serially (start, wait for the marker, next) and
   concurrently (N start requests at once, wait for every marker), against QEMU microvm
   processes spawned the same way. Started VMs keep running until the series ends; all are
   stopped between series. Alternating rounds, medians.
2. Load: a fresh rtvisord with M idle VMs started at once; then C API calls (list, inspect,
   daemon info) from T client threads while one more VM is started and stopped K times.
   Checks: every API call 2xx, the M VMMs keep their PIDs (and start times, restart counts,
   consoles), the extra VM starts and powers off K times, the daemon and its API front keep
   their PIDs. Any failed check is printed and the exit status is 1.
Everything started here is stopped at the end, also on errors and Ctrl-C.
"""
import argparse, http.client, json, os, random, re, secrets, select, shutil, signal, socket, statistics
import queue, subprocess, sys, tempfile, threading, time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_boot import finish, med, qemu_cmd, spawn_until  # noqa: E402
from qemu_peer import EMULATING, qemu_cpu  # noqa: E402

MARKER = "IDLE_READY"
# The idle inmate's first line, printed before anything else it does: how fast a VMM gets a
# guest running. IDLE_READY comes after the guest calibrated its LAPIC timer against the PIT
# (a 10 ms window, PIT exits on this emulating host), which costs both VMMs the same.
FIRST_LINE = "IDLE_START"
RATE_MARKERS = (FIRST_LINE, MARKER)
CMDLINE = "idle.heartbeat=0"
# microvm has no i8042 by default; the idle inmate polls the i8042's status port for
# Ctrl-Alt-Del, and on an unassigned port (reads 0xff) it spins instead of sleeping in HLT.
QEMU_EXTRA = ["-device", "i8042"]


class Failure(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# The control API over its unix socket: one connection per request, as rtvisorctl does.

class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


def api(sock, method, path, body=None, timeout=30):
    """(status, parsed body or text, seconds). Status 0 with the exception text when the
    request did not get an HTTP answer."""
    t0 = time.monotonic()
    c = UnixHTTPConnection(sock, timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        c.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        r = c.getresponse()
        data = r.read()
        status = r.status
    except Exception as e:  # noqa: BLE001 - reported as a failed call
        return 0, f"{type(e).__name__}: {e}", time.monotonic() - t0
    finally:
        c.close()
    dt = time.monotonic() - t0
    try:
        return status, json.loads(data), dt
    except ValueError:
        return status, data.decode(errors="replace"), dt


def api_ok(sock, method, path, body=None, timeout=30):
    status, data, _ = api(sock, method, path, body, timeout)
    if not 200 <= status < 300:
        raise Failure(f"{method} {path}: HTTP {status}: {data}")
    return data


def wait_console(sock_path, marker, deadline):
    """Connect to a VM's console socket as soon as it exists (the VMM creates it), read until
    `marker`; returns (monotonic time the marker was seen, the bytes read)."""
    s = None
    while s is None:
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(sock_path)
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            s = None
            if time.monotonic() > deadline:
                raise Failure(f"{sock_path}: no console socket within the timeout")
            time.sleep(0.001)
    buf = b""
    try:
        while marker.encode() not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([s], [], [], left)[0]:
                raise Failure(f"{sock_path}: no {marker!r} within the timeout; got {buf[-300:]!r}")
            chunk = s.recv(65536)
            if not chunk:
                raise Failure(f"{sock_path}: console closed before {marker!r}; got {buf[-300:]!r}")
            buf += chunk
        return time.monotonic(), buf
    finally:
        s.close()


def console_backlog(sock_path, quiet=0.2):
    """Everything the console socket replays to a new client (it sends its backlog at once)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock_path)
    buf = b""
    try:
        while select.select([s], [], [], quiet)[0]:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    finally:
        s.close()
    return buf


# ---------------------------------------------------------------------------------------------
# Processes this script starts, all of them stopped by cleanup().

class Run:
    def __init__(self, bin_dir, inmates, mem_mib):
        self.bin_dir, self.mem_mib = bin_dir, mem_mib
        self.kernel = os.path.join(inmates, "idle.elf")
        self.tmp = tempfile.mkdtemp(prefix="rtvisor-bench-load-")
        os.chmod(self.tmp, 0o755)
        # VM names are global on a host in a few places (cgroup v1 groups rtvisor/NAME, the
        # jail mount point /run/rtvisor/jail/NAME): a random prefix keeps this run's apart
        # from any other daemon's.
        self.prefix = "bl" + secrets.token_hex(3)
        self.daemons = []  # (Popen, log path)
        self.qemus = []
        self.names = []
        self.leftover = []
        self.keep_logs = None  # a directory to copy the daemons' logs to at cleanup

    # --- rtvisord -----------------------------------------------------------------------------
    def daemon(self, tag, names):
        d = os.path.join(self.tmp, tag)
        defs = os.path.join(d, "defs")
        os.makedirs(defs)
        for n in names:
            with open(os.path.join(defs, n + ".json"), "w") as f:
                json.dump({"name": n, "memory_mib": self.mem_mib, "kernel": self.kernel, "cmdline": CMDLINE,
                           "stop_timeout_s": 5}, f)
        self.names += names
        sock = os.path.join(d, "api.sock")
        log_path = os.path.join(d, "rtvisord.log")
        log = open(log_path, "w")
        # Its own session: a Ctrl-C on the terminal reaches this script only, whose cleanup then
        # stops the daemon (SIGINT: every guest stopped, then exit).
        p = subprocess.Popen([os.path.join(self.bin_dir, "rtvisord"), "--definitions", defs,
                              "--run-directory", os.path.join(d, "run"), "--api-socket", sock,
                              "--api-group", "root", "--vmm", os.path.join(self.bin_dir, "rtvisor-vmm")],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.daemons.append((p, log_path))
        deadline = time.monotonic() + 30
        while True:
            if p.poll() is not None:
                raise Failure(f"rtvisord exited ({p.returncode}) at start; log:\n{open(log_path).read()[-2000:]}")
            if os.path.exists(sock) and api(sock, "GET", "/v1/daemon", timeout=5)[0] == 200:
                break
            if time.monotonic() > deadline:
                raise Failure(f"rtvisord: API not up within 30 s; log:\n{open(log_path).read()[-2000:]}")
            time.sleep(0.02)
        return Daemon(p, sock, os.path.join(d, "run"), log_path)

    def stop_daemon(self, dmn):
        p = dmn.proc
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                print(f"rtvisord {p.pid} did not exit within 30 s of SIGINT: killed", file=sys.stderr)
                p.kill(); p.wait()

    # --- QEMU --------------------------------------------------------------------------------
    def qemu_argv(self):
        return qemu_cmd(self.kernel, CMDLINE, self.mem_mib) + QEMU_EXTRA

    def kill_qemus(self):
        for p in self.qemus:
            if p.poll() is None:
                p.kill()
            finish(p, 10)
        self.qemus = []

    # --- the end -----------------------------------------------------------------------------
    def cleanup(self):
        self.kill_qemus()
        for p, _ in self.daemons:
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGINT)
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill(); p.wait()
        # A VMM outlives a daemon that was SIGKILLed: end any VMM running one of this run's
        # definitions (their paths are all below self.tmp, so other VMMs are never touched).
        self.leftover = vmm_pids_under(self.tmp)  # rtvisord exited (or was killed) and left these
        for _ in range(50):
            left = vmm_pids_under(self.tmp)
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        else:
            print(f"warning: rtvisor-vmm processes still alive: {vmm_pids_under(self.tmp)}", file=sys.stderr)
        # Empty jail mount points named after this run's VMs (rtvisor-vmm leaves them).
        for n in self.names:
            try:
                os.rmdir(f"/run/rtvisor/jail/{n}")
            except OSError:
                pass
        if self.keep_logs:
            os.makedirs(self.keep_logs, exist_ok=True)
            for p, log in self.daemons:
                shutil.copy(log, os.path.join(self.keep_logs, f"rtvisord-{p.pid}.log"))
            print(f"rtvisord logs copied to {self.keep_logs}", file=sys.stderr)
        shutil.rmtree(self.tmp, ignore_errors=True)


class Pool:
    """T client threads taking GET requests from a queue; results (phase, kind, path, status,
    error body or None, seconds)."""
    def __init__(self, sock, threads):
        self.sock, self.q, self.results, self.submitted = sock, queue.Queue(), [], 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.work, daemon=True) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def work(self):
        while True:
            item = self.q.get()
            if item is None:
                self.q.task_done()
                return
            phase, kind, path = item
            status, body, dt = api(self.sock, "GET", path)
            with self.lock:
                self.results.append((phase, kind, path, status, None if 200 <= status < 300 else body, dt))
            self.q.task_done()

    def submit(self, phase, calls):
        for kind, path in calls:
            self.q.put((phase, kind, path))
        self.submitted += len(calls)

    def wait(self):
        self.q.join()

    def close(self):
        for _ in self.threads:
            self.q.put(None)


class Daemon:
    def __init__(self, proc, sock, run_dir, log):
        self.proc, self.sock, self.run_dir, self.log = proc, sock, run_dir, log

    def console(self, name):
        return os.path.join(self.run_dir, "vms", name, "console.sock")

    def api_front_pid(self):
        kids = []
        for t in os.listdir(f"/proc/{self.proc.pid}/task"):  # children are listed per thread
            kids += [int(x) for x in open(f"/proc/{self.proc.pid}/task/{t}/children").read().split()]
        for k in kids:
            try:
                if b"--api-front" in open(f"/proc/{k}/cmdline", "rb").read():
                    return k
            except OSError:
                pass
        return None

    def vms(self):
        return {v["name"]: v for v in api_ok(self.sock, "GET", "/v1/vms")["vms"]}

    def check_running(self, names):
        """Failure, with what rtvisord knows and logged about them, if any of `names` is not running."""
        vms = self.vms()
        bad = [n for n in names if vms[n]["state"] != "running"]
        if bad:
            log = [l.rstrip() for l in open(self.log, errors="replace") if any(f"VM_NAME={n} " in l for n in bad)]
            raise Failure(f"{len(bad)} VM(s) not running when they should be: " +
                          "; ".join(f"{n}: {vms[n]['state']}, last exit {vms[n].get('last_exit')}" for n in bad) +
                          "\nrtvisord's log about them:\n" + "\n".join(log[-20:]))

    def stop_all(self, names, timeout=30):
        """Force-stop the named VMs (SIGTERM to each VMM) and wait until all are stopped."""
        for n in names:
            api_ok(self.sock, "POST", f"/v1/vms/{n}/stop?force=true")
        deadline = time.monotonic() + timeout
        while True:
            vms = self.vms()
            busy = [n for n in names if vms[n]["state"] not in ("stopped", "failed")]
            if not busy:
                return
            if time.monotonic() > deadline:
                raise Failure(f"VMs not stopped within {timeout} s: {', '.join(busy)}")
            time.sleep(0.05)


def vmm_pids_under(path):
    pids = []
    for e in os.listdir("/proc"):
        if not e.isdigit():
            continue
        try:
            argv = open(f"/proc/{e}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"rtvisor-vmm") and any(a.startswith(path.encode()) for a in argv):
            pids.append(int(e))
    return pids


def mem_kib(pid):
    """(RSS, PSS) of a process in KiB."""
    rollup = open(f"/proc/{pid}/smaps_rollup").read()
    return (int(re.search(r"^Rss:\s+(\d+)", rollup, re.M).group(1)),
            int(re.search(r"^Pss:\s+(\d+)", rollup, re.M).group(1)))


def proc_start(pid):
    """Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[19])
    except OSError:
        return None


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(p / 100 * len(xs) + 0.5)) - 1))]


# ---------------------------------------------------------------------------------------------
# 1. Creation rate.

def rtvisor_start_and_wait(dmn, name, timeout=30, marker=MARKER):
    deadline = time.monotonic() + timeout
    api_ok(dmn.sock, "POST", f"/v1/vms/{name}/start")
    t, _ = wait_console(dmn.console(name), marker, deadline)
    return t


def rtvisor_serial(dmn, names, marker):
    """Each VM: the start request, then its `marker`; the next is started once this guest is
    quiet (its ready line), so guests' own start-up never overlaps the next VM's creation.
    VMs/s = VMs over the summed request → marker times."""
    lat = []
    for n in names:
        t = time.monotonic()
        lat.append(rtvisor_start_and_wait(dmn, n, marker=marker) - t)
        if marker != MARKER:
            wait_console(dmn.console(n), MARKER, time.monotonic() + 30)
    dmn.check_running(names)
    dmn.stop_all(names)
    return len(names) / sum(lat), lat


def start_at_once(dmn, names, timeout=60, marker=MARKER):
    """Every start request at once (one thread each), then every console marker; returns the
    seconds from the requests to each VM's marker, sorted."""
    go = threading.Event()
    done, errors = {}, []

    def one(n):
        go.wait()
        try:
            done[n] = rtvisor_start_and_wait(dmn, n, timeout, marker)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"{n}: {e}")
    threads = [threading.Thread(target=one, args=(n,), daemon=True) for n in names]
    for t in threads:
        t.start()
    time.sleep(0.05)  # every thread waiting on the event
    t0 = time.monotonic()
    go.set()
    for t in threads:
        t.join(timeout + 30)
    if errors or len(done) != len(names):
        raise Failure(f"starting {len(names)} VMs at once: " +
                      "; ".join(errors or [f"{len(names) - len(done)} VMs never reported"]))
    return sorted(t - t0 for t in done.values())


def rtvisor_concurrent(dmn, names, marker):
    lat = start_at_once(dmn, names, marker=marker)
    dmn.check_running(names)
    dmn.stop_all(names)
    return len(names) / lat[-1], lat


def qemus_alive(run):
    dead = [p.returncode for p in run.qemus if p.poll() is not None]
    if dead:
        raise Failure(f"{len(dead)} QEMU process(es) exited before the series ended: statuses {dead}")


def read_until(p, marker, buf, timeout=30):
    """Reads a QEMU's stdout until `marker` (already in `buf` or still to come)."""
    deadline = time.monotonic() + timeout
    while marker.encode() not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([p.stdout], [], [], left)[0]:
            raise Failure(f"QEMU: no {marker!r} within {timeout} s; got {buf[-300:]!r}")
        chunk = os.read(p.stdout.fileno(), 65536)
        if not chunk:
            raise Failure(f"a QEMU exited before {marker!r}: {buf[-300:]!r}")
        buf += chunk
    return buf


def qemu_serial(run, n, marker):
    """As rtvisor_serial: spawn → marker timed, the next spawned once this guest is quiet."""
    lat = []
    for _ in range(n):
        t, p, buf = spawn_until(run.qemu_argv(), marker, 30)
        run.qemus.append(p)
        lat.append(t)
        read_until(p, MARKER, buf)
    qemus_alive(run)
    run.kill_qemus()
    return n / sum(lat), lat


def qemu_concurrent(run, n, marker, timeout=60):
    t0 = time.monotonic()
    procs = []
    for _ in range(n):
        p = subprocess.Popen(run.qemu_argv(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        run.qemus.append(p)
        procs.append(p)
    bufs = {p.stdout.fileno(): b"" for p in procs}
    seen = {}
    while len(seen) < n:
        left = t0 + timeout - time.monotonic()
        if left <= 0:
            raise Failure(f"QEMU: {n - len(seen)} of {n} guests without {marker!r} within {timeout} s")
        for fd in select.select([fd for fd in bufs if fd not in seen], [], [], left)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise Failure(f"a QEMU exited before {marker!r}: {bufs[fd][-300:]!r}")
            bufs[fd] += chunk
            if marker.encode() in bufs[fd]:
                seen[fd] = time.monotonic()
    total = max(seen.values()) - t0
    qemus_alive(run)
    run.kill_qemus()
    return n / total, sorted(t - t0 for t in seen.values())


# ---------------------------------------------------------------------------------------------
# 2. Load.

def load_bench(run, a, failures):
    fleet = [f"{run.prefix}-l{i:02d}" for i in range(a.vms)]
    cyc = f"{run.prefix}-cyc"
    dmn = run.daemon("load", fleet + [cyc])
    res = {}
    front0 = dmn.api_front_pid()
    res["mem_idle"] = (mem_kib(dmn.proc.pid), mem_kib(front0))

    # Start the fleet: every start request at once, then every console marker.
    res["fleet_s"] = start_at_once(dmn, fleet, 120)[-1]
    time.sleep(1)  # let the last VMMs finish their start-up before measuring the daemon
    dmn.check_running(fleet)
    vms = dmn.vms()
    before = {n: (vms[n]["pid"], proc_start(vms[n]["pid"]), vms[n]["restarts"]) for n in fleet}
    res["mem_fleet"] = (mem_kib(dmn.proc.pid), mem_kib(front0))

    # Phase A: C API calls from T client threads at once, flat out (throughput, latency).
    # Phase B: K start/stop cycles of one more VM, each start and each stop request sent together
    # with a burst of C/(2K) calls (so every lifecycle change happens under concurrent requests,
    # some of them inspecting that very VM).
    rnd = random.Random(a.seed)

    def mix(n, extra=None):
        out = []
        for i in range(n):
            k = rnd.randrange(5)
            if k in (0, 1):
                out.append(("list", "/v1/vms"))
            elif k in (2, 3):
                out.append(("inspect", f"/v1/vms/{extra if extra and rnd.random() < 0.5 else rnd.choice(fleet)}"))
            else:
                out.append(("daemon", "/v1/daemon"))
        return out
    pool = Pool(dmn.sock, a.threads)
    try:
        t0 = time.monotonic()
        pool.submit("A", mix(a.calls))
        pool.wait()
        res["calls_s"] = time.monotonic() - t0

        burst = max(1, a.calls // (2 * a.cycles))
        cycle_log, cycle_err = [], []
        pids = set()
        t0 = time.monotonic()
        for i in range(a.cycles):
            try:
                t = time.monotonic()
                pool.submit("B", mix(burst, cyc))
                st, body, dt_start = api(dmn.sock, "POST", f"/v1/vms/{cyc}/start")
                if st != 200:
                    raise Failure(f"cycle {i + 1}: POST /v1/vms/{cyc}/start: HTTP {st}: {body}")
                up, _ = wait_console(dmn.console(cyc), MARKER, time.monotonic() + 30)
                pid = api_ok(dmn.sock, "GET", f"/v1/vms/{cyc}")["summary"].get("pid")
                if pid in pids:
                    raise Failure(f"cycle {i + 1}: the VMM has the PID {pid} of an earlier cycle")
                pids.add(pid)
                ts = time.monotonic()
                pool.submit("B", mix(burst, cyc))
                st, body, dt_stop = api(dmn.sock, "POST", f"/v1/vms/{cyc}/stop")
                if st != 200:
                    raise Failure(f"cycle {i + 1}: POST /v1/vms/{cyc}/stop: HTTP {st}: {body}")
                deadline = time.monotonic() + 30
                while True:
                    s = api_ok(dmn.sock, "GET", f"/v1/vms/{cyc}")["summary"]
                    if s["state"] == "stopped":
                        break
                    if s["state"] not in ("running", "stopping") or time.monotonic() > deadline:
                        raise Failure(f"cycle {i + 1}: after the stop request the VM is {s['state']}: {s}")
                    time.sleep(0.01)
                stopped = time.monotonic()
                le = s.get("last_exit", {})
                if le.get("status") != 0 or le.get("reason") != "guest powered off":
                    raise Failure(f"cycle {i + 1}: the VM ended with {le}, not a clean power-off")
                if pid in vmm_pids_under(run.tmp):
                    raise Failure(f"cycle {i + 1}: VMM {pid} still running after the VM stopped")
                cycle_log.append((up - t, stopped - ts, dt_start, dt_stop))
                pool.wait()
            except Failure as e:
                cycle_err.append(str(e))
                break
        pool.wait()
        res["cycles_s"] = time.monotonic() - t0
    finally:
        pool.close()
    results = pool.results

    # Checks.
    bad = [r for r in results if not 200 <= r[3] < 300]
    if bad or len(results) != pool.submitted:
        failures.append(f"{len(bad) + pool.submitted - len(results)} of {pool.submitted} API calls did not return 2xx; first ones:")
        for r in bad[:10]:
            failures.append(f"  GET {r[2]}: HTTP {r[3]}: {r[4]}")
    for ph in ("A", "B"):
        res["lat_" + ph] = [r[5] for r in results if r[0] == ph]
        res["kind_" + ph] = {k: [r[5] for r in results if r[0] == ph and r[1] == k] for k in ("list", "inspect", "daemon")}
    res["cycles"] = cycle_log
    if cycle_err:
        failures.append(f"start/stop cycling of {cyc} stopped after {len(cycle_log)} of {a.cycles} cycles: {cycle_err[0]}")
    elif len(cycle_log) != a.cycles:
        failures.append(f"start/stop cycling: {len(cycle_log)} of {a.cycles} cycles done")

    vms = dmn.vms()
    disturbed = []
    for n in fleet:
        v = vms.get(n, {})
        pid0, start0, restarts0 = before[n]
        now = (v.get("pid"), proc_start(v.get("pid")) if v.get("pid") else None, v.get("restarts"))
        if v.get("state") != "running" or now != (pid0, start0, restarts0):
            disturbed.append(f"{n}: before pid {pid0} (start {start0}, restarts {restarts0}), after state "
                             f"{v.get('state')} pid {now[0]} (start {now[1]}, restarts {now[2]})")
            continue
        backlog = console_backlog(dmn.console(n))
        if backlog.count(b"IDLE_") != 2 or FIRST_LINE.encode() not in backlog or MARKER.encode() not in backlog:
            disturbed.append(f"{n}: console shows more than its first and ready lines: {backlog[-300:]!r}")
    if disturbed:
        failures.append(f"{len(disturbed)} of the {a.vms} VMs were disturbed:")
        failures += ["  " + d for d in disturbed[:10]]
    front1 = dmn.api_front_pid()
    if front1 != front0:
        failures.append(f"the API front process changed during the run: PID {front0} → {front1} (restarted)")
    if dmn.proc.poll() is not None:
        failures.append(f"rtvisord exited during the run ({dmn.proc.returncode})")
        return res
    res["mem_after"] = (mem_kib(dmn.proc.pid), mem_kib(front1) if front1 else (0, 0))
    vmm_mem = []
    for n in fleet:
        try:
            vmm_mem.append(mem_kib(before[n][0]))
        except OSError:  # ended: reported above
            pass
    if vmm_mem:
        res["vmm_rss"] = statistics.median(m[0] for m in vmm_mem)
        res["vmm_pss"] = statistics.median(m[1] for m in vmm_mem)

    # Anything rtvisord logged at error priority or worse (<0>–<3>) is a finding.
    errs = [line.rstrip() for line in open(dmn.log, errors="replace") if re.match(r"^<[0-3]>", line)]
    if errs:
        failures.append(f"rtvisord logged {len(errs)} error(s); first ones:")
        failures += ["  " + e[:300] for e in errs[:10]]
    res["warnings"] = [line.rstrip() for line in open(dmn.log, errors="replace") if line.startswith("<4>")]

    t = time.monotonic()
    run.stop_daemon(dmn)
    res["shutdown_s"] = time.monotonic() - t
    if dmn.proc.returncode != 0:
        failures.append(f"rtvisord exited with status {dmn.proc.returncode} on SIGINT")
    left = vmm_pids_under(os.path.dirname(dmn.run_dir))
    if left:
        failures.append(f"rtvisor-vmm processes left after the daemon stopped: {left}")
    return res


# ---------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True, help="directory with rtvisord and rtvisor-vmm")
    ap.add_argument("--inmates", required=True)
    ap.add_argument("--out", help="markdown file to append results to (only when every check passed)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of the creation-rate series")
    ap.add_argument("--serial", type=int, default=20, help="VMs per serial series")
    ap.add_argument("--concurrent", type=int, default=20, help="VMs per concurrent series")
    ap.add_argument("--vms", type=int, default=50, help="idle VMs under load")
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=50)
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--memory-mib", type=int, default=16)
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--skip-rate", action="store_true", help="only the load benchmark")
    ap.add_argument("--skip-load", action="store_true", help="only the creation rate")
    ap.add_argument("--logs", help="copy rtvisord's logs here at the end (always done, to a new directory "
                    "in /tmp, when the run fails)")
    a = ap.parse_args()
    a.bin_dir, a.inmates = os.path.abspath(a.bin_dir), os.path.abspath(a.inmates)
    if os.geteuid() != 0:
        sys.exit("bench-load: needs root (rtvisord jails its VMMs)")

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    run = Run(a.bin_dir, a.inmates, a.memory_mib)
    failures = []
    rate = {}
    started = time.time()
    load_start = open("/proc/loadavg").read().split()[0]
    run.keep_logs = a.logs
    ok = False
    try:
        os.sync()
        cpu = qemu_cpu()
        if not a.skip_rate:
            ser = [f"{run.prefix}-s{i:02d}" for i in range(a.serial)]
            con = [f"{run.prefix}-c{i:02d}" for i in range(a.concurrent)]
            dmn = run.daemon("rate", ser + con)
            # Warm-up (page cache, first KVM VM of the run), not counted.
            rtvisor_start_and_wait(dmn, ser[0]); dmn.stop_all(ser[:1])
            _, p, _ = spawn_until(run.qemu_argv(), MARKER, 30); run.qemus.append(p); run.kill_qemus()
            for marker in RATE_MARKERS:
                for k in ("rs", "qs", "rc", "qc"):
                    rate[marker, k] = []
                for i in range(a.rounds):
                    order = ["r", "q"] if i % 2 == 0 else ["q", "r"]
                    for who in order:
                        r, lat = rtvisor_serial(dmn, ser, marker) if who == "r" else qemu_serial(run, a.serial, marker)
                        rate[marker, who + "s"].append((r, lat))
                        print(f"{marker} round {i + 1} serial {who}: {r:.1f} VMs/s, median {med(lat) * 1000:.1f} ms", file=sys.stderr)
                    for who in order:
                        r, lat = rtvisor_concurrent(dmn, con, marker) if who == "r" else qemu_concurrent(run, a.concurrent, marker)
                        rate[marker, who + "c"].append((r, lat))
                        print(f"{marker} round {i + 1} concurrent {who}: {r:.1f} VMs/s, last up after {lat[-1] * 1000:.0f} ms",
                              file=sys.stderr)
            run.stop_daemon(dmn)
        load = load_bench(run, a, failures) if not a.skip_load else {}
        ok = not failures
    except KeyboardInterrupt:
        ok = True  # interrupted, not failed: no logs to keep
        raise
    finally:
        if not ok and not run.keep_logs:
            run.keep_logs = tempfile.mkdtemp(prefix="bench-load-logs-")
        run.cleanup()

    if run.leftover:
        failures.append(f"rtvisor-vmm processes left running after rtvisord exited (killed by this script): {run.leftover}")
    ncpu = os.cpu_count()
    lines = []
    w = lines.append
    model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    kvm = "kvm_pvm (nested, emulates guest ring 0)" if EMULATING else "kvm"
    qemu_v = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    w(f"\n## bench-load, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}\n")
    w(f"Machine: {ncpu} CPUs, {model}, kernel {os.uname().release}, host KVM: {kvm}. QEMU: {qemu_v}, "
      f"`-M microvm,acpi=off -enable-kvm -cpu {cpu} -device i8042`. Guest: the `idle` inmate "
      f"(`{CMDLINE}`), {a.memory_mib} MiB. \"Started\" = the guest's `{MARKER}` line read on its console "
      f"(rtvisor: the VM's console socket; QEMU: `-serial stdio`), timed from the start request "
      f"(rtvisor: `POST /v1/vms/NAME/start` to one rtvisord in the foreground; QEMU: spawning the process). "
      f"Load average at the start: {load_start}.\n")
    if rate:
        w(f"VM creation rate (issue 17), medians of {a.rounds} alternating rounds; started VMs keep running "
          f"until their series ends. Serial: one VM at a time, the next started once the previous guest is "
          f"quiet (its `{MARKER}` line), VMs/s = VMs over the summed request → marker times. Concurrent: "
          f"all start requests at once, VMs/s = VMs over the time to the last marker. Two markers: `{FIRST_LINE}`, the guest's first line (how fast the VMM has "
          f"the guest running), and `{MARKER}`, after the guest calibrated its timer against the PIT (10 ms "
          f"and PIT exits, the same guest work under either VMM):\n")
        w("| measurement | rtvisor | QEMU microvm | rtvisor / QEMU |\n|---|---|---|---|")
        for marker in RATE_MARKERS:
            def mr(k, marker=marker):
                return med([r for r, _ in rate[marker, k]])
            w(f"| serial, to `{marker}`: {a.serial} VMs one after the other, VMs/s | {mr('rs'):.1f} | {mr('qs'):.1f} | {mr('rs') / mr('qs'):.2f}× |")
            ls_r = med([med(l) for _, l in rate[marker, "rs"]]) * 1000
            ls_q = med([med(l) for _, l in rate[marker, "qs"]]) * 1000
            w(f"| serial, to `{marker}`: request → marker per VM, ms | {ls_r:.1f} | {ls_q:.1f} | {ls_r / ls_q:.2f}× |")
            w(f"| concurrent, to `{marker}`: {a.concurrent} VMs at once, VMs/s | {mr('rc'):.1f} | {mr('qc'):.1f} | {mr('rc') / mr('qc'):.2f}× |")
            lc_r = med([l[-1] for _, l in rate[marker, "rc"]]) * 1000
            lc_q = med([l[-1] for _, l in rate[marker, "qc"]]) * 1000
            w(f"| concurrent, to `{marker}`: requests → last marker, ms | {lc_r:.0f} | {lc_q:.0f} | {lc_r / lc_q:.2f}× |")
            w(f"| concurrent, to `{marker}`: VMs/s per CPU (Firecracker publishes 5 per core) | {mr('rc') / ncpu:.1f} | "
              f"{mr('qc') / ncpu:.1f} | |")
        w("")
        for marker in RATE_MARKERS:
            w(f"Every round to `{marker}`, VMs/s (rtvisor / QEMU): serial " +
              "; ".join(f"{r:.1f} / {q:.1f}" for (r, _), (q, _) in zip(rate[marker, "rs"], rate[marker, "qs"])) + "; concurrent " +
              "; ".join(f"{r:.1f} / {q:.1f}" for (r, _), (q, _) in zip(rate[marker, "rc"], rate[marker, "qc"])) + ".\n")
    L = load
    if "lat_A" in L:
        def mib(kib):
            return f"{kib / 1024:.1f}"
        burst = max(1, a.calls // (2 * a.cycles))
        w(f"Load (issue 16): one rtvisord, {a.vms} idle VMs started at once. Then (A) {a.calls} API calls "
          f"from {a.threads} client threads at once (2/5 `GET /v1/vms`, 2/5 `GET /v1/vms/NAME`, 1/5 "
          f"`GET /v1/daemon`; one connection per call, as rtvisorctl does; the client is this Python "
          f"process, on the same {ncpu} CPUs), and (B) one more VM started and stopped {a.cycles} times "
          f"(graceful stop: Ctrl-Alt-Del, the guest powers off), each start and each stop request sent "
          f"together with a burst of {burst} calls of the same mix, half the inspects on the cycling VM:\n")
        w("| measurement | value |\n|---|---|")
        w(f"| {a.vms} VMs started at once: requests → last marker | {L['fleet_s'] * 1000:.0f} ms ({a.vms / L['fleet_s']:.1f} VMs/s) |")
        for ph, label in (("A", "flat out"), ("B", "during start/stop")):
            la = L["lat_" + ph]
            if not la:
                continue
            w(f"| ({ph}) API latency, {label}, {len(la)} calls, p50 / p99 / max | {pct(la, 50) * 1000:.1f} / "
              f"{pct(la, 99) * 1000:.1f} / {max(la) * 1000:.1f} ms |")
            if ph == "A":
                for k, xs in L["kind_A"].items():
                    if xs:
                        w(f"| (A) `{k}`, {len(xs)} calls, p50 / p99 | {pct(xs, 50) * 1000:.1f} / {pct(xs, 99) * 1000:.1f} ms |")
                w(f"| (A) throughput | {len(la) / L['calls_s']:.0f} calls/s ({len(la)} in {L['calls_s']:.2f} s) |")
        cy = L["cycles"]
        if cy:
            w(f"| (B) {len(cy)} cycles: start request → marker, median / max | {med([c[0] for c in cy]) * 1000:.1f} / {max(c[0] for c in cy) * 1000:.1f} ms |")
            w(f"| (B) stop request → `stopped`, median / max | {med([c[1] for c in cy]) * 1000:.0f} / {max(c[1] for c in cy) * 1000:.0f} ms |")
            w(f"| (B) `POST start` / `POST stop` answered, median | {med([c[2] for c in cy]) * 1000:.1f} / {med([c[3] for c in cy]) * 1000:.1f} ms |")
            w(f"| (B) all {len(cy)} cycles | {L['cycles_s']:.1f} s |")
        for key, label in (("mem_idle", "no VM running"), ("mem_fleet", f"{a.vms} VMs running, before A"),
                           ("mem_after", "after A and B")):
            if key in L:
                (dr, dp), (fr, fp) = L[key]
                w(f"| rtvisord RSS / PSS, {label}: daemon + API front | {mib(dr)} / {mib(dp)} + {mib(fr)} / {mib(fp)} MiB |")
        if "vmm_rss" in L:
            w(f"| one idle VMM, RSS / PSS, median of {a.vms} | {mib(L['vmm_rss'])} / {mib(L['vmm_pss'])} MiB |")
        if "shutdown_s" in L:
            w(f"| SIGINT → rtvisord exited, {a.vms} guests stopped gracefully | {L['shutdown_s'] * 1000:.0f} ms |")
        w("")
        w(f"Checks: every API call 2xx; the {a.vms} VMMs have the same PID, start time and restart count at the "
          f"end, and each console shows just its first and ready lines; the extra VM started and powered off cleanly "
          f"{a.cycles} times, a new VMM each time; the daemon and its API front kept their PIDs; rtvisord logged "
          f"no error; no VMM left after it stopped. Result: "
          f"{'**all passed**' if not failures else '**FAILED**'}. "
          f"rtvisord warnings: {len(L.get('warnings', []))}. Load average at the end: {open('/proc/loadavg').read().split()[0]}.\n")
    text = "\n".join(lines)
    print(text)
    if failures:
        print("\nbench-load: FAILED CHECKS:\n" + "\n".join(failures), file=sys.stderr)
        for wline in L.get("warnings", [])[:10]:
            print("  warning: " + wline[:300], file=sys.stderr)
        sys.exit(1)
    if a.out:
        with open(a.out, "a") as f:
            f.write(text + "\n")
        print(f"appended to {a.out}", file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt as e:
        sys.exit(f"bench-load: interrupted ({str(e) or 'Ctrl-C'}); everything it started was stopped")
    except Failure as e:
        sys.exit(f"bench-load: FAILED: {e}")
