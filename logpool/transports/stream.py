"""unix:/path, tcp://host:port and tls://host:port: a byte stream, written with sendmsg
straight from the C chunks (several chunks per call, no copy). TLS is an option of the
connection (logpool/transports/connection.py) every socket transport composes: tls:// is
this transport with it on."""
import errno
import time

from logpool.transports.address import HOST_PORT, PATH
from logpool.transports.base import Outcome, Transport


class StreamTransport(Transport):
    SCHEMES = ("unix", "tcp", "tls")
    ADDRESS = {"unix": PATH, "tcp": HOST_PORT, "tls": HOST_PORT}
    TLS_SCHEMES = frozenset(("tls",))

    def __init__(self, sink, chain, faults=None):
        super().__init__(sink, chain, faults)
        self.conn = self.connection()

    def connect(self, should_stop):
        return self.conn.open(should_stop)

    def write(self):
        views = self.chain.views()
        try:
            if self.faults is not None and self.conn.tls is None:
                return Outcome.wrote(self._faulty_send(views))
            return Outcome.wrote(self.conn.send(views))
        except (BlockingIOError, InterruptedError):
            return Outcome.NOTHING

    def peer_closed(self):
        """A collector never talks back: readable means EOF or reset."""
        return self.conn.peer_closed()

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
        written = self.conn.send(views)  # may raise EAGAIN
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
