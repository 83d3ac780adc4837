#!/usr/bin/env python3
"""A client of rtvisor-vmm's control socket (`--control-socket PATH`, docs/snapshot.md) that takes
a snapshot, as rtvisord does: it creates the snapshot directory, copies the definition into it,
creates `state` and `memory` (O_EXCL, mode 0600) and passes both descriptors with the request.

Wire format: each frame is a u32 LE length (of what follows), a u64 LE request id, then the
JSON of a Swift Codable enum (`{"hello": {...}}`, `{"snapshot": {"_0": {...}}}`).

As a command: snapshot_client.py SOCKET DIR DEFINITION [resume|stop|stayPaused]
prints the reply (JSON) and the wall time of the snapshot request."""
import array, json, os, socket, struct, sys, time

STATE, MEMORY, DEFINITION = "state", "memory", "definition.json"


class ControlClient:
    def __init__(self, path, timeout=120):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.next_id = 1

    def close(self):
        self.sock.close()

    def _recv_exact(self, n):
        b = b""
        while len(b) < n:
            chunk = self.sock.recv(n - len(b))
            if not chunk:
                raise ConnectionError(f"control socket closed after {len(b)} of {n} bytes")
            b += chunk
        return b

    def call(self, request, fds=()):
        """Sends one request (with `fds` by SCM_RIGHTS) and returns its reply, parsed."""
        payload = json.dumps(request).encode()
        rid = self.next_id
        self.next_id += 1
        frame = struct.pack("<IQ", 8 + len(payload), rid) + payload
        if fds:
            self.sock.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        else:
            self.sock.sendall(frame)
        n = struct.unpack("<I", self._recv_exact(4))[0]
        body = self._recv_exact(n)
        reply_id = struct.unpack("<Q", body[:8])[0]
        if reply_id != rid:
            raise ConnectionError(f"reply to request {reply_id}, expected {rid}")
        return json.loads(body[8:])

    def hello(self):
        return self.call({"hello": {"minVersion": 1, "maxVersion": 2}})


def connect(path, timeout=30, retry_until=None):
    """Connects, retrying while the socket does not exist yet (until `retry_until`, monotonic)."""
    while True:
        try:
            return ControlClient(path, timeout)
        except (FileNotFoundError, ConnectionRefusedError):
            if retry_until is None or time.monotonic() > retry_until:
                raise
            time.sleep(0.005)


def snapshot(path, directory, definition, then="stop"):
    """Takes a snapshot of the VMM serving `path` into `directory` (created; must not hold the
    files yet). Returns (reply, wall seconds of the snapshot request alone)."""
    c = connect(path)
    try:
        c.hello()
        os.makedirs(directory, mode=0o700, exist_ok=True)
        with open(definition, "rb") as f:
            definition_bytes = f.read()
        with open(os.path.join(directory, DEFINITION), "wb") as f:
            f.write(definition_bytes)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        st = os.open(os.path.join(directory, STATE), flags, 0o600)
        mem = os.open(os.path.join(directory, MEMORY), flags, 0o600)
        try:
            t0 = time.monotonic()
            reply = c.call({"snapshot": {"_0": {"then": then, "definitionJSON": list(definition_bytes)}}}, [st, mem])
            return reply, time.monotonic() - t0
        finally:
            os.close(st)
            os.close(mem)
    finally:
        c.close()


def saved(reply):
    """The `snapshotSaved` summary of a reply, or raises with the refusal."""
    if "snapshotSaved" in reply:
        return reply["snapshotSaved"]["_0"]
    raise RuntimeError(f"snapshot refused or failed: {reply}")


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    reply, secs = snapshot(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) == 5 else "stop")
    print(json.dumps(reply))
    print(f"wall {secs * 1000:.2f} ms", file=sys.stderr)
