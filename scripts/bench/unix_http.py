"""HTTP over a unix socket (rtvisord's api.sock and metrics.sock), for the scripts that talk to
a running rtvisord: scripts/test-dashboard.py and scripts/bench/bench_metrics.py."""
import http.client
import socket


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=30):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def unix_request(path, method, target, timeout=10):
    """One request; returns (status, Content-Type, body text)."""
    c = UnixHTTPConnection(path, timeout=timeout)
    try:
        c.request(method, target)
        r = c.getresponse()
        return r.status, r.getheader("Content-Type"), r.read().decode()
    finally:
        c.close()
