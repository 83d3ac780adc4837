#!/usr/bin/env python3
"""Writes the hand-made seeds of the virtqueue, net, definition and api fuzz targets
(Sources/rtvisor-fuzz; the blk seeds are the original virtio-seeds). Deterministic; rerun after
changing an input layout:  python3 Tests/Fuzz/make-seeds.py"""
import json, os, struct

here = os.path.dirname(os.path.abspath(__file__))
WRITE, NEXT, INDIRECT = 2, 1, 4


def write(target, name, data):
    d = os.path.join(here, target + "-seeds")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


class Ram:
    def __init__(self):
        self.b = bytearray()

    def put(self, addr, data):
        if len(self.b) < addr + len(data):
            self.b.extend(bytes(addr + len(data) - len(self.b)))
        self.b[addr:addr + len(data)] = data

    def desc(self, table, i, addr, length, flags=0, nxt=0):
        self.put(table + 16 * i, struct.pack("<QIHH", addr, length, flags, nxt))

    def avail(self, ring, heads, used_event=0, size=16):
        self.put(ring, struct.pack("<HH", 0, len(heads)))
        for i, h in enumerate(heads):
            self.put(ring + 4 + 2 * i, struct.pack("<H", h))
        self.put(ring + 4 + 2 * size, struct.pack("<H", used_event))

    def used(self, ring, size=16):
        self.put(ring + 4 + 8 * size + 2, bytes(2))  # make the used ring part of the input


# ---- virtqueue: [size exp, table>>8, avail>>8, used>>8, features, 0, 0, 0] + RAM ----
def vq(name, features, build, exp=4):
    r = Ram()
    build(r)
    r.used(0x300)
    write("virtqueue", name, bytes([exp, 0x01, 0x02, 0x03, features, 0, 0, 0]) + bytes(r.b))

vq("one-readable", 0, lambda r: (r.desc(0x100, 0, 0x800, 64), r.avail(0x200, [0]), r.put(0x800, bytes(range(64)))))
vq("one-writable", 0, lambda r: (r.desc(0x100, 0, 0x800, 64, WRITE), r.avail(0x200, [0])))
vq("chain-read-write", 0, lambda r: (r.desc(0x100, 0, 0x800, 16, NEXT, 1), r.desc(0x100, 1, 0x810, 512, NEXT | WRITE, 2),
                                     r.desc(0x100, 2, 0xa10, 1, WRITE), r.avail(0x200, [0])))
vq("indirect", 1, lambda r: (r.desc(0x100, 0, 0x700, 48, INDIRECT), r.desc(0x700, 0, 0x800, 16, NEXT, 1),
                             r.desc(0x700, 1, 0x810, 256, NEXT | WRITE, 2), r.desc(0x700, 2, 0x910, 1, WRITE), r.avail(0x200, [0])))
vq("event-idx-three", 2, lambda r: ([r.desc(0x100, i, 0x800 + 0x40 * i, 0x40, WRITE if i % 2 else 0) for i in range(3)],
                                    r.avail(0x200, [0, 1, 2], used_event=1)))
vq("wrapping-index", 0, lambda r: (r.desc(0x100, 0, 0x800, 8), r.desc(0x100, 1, 0x808, 8),
                                   r.put(0x200, struct.pack("<HH", 0, 2)), r.put(0x204, struct.pack("<HH", 0, 1))))
vq("size-256", 3, lambda r: ([r.desc(0x100, i, 0x1000 + 8 * i, 8, WRITE) for i in range(8)], r.avail(0x200, list(range(8)), size=256)), exp=8)


# ---- net: rx queue [exp, 0x01, 0x02, 0x03], tx queue [exp, 0x04, 0x05, 0x06], features, frames, length LE, 0 x4 + RAM ----
def frame(n=60):
    eth = bytes([0xff] * 6 + [0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x08, 0x06]) + bytes(range(n - 14))
    return bytes(12) + eth


