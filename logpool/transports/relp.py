"""relp://host:port and relp+tls://host:port: RELP, rsyslog's Reliable Event Logging Protocol
(librelp, imrelp). Every message is a numbered "syslog" command; the collector answers
"rsp 200 OK" once it has taken it, and only then is the message released from the buffer
(counted as sent). Up to relp_window messages are in flight; a broken session, a non-200
reply or a serverclose reconnects (with the engine's backoff) and resends every message not
acknowledged, in order: at-least-once delivery.

A message the collector refuses (a non-200 reply names its txnr) is sent again on a new
session once; refused again there, it is held while the session goes on, and rejected for
good (dropped_rejected, with the collector's text) as soon as the collector acknowledges
another message: refused alone while others are taken. A collector that refuses everything
(an outage that answers) never turns into rejections: nothing is taken, so nothing is
rejected. The bound: one reconnect with backoff per poison message.

Frames: TXNR SP COMMAND SP DATALEN [SP DATA] LF. Commands are framed in C straight from the
chunks (Chain.relp_frames); replies are parsed here.
"""
import errno
import select
import time

from logpool.errors import ConfigError
from logpool.protocols.relp import (ACK_SUFFIX, OFFERS, TXNR_MAX, RelpError, next_txnr,
                                    parse_frame)
from logpool.transports.address import HOST_PORT
from logpool.transports.base import SLICE_S, ProtocolError, Transport
from logpool.transports.schema import Option, int_range
from logpool.transports.session import AckSession

DEFAULT_WINDOW = 128
CLOSE_REPLY_S = 0.5  # how long a closing session waits for the collector's last replies
# A reply ("rsp 200 OK", an error text, an open's offers) is short: a collector announcing
# more is broken or hostile, and is not given the memory to hold it.
MAX_REPLY_BYTES = 64 * 1024


