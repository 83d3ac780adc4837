#!/usr/bin/python3
"""The dashboard and /metrics end to end (docs/metrics.md): a real rtvisord with three VMs (an
idle inmate, a real-time VM with the latency probe, a virtio-blk inmate doing I/O), its
metrics TCP listener enabled by rtvisord.json, and the page in headless Chromium driven over
the DevTools protocol. Checks, from the DOM, that the page lists the three VMs with their
states and numbers that change between polls; that /metrics on the TCP listener, metrics.sock
and api.sock parses with prometheus_client; that metrics.sock refuses a mutating call. Writes
the screenshots (docs/img/dashboard.png by default, and dashboard-phone.png at 390 pixels).

  scripts/test-dashboard.py --bin-dir .build/debug --inmates DIR [--screenshot PATH]
"""
import argparse
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import websocket
from prometheus_client.parser import text_string_to_metric_families

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench"))
from unix_http import unix_request  # noqa: E402


def log(msg):
    print(f"== {msg}", file=sys.stderr, flush=True)


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def definitions(vms, inmates, disk, rt_cpu):
    common = {"memory_mib": 32, "autostart": True, "stop_timeout_s": 5}
    defs = {
        "idle": {"name": "idle", "kernel": f"{inmates}/idle.elf", "cmdline": "idle.heartbeat=0", **common},
        "rt": {"name": "rt", "kernel": f"{inmates}/idle.elf", "cmdline": "idle.heartbeat=0",
               "realtime": {"cpus": [rt_cpu], "priority": 80, "latency_probe_us": 1000}, **common},
        # 4 KiB random reads, then 1 MiB sequential reads and writes, 10 minutes per phase.
        "disk": {"name": "disk", "kernel": f"{inmates}/virtio-blk.elf",
                 "cmdline": "blk.mode=bench bench.secs=600 blk.start=0", "disks": [{"path": disk}], **common},
    }
    for name, d in defs.items():
        with open(f"{vms}/{name}.json", "w") as f:
            json.dump(d, f)


