"""A minimal ivshmem server (QEMU's docs/specs/ivshmem-spec: "The ivshmem Client-Server
Protocol"), for QEMU's ivshmem-doorbell as a peer in scripts/bench-channel.sh and the QEMU
cross-check of the ivshmem inmate (scripts/test-ivshmem-qemu.sh). Debian ships no ivshmem-server.

Each client gets the next id (0, 1, …), the shared memory, the eventfds of the clients already
there and its own; the others hear of it. A client that disconnects is announced (its id
without a descriptor) and its eventfds closed."""
import os, socket, struct, threading, time


class IvshmemServer:
    def __init__(self, path, size, vectors):
        self.path, self.vectors = path, vectors
        self.memory = os.memfd_create("ivshmem-server")
        os.ftruncate(self.memory, size)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if os.path.exists(path):
            os.unlink(path)
        self.listener.bind(path)
        self.listener.listen(16)
        self.clients = {}          # id -> (socket, [eventfd per vector])
        self.lock = threading.Lock()
        self.next_id = 0
        self.closed = False

    @staticmethod
    def send(conn, value, fd=None):
        data = struct.pack("<q", value)
        if fd is None:
            conn.sendall(data)
        else:
            socket.send_fds(conn, [data], [fd])

    def serve(self):
        while not self.closed:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                cid, self.next_id = self.next_id, self.next_id + 1
                fds = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(self.vectors)]
                self.send(conn, 0)                      # protocol version
                self.send(conn, cid)                    # its id
                self.send(conn, -1, self.memory)        # the shared memory
                for other, (osock, ofds) in self.clients.items():
                    for fd in ofds:                     # the peers already there, vector by vector
                        self.send(conn, other, fd)
                    for fd in fds:                      # and they hear of this one
                        self.send(osock, cid, fd)
                for fd in fds:                          # its own vectors
                    self.send(conn, cid, fd)
                self.clients[cid] = (conn, fds)
            threading.Thread(target=self.watch, args=(cid, conn), daemon=True).start()

    def watch(self, cid, conn):
        """Waits for the client to go, then announces it."""
        try:
            while conn.recv(64):
                pass
        except OSError:
            pass
        with self.lock:
            _, fds = self.clients.pop(cid, (None, []))
            for osock, _ in self.clients.values():
                try:
                    self.send(osock, cid)
                except OSError:
                    pass
        for fd in fds:
            os.close(fd)

    def wait_clients(self, n, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            with self.lock:
                if len(self.clients) >= n:
                    return
            time.sleep(0.02)
        raise TimeoutError(f"ivshmem server: {n} client(s) did not connect in {seconds} s")

    def close(self):
        self.closed = True
        self.listener.close()
        with self.lock:
            for conn, _ in self.clients.values():
                conn.close()
