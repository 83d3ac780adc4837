"""The QEMU peer's -cpu argument, found by trying it on this host rather than by its CPU vendor:
`-cpu host` aborts on some hosts (AMD EPYC under a nested KVM: "failed to set MSR 0x10a",
IA32_ARCH_CAPABILITIES), where `host,-arch-capabilities` works."""
import json, os, socket, subprocess, time

EMULATING = os.path.exists("/sys/module/kvm_pvm")
# The features rtvisor's emulating-kvm template hides, as QEMU -cpu flags (docs/cpu-templates.md).
HIDDEN = ",-cx16,-xsave,-popcnt,-smap" if EMULATING else ""


def machine_description():
    """'N CPUs, <CPU model>, host KVM: …', the Machine line of a docs/benchmarks.md section."""
    model = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True, text=True).stdout.strip()
    kvm = "kvm_pvm (nested, emulates guest ring 0)" if EMULATING else "kvm"
    return f"{os.cpu_count()} CPUs, {model}, host KVM: {kvm}"


def starts(cpu, seconds=2.0):
    """True if QEMU with this -cpu gets past machine reset (paused with -S) and keeps running."""
    cmd = ["qemu-system-x86_64", "-M", "microvm,acpi=off", "-enable-kvm", "-cpu", cpu, "-m", "16",
           "-nodefaults", "-no-user-config", "-display", "none", "-S", "-monitor", "none", "-serial", "none"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if p.poll() is not None:
            return False
        time.sleep(0.05)
    p.kill(); p.wait()
    return True


_cpu = None


def qemu_cpu():
    """`host` plus the emulating template's hidden features, with arch-capabilities off where
    plain `host` does not start."""
    global _cpu
    if _cpu is None:
        _cpu = next((c + HIDDEN for c in ("host", "host,-arch-capabilities") if starts(c + HIDDEN)), "host,-arch-capabilities" + HIDDEN)
    return _cpu


class QMPError(Exception):
    pass


class QMP:
    """A QMP client on QEMU's unix socket; events are kept (whole, with their timestamps) until
    asked for."""

    def __init__(self, path, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.s.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self.s.close()
                if time.monotonic() > deadline:
                    raise QMPError(f"QMP socket {path}: not up within {timeout} s")
                time.sleep(0.001)
        self.s.settimeout(timeout)
        self.f = self.s.makefile("rb")
        self.events = []
        self.f.readline()  # greeting
        self.cmd("qmp_capabilities")

    def _next(self):
        line = self.f.readline()
        if not line:
            raise QMPError("QMP connection closed")
        return json.loads(line)

    def cmd(self, name, **arguments):
        self.s.sendall(json.dumps({"execute": name, "arguments": arguments}).encode() + b"\n")
        while True:
            m = self._next()
            if "event" in m:
                self.events.append(m)
            elif "error" in m:
                raise QMPError(f"QMP {name}: {m['error']}")
            elif "return" in m:
                return m["return"]

    def wait_event(self, name, timeout=30):
        """The first `name` event (kept: asking again returns it again)."""
        self.s.settimeout(timeout)
        try:
            while True:
                for m in self.events:
                    if m["event"] == name:
                        return m
                self.events.append(self._next())
        except socket.timeout:
            raise QMPError(f"QMP: no {name} event within {timeout} s")

    def event(self, name):
        return next((m for m in self.events if m["event"] == name), None)

    def wait_running(self):
        if not self.cmd("query-status")["running"]:
            self.wait_event("RESUME")

    def close(self):
        try:
            self.f.close()
            self.s.close()
        except OSError:
            pass
