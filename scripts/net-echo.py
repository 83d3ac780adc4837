#!/usr/bin/env python3
"""Host side of the virtio-net inmate: echoes its test frames on a tap.

    scripts/net-echo.py IFACE [--count N] [--flood] [--timeout SECS] [--ready-file PATH]

Runs on the host end of the guest's tap (usually inside a network namespace
of its own), with an AF_PACKET raw socket bound to IFACE.  Python 3 standard
library only; needs CAP_NET_RAW.

Guest -> host frames (ethertype 0x88B5), all integers little-endian:
    dst(6) src(6) type(2) | magic(4) seq(u32) plen(u32) pattern[plen] fnv(u32)
    magic "RTVN": echo test frame; pattern byte i = (seq*31 + i*7) & 0xff;
        fnv = FNV-1a 32 over magic..pattern (everything after the ethertype
        up to the checksum).  Answered with dst = the frame's src, src = the
        tap's MAC, ethertype 0x88B6, same magic/seq/plen, every pattern byte
        XOR 0xff and the FNV recomputed over the new bytes (same length).
    magic "RTVT": bench transmit frame: only counted (not answered).
    magic "RTVF": flood request, u32 duration_ms, u32 frame_len (--flood only):
        we send frames type 0x88B6, magic "RTVF", u32 seq, padding, of
        frame_len bytes to the requester for duration_ms, then five
        "RTVD" frames carrying u32 frames-sent, 10 ms apart.

Echo frames with a bad checksum/pattern/length are counted as bad and not
answered.  On exit (--count reached, --timeout idle seconds, SIGTERM/SIGINT)
prints "net-echo: good=G bad=B echoed=E ..." and exits 1 if any was bad.
"""
import argparse
import os
import signal
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
ETH_TEST = 0x88B5
ETH_REPLY = 0x88B6
PACKET_OUTGOING = 4


def fnv1a(data, h=0x811C9DC5):
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


class Stats:
    good = 0
    bad = 0
    echoed = 0
    txbench = 0
    txbench_bytes = 0
    floods = 0
    flood_sent = 0
    other = 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("iface")
    ap.add_argument("--count", type=int, default=0, help="exit after N echoes (0: run until signalled)")
    ap.add_argument("--flood", action="store_true", help="honour RTVF flood requests (bench)")
    ap.add_argument("--timeout", type=float, default=0, help="exit after SECS without any guest frame")
    ap.add_argument("--ready-file", help="create this file once the socket is bound")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()

    st = Stats()
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    s.bind((args.iface, 0))
    mymac = s.getsockname()[4][:6]
    if len(mymac) != 6:
        mymac = bytes.fromhex("020000000001")

    def summary_and_exit(*_):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print(f"net-echo: good={st.good} bad={st.bad} echoed={st.echoed} "
              f"txbench={st.txbench} ({st.txbench_bytes} bytes) floods={st.floods} "
              f"flood_sent={st.flood_sent} other={st.other}", flush=True)
        os._exit(1 if st.bad else 0)

    signal.signal(signal.SIGTERM, summary_and_exit)
    signal.signal(signal.SIGINT, summary_and_exit)
    if args.ready_file:
        open(args.ready_file, "w").close()
    if not args.quiet:
        print(f"net-echo: listening on {args.iface} ({mymac.hex(':')}), flood={'on' if args.flood else 'off'}",
              flush=True)

    s.settimeout(0.5)
    last = time.monotonic()
    while True:
        try:
            data, addr = s.recvfrom(65536)
        except socket.timeout:
            if args.timeout and time.monotonic() - last > args.timeout:
                print(f"net-echo: no guest frame for {args.timeout:g} s", flush=True)
                summary_and_exit()
            continue
        if addr[2] == PACKET_OUTGOING or len(data) < 18:
            continue
        etype = struct.unpack_from(">H", data, 12)[0]
        if etype != ETH_TEST:
            st.other += 1
            continue
        last = time.monotonic()
        src = data[6:12]
        magic = data[14:18]
        if magic == b"RTVT":
            st.txbench += 1
            st.txbench_bytes += len(data)
            continue
        if magic == b"RTVF":
            if not args.flood:
                print("net-echo: flood request ignored (no --flood)", flush=True)
                continue
            dur_ms, flen = struct.unpack_from("<II", data, 18)
            flen = max(60, min(flen, 1514))
            st.floods += 1
            head = src + mymac + struct.pack(">H", ETH_REPLY) + b"RTVF"
            pad = bytes((i * 13) & 0xFF for i in range(flen - len(head) - 4))
            end = time.monotonic() + dur_ms / 1000.0
            sent = 0
            while time.monotonic() < end:
                for _ in range(64):
                    try:
                        s.send(head + struct.pack("<I", sent) + pad)
                        sent += 1
                    except (BlockingIOError, OSError):
                        time.sleep(0.0005)   # tap queue full: back off
            st.flood_sent += sent
            done = src + mymac + struct.pack(">H", ETH_REPLY) + b"RTVD" + struct.pack("<I", sent)
            done += bytes(60 - len(done))
            for _ in range(5):
                s.send(done)
                time.sleep(0.01)
            print(f"net-echo: flood of {dur_ms} ms: sent {sent} frames of {flen} bytes", flush=True)
            continue
        if magic != b"RTVN":
            st.other += 1
            continue
        # Echo test frame: check everything before answering.
        why = None
        if len(data) < 30:
            why = f"short frame ({len(data)} bytes)"
        else:
            seq, plen = struct.unpack_from("<II", data, 18)
            if 26 + plen + 4 != len(data):
                why = f"seq {seq}: plen {plen} does not match frame length {len(data)}"
            else:
                pattern = data[26:26 + plen]
                want = bytes((seq * 31 + i * 7) & 0xFF for i in range(plen))
                fnv = struct.unpack_from("<I", data, 26 + plen)[0]
                if pattern != want:
                    why = f"seq {seq}: pattern differs"
                elif fnv != fnv1a(data[14:26 + plen]):
                    why = f"seq {seq}: checksum {fnv:#x}, want {fnv1a(data[14:26 + plen]):#x}"
        if why:
            st.bad += 1
            print(f"net-echo: BAD frame from {src.hex(':')}: {why}", flush=True)
            continue
        st.good += 1
        body = data[14:26] + bytes(b ^ 0xFF for b in pattern)
        reply = src + mymac + struct.pack(">H", ETH_REPLY) + body + struct.pack("<I", fnv1a(body))
        s.send(reply)
        st.echoed += 1
        if args.count and st.echoed >= args.count:
            summary_and_exit()


if __name__ == "__main__":
    main()