def net(name, features, frames, length, build):
    r = Ram()
    build(r)
    r.used(0x300)
    r.used(0x600)
    hdr = bytes([4, 0x01, 0x02, 0x03, 4, 0x04, 0x05, 0x06, features, frames, length & 0xff, length >> 8, 0, 0, 0, 0])
    write("net", name, hdr + bytes(r.b))

net("tx-one", 0, 0, 0, lambda r: (r.desc(0x400, 0, 0x800, 72), r.put(0x800, frame()), r.avail(0x500, [0]), r.avail(0x200, [])))
net("rx-one", 0, 1, 72, lambda r: (r.put(0x0, frame()[:72].ljust(72, b"\0")[:0]), r.desc(0x100, 0, 0x900, 1526, WRITE),
                                   r.avail(0x200, [0]), r.avail(0x500, [])))
net("tx-rx", 0, 2, 100, lambda r: (r.desc(0x400, 0, 0x800, 72), r.put(0x800, frame()), r.avail(0x500, [0]),
                                   r.desc(0x100, 0, 0x900, 1526, WRITE), r.desc(0x100, 1, 0xf00, 1526, WRITE), r.avail(0x200, [0, 1])))
net("tx-split-header", 0, 0, 0, lambda r: (r.desc(0x400, 0, 0x800, 12, NEXT, 1), r.desc(0x400, 1, 0x80c, 60, NEXT, 2),
                                           r.desc(0x400, 2, 0x848, 40), r.put(0x800, frame(100)), r.avail(0x500, [0]), r.avail(0x200, [])))
net("tx-too-short", 0, 0, 0, lambda r: (r.desc(0x400, 0, 0x800, 8), r.desc(0x400, 1, 0x810, 72), r.put(0x810, frame()),
                                        r.avail(0x500, [0, 1]), r.avail(0x200, [])))
net("rx-indirect-event-idx", 3, 1, 300, lambda r: (r.desc(0x100, 0, 0x700, 32, INDIRECT), r.desc(0x700, 0, 0x900, 12, NEXT | WRITE, 1),
                                                   r.desc(0x700, 1, 0x90c, 1514, WRITE), r.avail(0x200, [0], used_event=0), r.avail(0x500, [])))
net("rx-small-buffer", 0, 1, 60, lambda r: (r.desc(0x100, 0, 0x900, 40, WRITE), r.desc(0x100, 1, 0xa00, 1526, WRITE),
                                            r.avail(0x200, [0, 1]), r.avail(0x500, [])))


# ---- definition: JSON definition files; paths relative to a directory with vmlinux, initrd.cpio, disk.img ----
defs = {
    "minimal": {"name": "vm", "memory_mib": 64, "kernel": "vmlinux"},
    "hello": {"name": "hello", "vcpus": 1, "memory_mib": 64, "kernel": "vmlinux", "initrd": "initrd.cpio",
              "cmdline": "console=ttyS0 panic=-1", "cpu": {"template": "auto"}},
    "devices": {"name": "dev-vm", "vcpus": 2, "memory_mib": 256, "kernel": "vmlinux",
                "disks": [{"path": "disk.img"}, {"path": "disk.img", "read_only": True, "serial": "SER-2", "direct_io": True}],
                "nets": [{"tap": "tap-vm-a"}, {"tap": "tap-vm-a2", "mac": "52:54:00:AB:cd:01"}]},
    "realtime": {"name": "rt0", "vcpus": 2, "memory_mib": 64, "kernel": "vmlinux",
                 "realtime": {"cpus": [3, 1], "priority": 90, "lock_memory": False, "hugepages": True, "exits": ["hlt", "pause"],
                              "move_irqs": False, "latency_probe_us": 1000}},
    "cpu": {"name": "cpu", "memory_mib": 32, "kernel": "vmlinux", "cpu": {"template": "auto", "disable_features": ["avx512f", "x2apic"]}},
    "daemon": {"name": "example", "vcpus": 1, "memory_mib": 32, "kernel": "/usr/local/share/rtvisor/inmates/idle.elf",
               "cmdline": "idle.heartbeat=60", "autostart": True,
               "restart": {"policy": "on-failure", "limit": 5, "window_s": 300, "backoff_ms": 1000, "backoff_max_ms": 30000},
               "stop_timeout_s": 10},
    "wrong-types": {"name": 5, "vcpus": "two", "memory_mib": -1, "kernel": ["x"], "disks": {}, "nets": [1], "realtime": [], "extra": None},
}
for name, d in defs.items():
    write("definition", name + ".json", json.dumps(d, indent=1).encode())
