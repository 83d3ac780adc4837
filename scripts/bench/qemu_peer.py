"""The QEMU peer's -cpu argument, found by trying it on this host rather than by its CPU vendor:
`-cpu host` aborts on some hosts (AMD EPYC under a nested KVM: "failed to set MSR 0x10a",
IA32_ARCH_CAPABILITIES), where `host,-arch-capabilities` works."""
import os, subprocess, time

EMULATING = os.path.exists("/sys/module/kvm_pvm")
# The features rtvisor's emulating-kvm template hides, as QEMU -cpu flags (docs/cpu-templates.md).
HIDDEN = ",-cx16,-xsave,-popcnt,-smap" if EMULATING else ""


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
