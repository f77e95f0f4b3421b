"""relp://host:port and relp+tls://host:port: RELP, rsyslog's Reliable Event Logging Protocol
(librelp, imrelp). Every message is a numbered "syslog" command; the collector answers
"rsp 200 OK" once it has taken it, and only then is the message released from the buffer
(counted as sent). Up to relp_window messages are in flight; a broken session, a non-200
reply or a serverclose reconnects (with the engine's backoff) and resends every message not
acknowledged, in order: at-least-once delivery.

Frames: TXNR SP COMMAND SP DATALEN [SP DATA] LF. Commands are framed in C straight from the
chunks (logpool__sink_relp_frames); replies are parsed here.
"""
import errno
import select
import time

from logpool.errors import ConfigError
from logpool.protocols.relp import (ACK_SUFFIX, OFFERS, TXNR_MAX, RelpError, next_txnr,
                                    parse_frame)
from logpool.transports.base import SLICE_S, Stopped
from logpool.transports.stream import StreamTransport
from logpool.transports.tls import TlsTransport

DEFAULT_WINDOW = 128
CLOSE_REPLY_S = 0.5  # how long a closing session waits for the collector's last replies


def would_block():
    """The exceptions of a non-blocking socket with nothing to do now (ssl's only once a
    relp+tls sink exists: plain workers never import ssl)."""
    import ssl
    return (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class RelpTransport(StreamTransport):
    SCHEMES = ("relp",)
    ADDRESS = {"relp": "host_port"}
    OPTIONS = {"relp_window": DEFAULT_WINDOW}

    @classmethod
    def check_option(cls, where, key, value):
        if key == "relp_window":
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65536:
                raise ConfigError(f"{where}: must be an integer from 1 to 65536, got {value!r}")
            return value
        return super().check_option(where, key, value)

    @classmethod
    def check_sink(cls, where, sink, opts, framing):
        if framing == "octet-counting":
            raise ConfigError(f"{where}.framing: RELP frames each message itself; use raw "
                              f"(the default) or newline (one trailing newline is dropped)")

    @classmethod
    def parse_options(cls, where, scheme, address, options):
        return {"relp_window": options.get("relp_window", DEFAULT_WINDOW)}

    def __init__(self, sink, chain, faults=None):
        super().__init__(sink, chain, faults)
        options = sink.transport_options or {}
        self.window = options.get("relp_window", DEFAULT_WINDOW)
        lib, ffi = chain.lib, chain.ffi
        self.lib, self.ffi = lib, ffi
        self.cap = max(256 * 1024, sink.max_message_size + 64)
        self.frames = ffi.new("char[]", self.cap)
        self.used = ffi.new("size_t *")
        self.reset_session()
        self.owed_resend = 0  # messages in flight when a session broke: sent again next

    def reset_session(self):
        self.inbuf = bytearray()
        self.out = None  # memoryview of frames not completely written yet
        self.inflight = 0  # sent, not acknowledged: the first `inflight` pending messages
        self.oldest_txnr = 2  # txnr of the first message in flight (1 was "open")
        self.txnr = 2  # txnr of the next command

    # -- session --

    def connect(self, should_stop):
        super().connect(should_stop)
        self.reset_session()
        deadline = time.monotonic() + self.sink.connect_timeout_ms / 1000
        self._send_all(b"1 open %d %s\n" % (len(OFFERS), OFFERS), should_stop, deadline)
        txnr, command, data = self._read_frame(should_stop, deadline)
        if txnr != 1 or command != b"rsp" or not data.startswith(b"200"):
            raise RelpError(errno.EPROTO, f"RELP open refused: {command.decode()} "
                            f"{data[:200].decode('utf-8', 'replace')!r}")
        if b"commands=" in data and b"syslog" not in data.split(b"commands=", 1)[1]:
            raise RelpError(errno.EPROTO, "the RELP server does not offer the syslog command")
        self.chain.lib.logpool__sink_set_unacked(self.chain.c, 0)

    def close(self):
        if self.sock is not None and self.out is None:
            try:  # a polite end; the collector keeps what it acknowledged either way
                self._close_session()
            except (OSError, ValueError):
                pass
        self.owed_resend += self.inflight  # sent again on the next session
        self.inflight = 0
        self.chain.lib.logpool__sink_set_unacked(self.chain.c, 0)
        super().close()

    def _close_session(self):
        """Send "close" and wait a moment for its reply, taking the acknowledgements that
        come before it (the collector answers everything it took, then the close)."""
        close_txnr = self.txnr
        self.sock.send(b"%d close 0\n" % close_txnr)
        reply = b"%d rsp 0\n" % close_txnr
        deadline = time.monotonic() + CLOSE_REPLY_S
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        while time.monotonic() < deadline:
            if poller.poll(SLICE_S * 1000):
                self._recv_available()
            at = self.inbuf.find(reply)
            if at == 0 or (at > 0 and self.inbuf[at - 1] == 0x0A):
                del self.inbuf[at:]
                self._take_acks(receive=False)
                return

    # -- writing and acknowledgements --

    def wants(self):
        return select.POLLOUT if self.out is not None else select.POLLIN

    def write(self):
        progress = self._take_acks()
        if self.out is None and self.inflight < self.window:
            self._frame_more()
        if self.out is not None:
            progress += self._send_out()
        return progress

    def _frame_more(self):
        lib = self.lib
        n = lib.logpool__sink_relp_frames(self.chain.c, self.frames, self.cap, self.inflight,
                                          self.window - self.inflight, self.txnr, self.used)
        if n == 0:
            return
        if self.owed_resend:
            again = min(n, self.owed_resend)
            self.owed_resend -= again
            lib.logpool__sink_count(self.chain.c, lib.LOGPOOL__RESENT_MESSAGES, again)
        self.out = memoryview(self.ffi.buffer(self.frames, self.used[0]))
        self.inflight += n
        for _ in range(n):
            self.txnr = next_txnr(self.txnr)
        lib.logpool__sink_set_unacked(self.chain.c, self.inflight)

    def _send_out(self):
        try:
            written = self.sock.send(self.out)
        except would_block():
            return 0
        if written > 0:
            self.lib.logpool__sink_count(self.chain.c, self.lib.LOGPOOL__WRITES, 1)
        self.out = self.out[written:] if written < len(self.out) else None
        return written

    def _take_acks(self, receive=True):
        """Read what the collector sent; release every acknowledged message. Returns how
        many were acknowledged."""
        if receive:
            self._recv_available()
        buf = self.inbuf
        acked = pos = 0
        last = buf.rfind(b"\n") + 1
        if last and self._all_acks_in_order(buf, last):
            lines = buf.count(b"\n", 0, last)
            acked, pos = lines, last
            self.inflight -= lines
            self.oldest_txnr = (self.oldest_txnr + lines - 1) % TXNR_MAX + 1
        while pos < last:
            end = buf.find(b"\n", pos)
            if buf.endswith(ACK_SUFFIX, pos, end):  # "TXNR rsp 6 200 OK"
                txnr = int(buf[pos:end - len(ACK_SUFFIX)])
                pos = end + 1
            else:
                frame = self._parse_frame(buf, pos)
                if frame is None:
                    break  # a frame whose data holds a newline, not complete yet
                txnr, command, data, pos = frame
                if command == b"serverclose":
                    raise ConnectionResetError(errno.ECONNRESET, "the RELP server closed "
                                               "the session (serverclose)")
                if command != b"rsp" or not data.startswith(b"200"):
                    raise RelpError(errno.EPROTO, f"RELP reply to command {txnr}: "
                                    f"{command.decode()} "
                                    f"{data[:200].decode('utf-8', 'replace')!r}")
            if txnr != self.oldest_txnr or self.inflight == 0:
                raise RelpError(errno.EPROTO, f"RELP: an answer for command {txnr}, expected "
                                f"{self.oldest_txnr}")
            self.oldest_txnr = next_txnr(self.oldest_txnr)
            self.inflight -= 1
            acked += 1
        del buf[:pos]
        if acked:  # the gauge first: consuming lets a flush return
            self.lib.logpool__sink_set_unacked(self.chain.c, self.inflight)
            self.lib.logpool__sink_consume_messages(self.chain.c, acked,
                                                    self.lib.LOGPOOL__DONE_SENT)
            self.chain.completed += acked
        return acked

    def _all_acks_in_order(self, buf, last):
        """The common case, checked in O(1) Python: every complete line up to `last` is
        "TXNR rsp 6 200 OK", as many as are in flight at most, the first and the last
        numbered as expected (replies come in the order of the commands)."""
        lines = buf.count(b"\n", 0, last)
        if lines > self.inflight or buf.count(ACK_SUFFIX + b"\n", 0, last) != lines:
            return False
        last_line = buf.rfind(b"\n", 0, last - 1) + 1
        return (self._ack_txnr(buf, 0) == self.oldest_txnr and self._ack_txnr(buf, last_line)
                == (self.oldest_txnr + lines - 2) % TXNR_MAX + 1)

    @staticmethod
    def _ack_txnr(buf, start):
        """The txnr of the "TXNR rsp 6 200 OK" line at start."""
        return int(buf[start:buf.index(b" ", start)])

    def peer_closed(self):
        try:
            self._take_acks()
        except OSError:
            return True
        return False

    # -- frames --

    def _recv_available(self):
        while True:
            try:
                data = self.sock.recv(65536)
            except would_block():
                return
            if not data:
                raise ConnectionResetError(errno.ECONNRESET, "the RELP server closed the "
                                           "connection")
            self.inbuf += data
            if len(data) < 65536:
                return

    _parse_frame = staticmethod(parse_frame)

    def _read_frame(self, should_stop, deadline):
        while True:
            frame = self._parse_frame(self.inbuf, 0) if self.inbuf else None
            if frame is not None:
                txnr, command, data, pos = frame
                del self.inbuf[:pos]
                return txnr, command, data
            self._wait(select.POLLIN, should_stop, deadline, "RELP open")
            self._recv_available()

    def _send_all(self, data, should_stop, deadline):
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view):]
            except would_block():
                self._wait(select.POLLOUT, should_stop, deadline, "RELP open")

    def _wait(self, events, should_stop, deadline, what):
        poller = select.poll()
        poller.register(self.sock, events)
        while not poller.poll(SLICE_S * 1000):
            if should_stop():
                raise Stopped()
            if time.monotonic() >= deadline:
                raise TimeoutError(errno.ETIMEDOUT, f"{what} timed out (connect_timeout_ms "
                                   f"{self.sink.connect_timeout_ms})")