class RelpTransport(Transport):
    PROTOCOL = "RELP"
    SCHEMES = ("relp", "relp+tls")
    ADDRESS = {"relp": HOST_PORT, "relp+tls": HOST_PORT}
    TLS_SCHEMES = frozenset(("relp+tls",))
    OPTIONS = (Option("relp_window", "integer", DEFAULT_WINDOW, "messages sent and not yet "
                      "acknowledged, at most", int_range(1, 65536)),)

    @classmethod
    def check_sink(cls, where, sink, given, values, opts, framing):
        if framing == "octet-counting":
            raise ConfigError(f"{where}.framing: RELP frames each message itself; use raw "
                              f"(the default) or newline (one trailing newline is dropped)")

    def __init__(self, sink, chain, faults=None):
        super().__init__(sink, chain, faults)
        self.window = sink.transport_options.relp_window
        self.refusals = {}  # message index (chain.completed based) -> times refused
        self.frames = chain.frame_buffer(max(256 * 1024, sink.max_message_size + 64))
        self.conn = self.connection()
        self.session = AckSession(self.conn, chain, self)
        self._reset()

    def _reset(self):
        self.inbuf = bytearray()
        self.oldest_txnr = 2  # txnr of the first message in flight (1 was "open")
        self.txnr = 2  # txnr of the next command
        self.acked_ahead = set()  # txnrs acknowledged out of order, behind an unanswered one
        self.refused_held = {}  # txnr -> reason: refused again, rejected once others are taken
        self.refused_reasons = {}  # txnr -> reason: answered with a refusal, released as such

    @property
    def inflight(self):
        return self.session.inflight

    # -- session --

    def connect(self, should_stop):
        return self.conn.open(should_stop, self._open)

    def _open(self, should_stop, deadline):
        """The opening exchange is part of connecting to each collector: one that accepts
        TCP (and TLS) but never answers the open, or refuses it, is a failed connect and
        the next collector is tried."""
        self.session.reset()
        self._reset()
        self.conn.send_all(b"1 open %d %s\n" % (len(OFFERS), OFFERS), should_stop, deadline,
                           "RELP open")
        txnr, command, data = self._read_frame(should_stop, deadline)
        if txnr != 1 or command != b"rsp" or not data.startswith(b"200"):
            raise RelpError(errno.EPROTO, f"RELP open refused: {command.decode()} "
                            f"{data[:200].decode('utf-8', 'replace')!r}")
        if b"commands=" in data and b"syslog" not in data.split(b"commands=", 1)[1]:
            raise RelpError(errno.EPROTO, "the RELP server does not offer the syslog "
                            "command")
        self.chain.set_unacked(0)

    def write(self):
        return self.session.write()

    def wants(self):
        return self.session.wants()

    def wait_ready(self, timeout_s):
        return self.session.wait_ready(timeout_s)

    def peer_closed(self):
        return self.session.peer_closed()

    def close(self):
        """Ends the session politely when it is healthy; returns the acknowledgements that
        came in before the collector's answer to "close" (the engine applies them)."""
        session = self.session
        if self.sock is not None and session.out is None and session.broken is None:
            try:  # a polite end; the collector keeps what it acknowledged either way
                self._close_session()
            except (OSError, ValueError):
                pass
        self.acked_ahead.clear()
        outcome = session.end()
        self.conn.close()
        return outcome

    def _close_session(self):
        """Send "close" and wait a moment for its reply, taking the acknowledgements that
        come before it (the collector answers everything it took, then the close); those
        that came are taken however the wait ends (the reply, the deadline, EOF)."""
        close_txnr = self.txnr
        reply = b"%d rsp 0\n" % close_txnr
        deadline = time.monotonic() + CLOSE_REPLY_S
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        try:
            self.sock.send(b"%d close 0\n" % close_txnr)
            while time.monotonic() < deadline and not self.session.peer_gone:
                if poller.poll(SLICE_S * 1000):
                    self.session.recv_available()
                at = self.inbuf.find(reply)
                if at == 0 or (at > 0 and self.inbuf[at - 1] == 0x0A):
                    del self.inbuf[at:]
                    return
        finally:
            self.session.peer_gone = False  # (the end of a session being closed anyway)
            try:
                self.read_acks(receive=False)
            except (OSError, ValueError):
                pass  # what follows the acknowledgements does not matter at close

    # -- writing and acknowledgements --

    def window_open(self):
        return self.session.inflight < self.window

    def frame_more(self):
        # Skip what is in flight and what was acknowledged but is released by the engine
        # only once this call's Outcome is applied.
        session = self.session
        n, frames = self.chain.relp_frames(self.frames, session.inflight + session.acked,
                                           self.window - session.inflight, self.txnr)
        if n == 0:
            return
        session.out = memoryview(frames)
        for _ in range(n):
            self.txnr = next_txnr(self.txnr)
        session.sending(n)

    def read_acks(self, receive=True):
        """Read what the collector sent and take every acknowledgement in it, in the order
        of the replies, before any error or serverclose that follows them (those raise).
        An acknowledgement releases the message it names once every earlier one is
        acknowledged too; one for a txnr not in flight, or twice for one, breaks the
        protocol."""
        if receive:
            self.session.recv_available()
        buf = self.inbuf
        last = buf.rfind(b"\n") + 1
        pos = self._in_order_prefix(buf, last)
        while pos < last:
            end = buf.find(b"\n", pos)
            if buf.endswith(ACK_SUFFIX, pos, end):  # "TXNR rsp 6 200 OK"
                number = bytes(buf[pos:end - len(ACK_SUFFIX)])
                if not (number.isdigit() and number.isascii() and len(number) <= 9):
                    raise ProtocolError(f"RELP: a malformed reply {bytes(buf[pos:end])[:60]!r}")
                txnr = int(number)
                pos = end + 1
            else:
                frame = self._parse_frame(buf, pos)
                if frame is None:
                    break  # a frame whose data holds a newline, not complete yet
                txnr, command, data, pos = frame
                if command == b"serverclose":
                    del buf[:pos]
                    raise ConnectionResetError(errno.ECONNRESET, "the RELP server closed "
                                               "the session (serverclose)")
                if command != b"rsp" or not data.startswith(b"200"):
                    # The status first: the text up to the colon is the rejection's kind
                    # (a metrics label, a log line once per kind), never the txnr.
                    code = bytes(data[:12]).split(b" ", 1)[0].decode("utf-8", "replace")
                    why = (f"RELP {command.decode()} {code}: "
                           f"{data[:200].decode('utf-8', 'replace')!r} (the reply to command "
                           f"{txnr})")
                    if command != b"rsp" or not self._refused(txnr, why):
                        del buf[:pos]
                        raise RelpError(errno.EPROTO, why)
                    continue
            self._ack(txnr)
            if self.refused_held:  # another message was taken: the held ones are refused alone
                held, self.refused_held = self.refused_held, {}
                for refused, why in sorted(held.items(), key=lambda kv: self._offset(kv[0])):
                    self._ack(refused, why)
        del buf[:pos]
        if len(buf) > MAX_REPLY_BYTES:
            raise ProtocolError(f"RELP: a reply longer than {MAX_REPLY_BYTES} bytes")
        self.session.raise_if_gone()

    def _offset(self, txnr):
        return (txnr - self.oldest_txnr) % TXNR_MAX

    def _refused(self, txnr, why):
        """A non-200 reply for txnr: False the first time that message is refused (the
        session breaks, the message goes again); after that, True: it is held until the
        collector takes another message, then rejected."""
        offset = self._offset(txnr)
        if not 1 <= txnr <= TXNR_MAX or offset >= self.session.inflight or \
                txnr in self.acked_ahead:
            return False  # not in flight: the protocol error is raised
        index = self.chain.completed + self.session.acked + offset
        if len(self.refusals) > 4096:  # settled ones are forgotten
            self.refusals = {i: n for i, n in self.refusals.items()
                             if i >= self.chain.completed}
        self.refusals[index] = self.refusals.get(index, 0) + 1
        if self.refusals[index] < 2:
            return False
        self.refused_held[txnr] = why
        return True

    def _ack(self, txnr, rejected=None):
        inflight = self.session.inflight
        offset = (txnr - self.oldest_txnr) % TXNR_MAX
        if not 1 <= txnr <= TXNR_MAX or offset >= inflight or txnr in self.acked_ahead:
            raise ProtocolError(f"RELP: an acknowledgement for command {txnr}, which is "
                                f"{'acknowledged already' if txnr in self.acked_ahead else 'not in flight'}"
                                f" (in flight: {inflight} from {self.oldest_txnr})")
        if rejected is not None:
            self.refused_reasons[txnr] = rejected
        if offset:
            self.acked_ahead.add(txnr)
            return
        released = 0
        while True:
            why = self.refused_reasons.pop(self.oldest_txnr, None) \
                if self.refused_reasons else None
            if why is not None:
                self.session.rejections.append((self.session.acked + released, why))
            released += 1
            self.oldest_txnr = next_txnr(self.oldest_txnr)
            if self.oldest_txnr not in self.acked_ahead:
                break
            self.acked_ahead.discard(self.oldest_txnr)
        self.session.release(released)

    def _in_order_prefix(self, buf, last):
        """The common case in one comparison: every complete line up to `last` is
        "TXNR rsp 6 200 OK" for the next commands in flight, in order. Takes them and
        returns `last`, or 0 when the replies need the careful path."""
        lines = buf.count(b"\n", 0, last)
        if (not lines or lines > self.session.inflight or self.acked_ahead
                or self.oldest_txnr + lines - 1 > TXNR_MAX):
            return 0
        first = self.oldest_txnr
        if buf[:last] != b"".join(b"%d%s\n" % (t, ACK_SUFFIX)
                                  for t in range(first, first + lines)):
            return 0
        self.oldest_txnr = next_txnr(first + lines - 1)
        self.session.release(lines)
        return last

    # -- frames --

    def feed(self, data):
        self.inbuf += data

    @staticmethod
    def _parse_frame(buf, pos):
        """(txnr, command, data, next pos) of the frame at pos, or None if incomplete; a
        reply announcing more than MAX_REPLY_BYTES is a protocol error before its data."""
        return parse_frame(buf, pos, MAX_REPLY_BYTES)

    def _read_frame(self, should_stop, deadline):
        while True:
            frame = self._parse_frame(self.inbuf, 0) if self.inbuf else None
            if frame is not None:
                txnr, command, data, pos = frame
                del self.inbuf[:pos]
                return txnr, command, data
            self.session.raise_if_gone()
            self.conn.wait(select.POLLIN, should_stop, deadline, "RELP open")
            self.session.recv_available()
