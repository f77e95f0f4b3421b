"""unix:/path and tcp://host:port: a byte stream, written with sendmsg straight from the C
chunks (several chunks per call, no copy)."""
import errno
import socket
import time

from logpool.transports.base import Outcome, Transport, connect_socket


class StreamTransport(Transport):
    SCHEMES = ("unix", "tcp")
    ADDRESS = {"unix": "path", "tcp": "host_port"}

    def connect(self, should_stop):
        return self.connect_any(should_stop, lambda: self._connect_one(should_stop))

    def _connect_one(self, should_stop):
        deadline = time.monotonic() + self.sink.connect_timeout_ms / 1000
        self.sock = connect_socket(
            self.sink, self.address, should_stop, deadline, self.faults,
            established=lambda sock, family: self._established(sock, family, should_stop,
                                                                deadline))

    def _established(self, sock, family, should_stop, deadline):
        """The connection is up: set it up (and for subclasses, start a session on it)."""
        if family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def write(self):
        views = self.chain.views()
        try:
            return Outcome.wrote(self._send(views))
        except (BlockingIOError, InterruptedError):
            return Outcome.NOTHING

    def _send(self, views):
        if self.faults is not None:
            return self._faulty_send(views)
        return self.sock.sendmsg(views, (), socket.MSG_NOSIGNAL)

    def peer_closed(self):
        """A collector never talks back: readable means EOF or reset."""
        try:
            data = self.sock.recv(4096, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True
        if data:
            self.sock.recv(len(data), socket.MSG_DONTWAIT)  # ignore chatter
            return False
        return True

    def _faulty_send(self, views):
        """The fault seam (LOGPOOL_TEST_FAULTS): errors a real peer and kernel produce."""
        f, total = self.faults, sum(len(v) for v in views)
        if f.hit("exception"):
            raise RuntimeError("injected: unexpected error in the writer")
        if f.hit("slow_write"):
            time.sleep(f.rng.uniform(0.0005, 0.005))
        if f.hit("eagain"):
            raise BlockingIOError(errno.EAGAIN, "injected: would block")
        fault = None
        if total > 1:
            fault = "write_error" if f.hit("write_error", record=False) else (
                "short_write" if f.hit("short_write", record=False) else None)
        if fault is not None:
            views = _truncate(views, f.rng.randint(1, total - 1))
        written = self.sock.sendmsg(views, (), socket.MSG_NOSIGNAL)  # may raise EAGAIN
        if fault is not None:
            f.record(fault)
        if fault == "write_error":
            # The prefix did leave; then the connection "breaks" mid-message.
            self.chain.consume(written)
            raise f.rng.choice([BrokenPipeError(errno.EPIPE, "injected: broken pipe"),
                                ConnectionResetError(errno.ECONNRESET, "injected: reset")])
        return written


def _truncate(views, nbytes):
    out = []
    for v in views:
        if nbytes <= 0:
            break
        out.append(memoryview(v)[:nbytes] if len(v) > nbytes else v)
        nbytes -= len(v)
    return out
