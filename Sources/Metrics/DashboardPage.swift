/// The built-in dashboard (`GET /` on metrics.sock and the metrics TCP listener; docs/metrics.md):
/// one self-contained page (no CDN, no fonts, nothing from the internet), embedded in rtvisord.
/// It polls `GET /v1/stats` every second (rates are the differences between two polls) and
/// `GET /v1/events?since=SEQ` every two. It is read-only unless `GET /dashboard/config` says that
/// actions are enabled: then each VM gets a Start or Stop button, which asks once for the token
/// (rtvisord's `dashboard-token` file, readable by root and the actions group) and keeps it in
/// the browser's local storage.
/// The DOM carries `data-vm`, `data-state` and `data-field` attributes that
/// scripts/test-dashboard.py reads in headless Chromium.
public enum DashboardPage {
    public static let contentType = "text/html; charset=utf-8"

    public static let html = #"""
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>rtvisor</title>
<style>
:root { --bg:#0f1419; --card:#1a2129; --fg:#e6e6e6; --dim:#8a96a3; --ok:#3fb950; --warn:#d29922; --bad:#f85149; --acc:#58a6ff; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif; background:var(--bg); color:var(--fg); }
header { display:flex; flex-wrap:wrap; gap:.5em 1.5em; align-items:baseline; padding:.8em 1em; border-bottom:1px solid #2d3640; }
header h1 { font-size:1.2em; margin:0; }
header span { color:var(--dim); }
main { display:grid; grid-template-columns:repeat(auto-fill,minmax(320px,1fr)); gap:1em; padding:1em; align-items:start; }
.vm { background:var(--card); border-radius:8px; padding:.8em 1em; border-left:4px solid var(--dim); }
.vm[data-state=running] { border-left-color:var(--ok); }
.vm[data-state=paused], .vm[data-state=stopping], .vm[data-state=restarting], .vm[data-state=incoming] { border-left-color:var(--warn); }
.vm[data-state=failed] { border-left-color:var(--bad); }
.vm h2 { font-size:1.05em; margin:0 0 .4em; display:flex; justify-content:space-between; gap:1em; }
.state { font-weight:normal; color:var(--dim); }
dl { display:grid; grid-template-columns:auto 1fr; gap:.15em .8em; margin:0; }
dt { color:var(--dim); }
dd { margin:0; font-variant-numeric:tabular-nums; }
.rt { margin-top:.6em; padding-top:.5em; border-top:1px solid #2d3640; }
pre.console { margin:.6em 0 0; padding:.4em .5em; background:#0b0f13; border-radius:4px; font:11px/1.35 ui-monospace,monospace; color:var(--dim); white-space:pre-wrap; overflow-wrap:anywhere; max-height:7.5em; overflow:auto; }
svg { width:100%; height:70px; display:block; margin-top:.3em; }
svg .bar { fill:var(--acc); } svg .line { fill:none; stroke:var(--warn); stroke-width:1.5; }
svg text { fill:var(--dim); font-size:9px; }
#events { margin:0 1em 1em; background:var(--card); border-radius:8px; padding:.6em 1em; }
#events h2 { font-size:1.05em; margin:.2em 0 .4em; }
#events ol { list-style:none; margin:0; padding:0; max-height:16em; overflow:auto; font-family:ui-monospace,monospace; font-size:12px; }
#events li { padding:.1em 0; border-bottom:1px solid #222a33; overflow-wrap:anywhere; }
#events time { color:var(--dim); margin-right:.6em; }
.error { color:var(--bad); }
.vm button { margin-top:.5em; padding:.35em 1.1em; border-radius:6px; border:1px solid var(--acc); background:transparent; color:var(--acc); font:inherit; }
.vm button.stop { border-color:var(--bad); color:var(--bad); }
@media (max-width:480px) { main { grid-template-columns:1fr; padding:.5em; } header { padding:.6em .5em; } #events { margin:0 .5em .5em; } }
</style>
</head>
<body>
<header><h1>rtvisor</h1><span id="summary">loading…</span><span id="updated"></span><span id="status"></span></header>
<main id="vms"></main>
<section id="events"><h2>Events</h2><ol id="event-list"></ol></section>
<script>
"use strict";
const previous = new Map();    // VM name -> {at, totals}: rates are differences between polls
const latencyHistory = new Map(); // VM name -> [p99 seconds], the live plot
let lastEventSeq = 0;
const consoleLines = new Map(); // VM name -> its console's last lines (when the listener serves them)
let consoleOn = false;         // GET /dashboard/config: rtvisord.json metrics.dashboard_console
let actions = false;           // GET /dashboard/config: Start and Stop buttons for the actions group
const tokenKey = "rtvisor-dashboard-token";

const el = (tag, attrs = {}, text) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
};
const bytes = n => { const u = ["B","KiB","MiB","GiB","TiB"]; let i = 0; while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; } return n.toFixed(i ? 1 : 0) + " " + u[i]; };
const micro = s => (s * 1e6).toFixed(1) + " µs";
const sum = (xs, f) => xs.reduce((a, x) => a + (f(x) || 0), 0);

function totals(vm) {
  return {
    cpu: sum(vm.vcpus, v => v.cpu_s), steal: sum(vm.vcpus, v => v.steal_s),
    diskRead: sum(vm.disks, d => d.read_bytes), diskWrite: sum(vm.disks, d => d.write_bytes),
    diskOps: sum(vm.disks, d => d.read_ops + d.write_ops + d.flush_ops),
    rx: sum(vm.nics, n => n.rx_bytes), tx: sum(vm.nics, n => n.tx_bytes),
    started: vm.vmm_started_at,
  };
}

// Per-second rates since the last poll; null until there are two polls of the same VMM.
function rates(vm, at) {
  const now = totals(vm), before = previous.get(vm.name);
  previous.set(vm.name, {at, totals: now});
  if (!before || before.totals.started !== now.started || at <= before.at) return null;
  const dt = at - before.at, r = {};
  for (const k of ["cpu","steal","diskRead","diskWrite","diskOps","rx","tx"]) r[k] = Math.max(0, now[k] - before.totals[k]) / dt;
  return r;
}

function field(dl, name, label, value) {
  dl.append(el("dt", {}, label), el("dd", {"data-field": name}, value));
}

function histogram(latency) {
  // The HDR buckets, summed per power of two of nanoseconds, as bars (log scale counts).
  const bins = new Map();
  for (const [ns, count] of latency.buckets) { const b = Math.max(0, Math.ceil(Math.log2(Math.max(ns, 1)))); bins.set(b, (bins.get(b) || 0) + count); }
  const keys = [...bins.keys()].sort((a, b) => a - b);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 300 70"); svg.setAttribute("preserveAspectRatio", "none"); svg.setAttribute("data-field", "histogram");
  if (!keys.length) return svg;
  const lo = keys[0], hi = keys[keys.length - 1], n = hi - lo + 1, w = 300 / n, top = Math.log10(Math.max(...bins.values()) + 1);
  for (let b = lo; b <= hi; b++) {
    const h = Math.log10((bins.get(b) || 0) + 1) / top * 58;
    const r = document.createElementNS(svg.namespaceURI, "rect");
    Object.entries({class: "bar", x: (b - lo) * w + 1, y: 60 - h, width: Math.max(1, w - 2), height: h}).forEach(([k, v]) => r.setAttribute(k, v));
    svg.append(r);
  }
  const t = document.createElementNS(svg.namespaceURI, "text");
  t.setAttribute("x", 2); t.setAttribute("y", 69); t.textContent = micro(2 ** lo / 1e9) + " … " + micro(2 ** hi / 1e9) + " (log counts)";
  svg.append(t);
  return svg;
}

function plot(values) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 300 70"); svg.setAttribute("preserveAspectRatio", "none"); svg.setAttribute("data-field", "latency-plot");
  if (values.length < 2) return svg;
  // 0 at the bottom, the largest p99 at 4/5 of the height.
  const max = Math.max(...values) || 1, step = 300 / (values.length - 1);
  const line = document.createElementNS(svg.namespaceURI, "polyline");
  line.setAttribute("class", "line");
  line.setAttribute("points", values.map((v, i) => (i * step).toFixed(1) + "," + (58 - v / max * 46).toFixed(1)).join(" "));
  const t = document.createElementNS(svg.namespaceURI, "text");
  t.setAttribute("x", 2); t.setAttribute("y", 69); t.textContent = "p99 over the last " + values.length + " polls, highest " + micro(max);
  svg.append(line, t);
  return svg;
}

function card(vm, r) {
  const s = el("section", {class: "vm", "data-vm": vm.name, "data-state": vm.state});
  const h = el("h2", {}, vm.name); h.append(el("span", {class: "state", "data-field": "state"}, vm.state));
  const dl = el("dl");
  const cpus = vm.vcpus.length;
  // vCPU threads' host CPU time per second: 100 % is one host CPU busy.
  field(dl, "cpu", "CPU", r ? (r.cpu * 100).toFixed(1) + " % (" + cpus + " vCPU" + (cpus === 1 ? "" : "s") + ")" : (cpus ? "…" : "–"));
  // Runnable but waiting for a host CPU (schedstat): a VM squeezed by its neighbours.
  if (vm.vcpus.some(v => v.steal_s != null)) field(dl, "steal", "Waiting", r ? (r.steal * 100).toFixed(1) + " % of the time" : "…");
  if (vm.memory) field(dl, "memory", "Memory", (vm.memory.resident_bytes != null ? bytes(vm.memory.resident_bytes) + " resident, " : "") + "guest " + bytes(vm.memory.guest_bytes));
  else field(dl, "memory", "Memory", "–");
  if (vm.disks.length) field(dl, "disk", "Disk", r ? bytes(r.diskRead) + "/s read, " + bytes(r.diskWrite) + "/s written, " + r.diskOps.toFixed(0) + " op/s" : "…");
  if (vm.nics.length) field(dl, "net", "Net", r ? bytes(r.rx) + "/s in, " + bytes(r.tx) + "/s out" : "…");
  field(dl, "restarts", "Restarts", String(vm.restarts));
  if (vm.pid != null) field(dl, "pid", "PID", String(vm.pid));
  s.append(h, dl);
  if (actions) {
    const action = ["running", "paused"].includes(vm.state) ? "stop" : ["stopped", "failed"].includes(vm.state) ? "start" : null;
    if (action) {
      const b = el("button", {class: action, "data-action": action}, action === "stop" ? "Stop" : "Start");
      b.addEventListener("click", () => act(vm.name, action));
      s.append(b);
    }
  }
  const lines = vm.state === "running" ? consoleLines.get(vm.name) : null;
  if (lines && lines.length) s.append(el("pre", {class: "console", "data-field": "console"}, lines.join("\n")));
  if (vm.realtime) {
    const rt = el("div", {class: "rt", "data-field": "realtime"});
    const rdl = el("dl");
    field(rdl, "partition", "Real-time", "host CPUs " + vm.realtime.cpus.join(",") + ", SCHED_FIFO " + vm.realtime.priority);
    const l = vm.realtime.latency;
    if (l) {
      const hist = latencyHistory.get(vm.name) || [];
      hist.push(l.p99_ns / 1e9); if (hist.length > 120) hist.shift(); latencyHistory.set(vm.name, hist);
      field(rdl, "latency", "Wake-up", "p50 " + micro(l.p50_ns / 1e9) + ", p99 " + micro(l.p99_ns / 1e9) + ", max " + micro(l.max_ns / 1e9) + " (" + l.samples + " samples)");
      rt.append(rdl, histogram(l), plot(hist));
    } else {
      rt.append(rdl);
    }
    s.append(rt);
  }
  return s;
}

async function pollStats() {
  try {
    const res = await fetch("/v1/stats", {cache: "no-store"});
    if (!res.ok) throw new Error("GET /v1/stats: " + res.status);
    const stats = await res.json();
    const main = document.getElementById("vms");
    main.replaceChildren(...stats.vms.map(vm => card(vm, rates(vm, stats.collected_at))));
    for (const p of main.querySelectorAll("pre.console")) p.scrollTop = p.scrollHeight; // the newest line in view
    const running = stats.vms.filter(v => v.state === "running").length;
    document.getElementById("summary").textContent = stats.vms.length + " VMs, " + running + " running";
    const updated = document.getElementById("updated");
    updated.textContent = "updated " + new Date(stats.collected_at * 1000).toLocaleTimeString();
    updated.setAttribute("data-collected-at", String(stats.collected_at));
    document.getElementById("status").textContent = "";
  } catch (e) {
    const st = document.getElementById("status"); st.className = "error"; st.textContent = String(e.message || e);
  }
}

async function act(name, action) {
  const st = document.getElementById("status");
  const token = localStorage.getItem(tokenKey) || (prompt("Dashboard token (cat /run/rtvisor/dashboard-token, as root or a member of the actions group)") || "").trim();
  if (!token) return;
  const res = await fetch("/v1/vms/" + encodeURIComponent(name) + "/" + action, {method: "POST", headers: {Authorization: "Bearer " + token}});
  const body = await res.json().catch(() => ({}));
  if (res.status === 401 || res.status === 403) localStorage.removeItem(tokenKey); else localStorage.setItem(tokenKey, token);
  st.className = res.ok ? "" : "error";
  st.textContent = res.ok ? name + ": " + (body.message || action) : name + ": " + (body.error || res.status);
}

async function pollEvents() {
  try {
    const res = await fetch("/v1/events?since=" + lastEventSeq, {cache: "no-store"});
    if (!res.ok) return;
    const list = document.getElementById("event-list");
    for (const line of (await res.text()).split("\n")) {
      if (!line) continue;
      const e = JSON.parse(line);
      lastEventSeq = Math.max(lastEventSeq, e.seq);
      const li = el("li", {"data-seq": String(e.seq), "data-kind": e.kind});
      li.append(el("time", {}, new Date(e.time * 1000).toLocaleTimeString()), document.createTextNode(e.message));
      list.prepend(li);
    }
    while (list.children.length > 200) list.lastChild.remove();
  } catch (e) { /* the next poll tries again */ }
}

// The last console lines of each running VM, every three seconds (each is a question to its VMM).
async function pollConsoles() {
  if (!consoleOn) return;
  for (const card of document.querySelectorAll(".vm[data-state=running]")) {
    const name = card.getAttribute("data-vm");
    try {
      const res = await fetch("/v1/vms/" + encodeURIComponent(name) + "/console?lines=6", {cache: "no-store"});
      if (res.ok) consoleLines.set(name, (await res.json()).lines);
    } catch (e) { /* the next poll tries again */ }
  }
}

fetch("/dashboard/config").then(r => r.json()).then(c => { actions = c.actions === true; consoleOn = c.console === true; pollConsoles(); }).catch(() => {});
setInterval(pollConsoles, 3000);
pollStats(); pollEvents();
setInterval(pollStats, 1000);
setInterval(pollEvents, 2000);
</script>
</body>
</html>
"""#
}
