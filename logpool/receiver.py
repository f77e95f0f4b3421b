"""A collector: accepts any number of stream connections and appends complete
newline-terminated messages to a file. The torn last line of a connection that broke is
dropped (logpool resends that message whole on its next connection).

Stopping is graceful: the listener closes, and for unix sockets each connection is shut
down for reading and then drained, so every byte the kernel accepted from a writer is
either written out here or refused to the writer (EPIPE), which then resends it. TCP has no
such handshake: bytes in flight when a TCP receiver stops can be lost.
"""
import os
import select
import selectors
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass

READ_SIZE = 1 << 18


def listen_socket(listen):
    """A listening socket for unix:/path or tcp://host:port (port 0 picks a free one)."""
    from logpool.config import parse_url
    scheme, address = parse_url("--listen", listen, allow_port_zero=True)
    if scheme == "unix":
        try:
            os.unlink(address)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(address)
    else:
        host, port = address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    sock.listen(512)
    sock.setblocking(False)
    return sock


def address_of(sock):
    """The URL a writer would use to reach this listener."""
    if sock.family == socket.AF_UNIX:
        return "unix:" + sock.getsockname()
    host, port = sock.getsockname()[:2]
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


@dataclass
class ReceiverStats:
    connections: int = 0
    messages: int = 0
    bytes: int = 0
    torn: int = 0
    reads: int = 0


class Receiver:
    """Runs in its own thread (start/stop) or in the caller's (serve_forever)."""

    def __init__(self, listen, out):
        self.sock = listen_socket(listen)
        self.url = address_of(self.sock)
        self.out = out
        self.stats = ReceiverStats()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.sock, selectors.EVENT_READ, None)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._stopping = False
        self._thread = None
        self._partial = {}  # conn -> bytes after its last newline
        self._lock = threading.Lock()
        self._dirty = False

    def start(self):
        self._thread = threading.Thread(target=self.serve_forever, name="logpool-receiver",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout=10):
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout)

    def request_stop(self):
        """Safe from a signal handler or another thread."""
        self._stopping = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def snapshot(self):
        with self._lock:
            return ReceiverStats(**vars(self.stats))

    def serve_forever(self):
        try:
            while not self._stopping:
                if self._dirty:
                    # Readers of the file (tail -f, tests) see lines as they arrive.
                    self._flush_out()
                for key, _ in self._sel.select(timeout=1.0):
                    if key.data == "wake":
                        try:
                            self._wake_r.recv(64)
                        except BlockingIOError:
                            pass
                    elif key.fileobj is self.sock:
                        self._accept()
                    else:
                        self._read(key.fileobj)
            self._shutdown()
        finally:
            self._flush_out()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            conn.setblocking(False)
            self._partial[conn] = b""
            self._sel.register(conn, selectors.EVENT_READ, "conn")
            with self._lock:
                self.stats.connections += 1

    def _read(self, conn, drain=False):
        """Read what is there. Returns False once the connection is gone."""
        while True:
            try:
                data = conn.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                data = b""
            if not data:
                self._drop(conn)
                return False
            self._consume(conn, data)
            if not drain:
                return True

    def _consume(self, conn, data):
        buf = self._partial[conn] + data
        cut = buf.rfind(b"\n") + 1
        if cut:
            complete = buf[:cut]
            self.out.write(complete)
            self._dirty = True
            with self._lock:
                self.stats.messages += complete.count(b"\n")
                self.stats.bytes += cut
                self.stats.reads += 1
        self._partial[conn] = buf[cut:]

    def _drop(self, conn):
        torn = self._partial.pop(conn, b"")
        if torn:
            with self._lock:
                self.stats.torn += 1
        try:
            self._sel.unregister(conn)
        except (KeyError, ValueError):
            pass
        conn.close()
        self._flush_out()

    def _flush_out(self):
        self._dirty = False
        try:
            self.out.flush()
        except (OSError, ValueError):
            pass

    def _shutdown(self):
        self._sel.unregister(self.sock)
        if self.sock.family == socket.AF_UNIX:
            path = self.sock.getsockname()
            self.sock.close()
            try:
                os.unlink(path)
            except OSError:
                pass
        else:
            self.sock.close()
        for conn in list(self._partial):
            if conn.family == socket.AF_UNIX:
                # Writers now get EPIPE; what they wrote before is still queued: drain it.
                try:
                    conn.shutdown(socket.SHUT_RD)
                except OSError:
                    pass
            deadline = time.monotonic() + 2.0
            while conn in self._partial and time.monotonic() < deadline:
                if self._read(conn, drain=True) and conn.family != socket.AF_UNIX:
                    break  # TCP: take what is queued now, nothing more is promised
                if conn in self._partial:
                    select.select([conn], [], [], 0.05)
            if conn in self._partial:
                self._drop(conn)
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()


def main(listen, out_path=None):
    out = open(out_path, "ab") if out_path else sys.stdout.buffer
    try:
        receiver = Receiver(listen, out)
    except OSError as exc:
        print(f"logpool receive: cannot listen on {listen}: {exc}", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: receiver.request_stop())
    print(f"logpool receive: listening on {receiver.url}", file=sys.stderr, flush=True)
    receiver.serve_forever()
    s = receiver.stats
    print(f"logpool receive: stopped: {s.connections} connections, {s.messages} messages, "
          f"{s.bytes} bytes, {s.torn} torn lines dropped", file=sys.stderr, flush=True)
    if out_path:
        out.close()
    return 0