write("definition", "not-json", b"{\"name\": \"a\",, }")

# ---- api: byte 0 = method (0 GET, 1 POST, 2 PUT, 3 DELETE, 4 HEAD, 5 raw "METHOD "), target, "\n", body ----
G, P = b"\x00", b"\x01"
valid = json.dumps({"definition": json.dumps(defs["hello"]), "file": "hello.json"}).encode()
api = {
    "daemon": G + b"/v1/daemon", "list": G + b"/v1/vms", "inspect": G + b"/v1/vms/web", "inspect-missing": G + b"/v1/vms/nope",
    "start": P + b"/v1/vms/db/start", "stop-query": P + b"/v1/vms/web/stop?force=true&x=1",
    "stop-body": P + b"/v1/vms/web/stop\n{\"force\": true}", "reboot": P + b"/v1/vms/web/reboot", "reset": P + b"/v1/vms/web/reset",
    "events": G + b"/v1/events?since=0&vm=web", "events-follow": G + b"/v1/events?follow=1", "pause": P + b"/v1/vms/web/pause",
    "resume": P + b"/v1/vms/web/resume", "reload": P + b"/v1/reload", "rt-check": G + b"/v1/rt-check",
    "rt-check-vm": G + b"/v1/vms/web/rt-check", "latency": G + b"/v1/vms/web/latency",
    "stats": G + b"/v1/stats", "stats-vm": G + b"/v1/vms/web/stats",
    "validate": P + b"/v1/validate\n" + valid,
    "validate-bad": P + b"/v1/validate\n" + json.dumps({"definition": "{\"name\": 1}", "base_directory": "/tmp"}).encode(),
    "wrong-method": b"\x05PATCH /v1/vms\n", "unknown-action": P + b"/v1/vms/web/explode",
    "snapshot": P + b"/v1/vms/web/snapshot\n{\"to\": \"/srv/snap/one\", \"stop\": true}", "snapshots": G + b"/v1/snapshots?vm=web",
    "restore": P + b"/v1/snapshots/restore\n{\"directory\": \"/srv/snap/one\", \"name\": \"copy\"}",
    "clone": P + b"/v1/vms/web/clone\n{\"count\": 3, \"prefix\": \"w\", \"from\": \"/srv/snap/one\"}",
}
for name, data in api.items():
    write("api", name, data)


# stream: migration frames (kind, u32 length, payload) and a state-file-like prefix.
def frame(kind, payload=b""):
    return struct.pack("<BI", kind, len(payload)) + payload

hello = frame(1, json.dumps({"version": 1, "rtvisorVersion": "0.5.0"}).encode())
write("stream", "hello-pages-zero", hello + frame(5, struct.pack("<Q", 4096) + bytes([0xAB]) * 4096)
      + frame(6, struct.pack("<QQ", 8192, 4096)) + frame(10))
write("stream", "page-past-ram", frame(5, struct.pack("<Q", (2 << 20) - 4096) + bytes(8192)))
write("stream", "zero-huge-length", frame(6, struct.pack("<QQ", 4096, (1 << 64) - 4096)))
write("stream", "state-file-prefix", b"RTVSNAP\0" + struct.pack("<IIQ", 1, 2, 0) + b"{}" + bytes(4))