class Chromium:
    """Headless Chromium with the DevTools protocol on a websocket (python3-websocket)."""

    def __init__(self, profile):
        binary = shutil.which("chromium") or fail("chromium is not installed (Debian package chromium)")
        self.process = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--remote-debugging-port=0",
             "--remote-allow-origins=*", f"--user-data-dir={profile}", "--window-size=1280,900", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = f"{profile}/DevToolsActivePort"
        for _ in range(200):
            if os.path.exists(port_file) and open(port_file).read().strip():
                break
            time.sleep(0.1)
        else:
            fail("chromium did not open its DevTools port")
        port = int(open(port_file).read().split()[0])
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], suppress_origin=True, timeout=30)
        self.next_id = 0

    def call(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    fail(f"DevTools {method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            fail(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self):
        self.ws.close()
        self.process.terminate()
        self.process.wait(10)


# The page's VMs as the DOM shows them.
READ_DOM = """
(() => ({
  collectedAt: document.getElementById("updated").getAttribute("data-collected-at"),
  summary: document.getElementById("summary").textContent,
  events: document.querySelectorAll("#event-list li").length,
  vms: [...document.querySelectorAll("section.vm")].map(s => ({
    name: s.dataset.vm, state: s.dataset.state,
    fields: Object.fromEntries([...s.querySelectorAll("[data-field]")].map(f => [f.dataset.field, f.textContent])),
    histogramBars: s.querySelectorAll("[data-field=histogram] rect").length,
    plotPoints: (s.querySelector("[data-field=latency-plot] polyline")?.getAttribute("points") || "").split(" ").filter(Boolean).length,
  })),
}))()
"""


def number(text, before):
    """The number just before `before` in `text` ("12.5 % of 1 vCPU" -> 12.5)."""
    head = text.split(before)[0].split()
    return float(head[-1])


def check_page(dom):
    vms = {v["name"]: v for v in dom["vms"]}
    if set(vms) != {"idle", "rt", "disk"}:
        fail(f"the page lists {sorted(vms)}, not idle, rt and disk")
    for name, vm in vms.items():
        if vm["state"] != "running" or vm["fields"].get("state") != "running":
            fail(f"{name} is shown as {vm['state']}/{vm['fields'].get('state')}, not running")
        cpu = vm["fields"].get("cpu", "")
        if "%" not in cpu:
            fail(f"{name}: no CPU rate on the page ({cpu!r})")
        number(cpu, "%")
        if "resident, guest" not in vm["fields"].get("memory", ""):
            fail(f"{name}: no memory numbers ({vm['fields'].get('memory')!r})")
    disk = vms["disk"]["fields"].get("disk", "")
    if "/s read" not in disk or number(disk, "op/s") <= 0:
        fail(f"disk: no disk rate, or no operations per second ({disk!r})")
    if number(vms["disk"]["fields"]["cpu"], "%") <= 0:
        fail(f"disk: its polling driver uses no CPU? ({vms['disk']['fields']['cpu']!r})")
    rt = vms["rt"]
    if "SCHED_FIFO 80" not in rt["fields"].get("partition", ""):
        fail(f"rt: partition not shown ({rt['fields'].get('partition')!r})")
    if "p99" not in rt["fields"].get("latency", "") or rt["histogramBars"] == 0:
        fail(f"rt: no latency numbers or histogram ({rt['fields'].get('latency')!r}, {rt['histogramBars']} bars)")
    return vms


def scrape(text, where):
    families = {f.name: f for f in text_string_to_metric_families(text)}
    states = {(s.labels["vm"], s.labels["state"]) for s in families["rtvisor_vm_state"].samples if s.value == 1}
    if not {("idle", "running"), ("rt", "running"), ("disk", "running")} <= states:
        fail(f"{where}: /metrics states {sorted(states)}")
    count = [s for s in families["rtvisor_realtime_wakeup_latency_seconds"].samples if s.name.endswith("_count")]
    if not count or count[0].value <= 0:
        fail(f"{where}: no wake-up latency histogram for rt")
    reads = [s for s in families["rtvisor_disk_read_ops"].samples if s.labels["vm"] == "disk"]
    if not reads or reads[0].value <= 0:
        fail(f"{where}: no disk reads counted for disk")
    log(f"{where}: /metrics parses ({len(families)} families)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", default=".build/debug")
    ap.add_argument("--inmates", required=True)
    ap.add_argument("--screenshot", default="docs/img/dashboard.png")
    ap.add_argument("--seconds", type=float, default=4, help="polls to let run before reading the page")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="rtv-dash-", dir="/tmp")
    vms, run = f"{work}/vms", f"{work}/run"
    os.makedirs(vms)
    disk = f"{work}/disk.img"
    with open(disk, "wb") as f:
        f.truncate(64 << 20)
    rt_cpu = max(os.sched_getaffinity(0))
    definitions(vms, os.path.abspath(args.inmates), disk, rt_cpu)
    port = free_port()
    with open(f"{work}/rtvisord.json", "w") as f:
        # Actions for group root (it exists everywhere; in production a group of operators).
        json.dump({"metrics": {"tcp": {"enabled": True, "address": "127.0.0.1", "port": port},
                               "dashboard_actions_group": "root", "dashboard_console": True}}, f)
    bin_dir = os.path.abspath(args.bin_dir)
    log(f"rtvisord with idle, rt (CPU {rt_cpu}) and disk; dashboard on http://127.0.0.1:{port}/")
    daemon = subprocess.Popen([f"{bin_dir}/rtvisord", "--definitions", vms, "--run-directory", run,
                               "--vmm", f"{bin_dir}/rtvisor-vmm", "--settings", f"{work}/rtvisord.json"],
                              stdout=subprocess.DEVNULL, stderr=open(f"{work}/rtvisord.stderr", "w"))
    browser = None
    try:
        base = f"http://127.0.0.1:{port}"
        # Running, the probe's first latency file written (the VMM writes it every second), and
        # the disk inmate past its device set-up, reading.
        deadline, stats = time.time() + 60, None
        while True:
            try:
                stats = json.load(urllib.request.urlopen(base + "/v1/stats", timeout=5))
                vm = {v["name"]: v for v in stats["vms"]}
                if sorted(v["state"] for v in stats["vms"]) == ["running"] * 3 and \
                        ((vm["rt"].get("realtime") or {}).get("latency") or {}).get("samples", 0) > 0 and \
                        sum(d["read_ops"] for d in vm["disk"]["disks"]) > 0:
                    break
            except OSError:
                pass
            if time.time() > deadline or daemon.poll() is not None:
                fail(f"the three VMs did not run (or rt had no latency samples) within 60 s: {stats}")
            time.sleep(0.5)

        scrape(urllib.request.urlopen(base + "/metrics", timeout=10).read().decode(), "TCP listener")
        status, ctype, body = unix_request(f"{run}/metrics.sock", "GET", "/metrics")
        if status != 200 or not ctype.startswith("text/plain"):
            fail(f"metrics.sock: GET /metrics answered {status} {ctype}")
        scrape(body, "metrics.sock")
        scrape(unix_request(f"{run}/api.sock", "GET", "/metrics")[2], "api.sock")
        status, _, body = unix_request(f"{run}/metrics.sock", "POST", "/v1/vms/idle/stop")
        if status != 403:
            fail(f"metrics.sock: a stop without the dashboard token answered {status}: {body}")
        status, _, body = unix_request(f"{run}/metrics.sock", "POST", "/v1/reload")
        if status != 404:
            fail(f"metrics.sock: POST /v1/reload answered {status}: {body}")
        log("metrics.sock refuses a stop without the token (403) and anything but start/stop (404)")
        status, _, body = unix_request(f"{run}/metrics.sock", "GET", "/v1/vms/idle/console?lines=5")
        if status != 200 or "IDLE_READY" not in body:
            fail(f"metrics.sock (dashboard_console on): GET /v1/vms/idle/console answered {status}: {body}")
        log("metrics.sock serves idle's last console lines (dashboard_console is on)")

        browser = Chromium(f"{work}/chromium")
        browser.call("Page.enable")
        browser.call("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False)
        browser.call("Page.navigate", url=base + "/")
        time.sleep(args.seconds)
        first = browser.evaluate(READ_DOM)
        check_page(first)
        time.sleep(2.5)
        second = browser.evaluate(READ_DOM)
        vms = check_page(second)
        if first["collectedAt"] == second["collectedAt"]:
            fail("the page did not update itself (same collected_at after 2.5 s)")
        if vms["rt"]["plotPoints"] < 3:
            fail(f"rt: the live latency plot has {vms['rt']['plotPoints']} points")
        if "IDLE_READY" not in vms["idle"]["fields"].get("console", ""):
            fail(f"idle's card shows no console lines with IDLE_READY: {vms['idle']['fields']}")
        if second["events"] == 0:
            fail("the event list is empty (vm-started events expected)")
        for name, vm in vms.items():
            log(f"page: {name} {vm['state']}: " + "; ".join(f"{k}={v}" for k, v in vm["fields"].items() if k not in ("state", "realtime", "histogram", "latency-plot")))
        log(f"page updated itself ({first['collectedAt']} -> {second['collectedAt']}), {second['events']} events")

        shot = browser.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        os.makedirs(os.path.dirname(os.path.abspath(args.screenshot)), exist_ok=True)
        with open(args.screenshot, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        log(f"screenshot: {args.screenshot}")

        # A phone: the cards stack, nothing wider than the screen.
        browser.call("Emulation.setDeviceMetricsOverride", width=390, height=844, deviceScaleFactor=2, mobile=True)
        time.sleep(1.5)
        width = browser.evaluate("document.documentElement.scrollWidth")
        if width > 390:
            fail(f"on a 390-pixel phone screen the page is {width} pixels wide")
        log(f"phone width 390: page {width} pixels wide, no horizontal scrolling")
        phone = os.path.splitext(args.screenshot)[0] + "-phone.png"
        with open(phone, "wb") as f:
            f.write(base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"]))
        log(f"screenshot: {phone}")
        # The Stop button, with the token the actions group reads from the run directory (kept
        # in the page's local storage, as after the prompt the first click shows).
        browser.call("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False)
        token = open(f"{run}/dashboard-token").read().strip()
        browser.evaluate(f"localStorage.setItem('rtvisor-dashboard-token', {json.dumps(token)})")
        if not browser.evaluate("!!document.querySelector('section.vm[data-vm=idle] button[data-action=stop]')"):
            fail("no Stop button on idle although actions are enabled")
        browser.evaluate("document.querySelector('section.vm[data-vm=idle] button[data-action=stop]').click()")
        deadline = time.time() + 20
        while browser.evaluate("document.querySelector('section.vm[data-vm=idle]').dataset.state") != "stopped":
            if time.time() > deadline:
                fail(f"idle not stopped 20 s after its Stop button: {browser.evaluate(READ_DOM)}")
            time.sleep(0.5)
        if not browser.evaluate("!!document.querySelector('section.vm[data-vm=idle] button[data-action=start]')"):
            fail("idle stopped, but no Start button")
        log("the Stop button (with the group's token) stopped idle; the page shows it stopped with a Start button")
        print("PASS: dashboard and /metrics against a running rtvisord")
    except SystemExit:
        # rtvisord's log (no journald here) outlives the work directory for a failure.
        shutil.copy(f"{run}/rtvisord.log", "/tmp/test-dashboard-rtvisord.log")
        print("rtvisord's log: /tmp/test-dashboard-rtvisord.log", file=sys.stderr)
        raise
    finally:
        if browser:
            browser.close()
        daemon.send_signal(signal.SIGINT)  # stops the guests, then rtvisord exits
        try:
            daemon.wait(60)
        except subprocess.TimeoutExpired:
            daemon.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
