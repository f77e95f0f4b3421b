"""unix:/path, tcp://host:port and tls://host:port: a byte stream, written with sendmsg
straight from the C chunks (several chunks per call, no copy). TLS is an option of every
socket transport built on this one (its TLS_SCHEMES: tls://, relp+tls://, https://), not a
transport of its own."""
import errno
import socket
import time

from logpool.transports.tls import handshake, read_nonblocking, tls_config
from logpool.transports.base import Outcome, Transport, connect_socket
from logpool.transports.schema import Values


class StreamTransport(Transport):
    SCHEMES = ("unix", "tcp", "tls")
    ADDRESS = {"unix": "path", "tcp": "host_port", "tls": "host_port"}
    TLS_SCHEMES = frozenset(("tls",))

    @classmethod
    def parse_options(cls, where, scheme, address, values):
        """The keys as attributes, and tls: the TLS block's config (None: plain)."""
        tls = tls_config(where, values) if scheme in cls.TLS_SCHEMES else None
        return Values(values, tls=tls)

    def __init__(self, sink, chain, faults=None):
        super().__init__(sink, chain, faults)
        self.tls = sink.transport_options.tls  # TlsConfig, or None: plain
        self.session = None  # reused on reconnect (TLS session resumption)
        self.resumed = False  # the last handshake resumed a session

    def announce(self):
        if self.tls is not None and not self.tls.verify:
            return (f"{self.sink.url}: TLS certificate verification is off (verify = false): "
                    f"the collector's identity is not checked")
        return None

    def connect(self, should_stop):
        skipped = self.connect_any(should_stop, lambda: self._connect_one(should_stop))
        if self.tls is not None:
            self.resumed = self.sock.session_reused
            self.session = self.sock.session
        return skipped

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
        if self.tls is not None:
            return handshake(sock, self.sink, self.tls,
                                      self.tls.server_name or self.address[0], self.session,
                                      deadline, should_stop)
        return sock

    def write(self):
        views = self.chain.views()
        try:
            return Outcome.wrote(self._send(views))
        except (BlockingIOError, InterruptedError):
            return Outcome.NOTHING

    def _send(self, views):
        if self.tls is not None:
            return self._tls_send(views)
        if self.faults is not None:
            return self._faulty_send(views)
        return self.sock.sendmsg(views, (), socket.MSG_NOSIGNAL)

    def _tls_send(self, views):
        """No sendmsg over TLS: one chunk per call; a retry after "want write" passes the
        same bytes again, as OpenSSL requires (pending chunks never change)."""
        import ssl
        try:
            return self.sock.send(views[0])
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            raise BlockingIOError(errno.EAGAIN, "TLS: would block") from None

    def close(self):
        if self.tls is not None and self.sock is not None:
            if self.sock.session is not None:
                self.session = self.sock.session  # with the tickets that came since
            try:  # close_notify, so the collector sees a clean end, not a truncation
                self.sock.unwrap()
            except (OSError, ValueError):
                pass  # sent, or the connection is already gone: nothing to wait for
        return super().close()

    def peer_closed(self):
        """A collector never talks back: readable means EOF or reset."""
        if self.tls is not None:  # reading also takes in TLS session tickets and alerts
            try:
                while (data := read_nonblocking(self.sock)) is not None:
                    if not data:
                        return True
            except OSError:
                return True
            return False
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