class RelpTlsTransport(RelpTransport, TlsTransport):  # noqa: the MRO: RELP over TLS
    SCHEMES = ("relp+tls",)
    ADDRESS = {"relp+tls": "host_port"}
    OPTIONS = {**TlsTransport.OPTIONS, **RelpTransport.OPTIONS}

    @classmethod
    def check_option(cls, where, key, value):
        if key in RelpTransport.OPTIONS:
            return RelpTransport.check_option.__func__(cls, where, key, value)
        return TlsTransport.check_option.__func__(cls, where, key, value)

    @classmethod
    def parse_options(cls, where, scheme, address, options):
        relp = {k: v for k, v in options.items() if k in RelpTransport.OPTIONS}
        tls = {k: v for k, v in options.items() if k not in RelpTransport.OPTIONS}
        return RelpTlsOptions(tls=TlsTransport.parse_options.__func__(cls, where, scheme,
                                                                      address, tls),
                              relp_window=relp.get("relp_window", DEFAULT_WINDOW))

    def __init__(self, sink, chain, faults=None):
        RelpTransport.__init__(self, sink, chain, faults)
        options = sink.transport_options
        self.window = options.relp_window
        self.tls = options.tls
        self.session = None
        self.resumed = False


class RelpTlsOptions:
    def __init__(self, tls, relp_window):
        self.tls = tls
        self.relp_window = relp_window

    def get(self, key, default=None):
        return getattr(self, key, default)
