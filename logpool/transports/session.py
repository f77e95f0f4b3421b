"""Acknowledged sessions over a stream (RELP, Fluent forward): the bookkeeping both share.

Up to a window of messages is in flight; the collector's answers release them from the head
of the chain, in order, as the engine applies the Outcome (acked) a write returns. The
protocol module frames what goes out (_frame_more) and parses what comes back (_read_acks,
calling _release for each contiguous run acknowledged). What both need and must get right
the same way lives here:
- acknowledgements that arrive together with the end of the connection or an error are
  taken first; the end is reported by the next write (self.broken, self.peer_gone);
- a session that ends with messages in flight owes their resend to the next one, counted in
  resent_messages when they go again;
- every wait of the opening exchange has the connect deadline and watches the stop flag.
"""
import errno
import select

from logpool.transports.base import Outcome, wait_io
from logpool.transports.stream import StreamTransport


def would_block():
    """The exceptions of a non-blocking socket with nothing to do now (ssl's only once a TLS
    sink exists: plain workers never import ssl)."""
    import ssl
    return (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class AcknowledgedTransport(StreamTransport):
    PROTOCOL = "session"  # the protocol's name, in error messages

    def __init__(self, sink, chain, faults=None):
        super().__init__(sink, chain, faults)
        self.owed_resend = 0  # messages in flight when a session broke: sent again next
        self.reset_session()

    def reset_session(self):
        self.out = None  # memoryview of frames not completely written yet
        self.inflight = 0  # sent, not acknowledged: the first `inflight` pending messages
        self.acked = 0  # acknowledged messages not reported in an Outcome yet
        self.broken = None  # the error that ended the session, raised once acks are out
        self.peer_gone = False  # the collector closed the connection (EOF read)

    # -- what a protocol module provides --

    def _window_open(self):
        """May another batch of messages go out now?"""
        raise NotImplementedError

    def _frame_more(self):
        """Frame the next messages after the first inflight + acked into self.out (a
        memoryview), or leave self.out None when nothing is pending."""
        raise NotImplementedError

    def _read_acks(self, receive=True):
        """Read what the collector sent and _release what it acknowledged; raise for an
        answer that ends the session (after the acknowledgements before it)."""
        raise NotImplementedError

    def _feed(self, data):
        """Bytes the collector sent, to the protocol's parser."""
        raise NotImplementedError

    # -- the shared bookkeeping --

    def write(self):
        if self.broken is not None and not self.acked:
            raise self.broken  # after the acknowledgements that came with it were reported
        sent = 0
        if self.broken is None:
            try:
                self._read_acks()
            except OSError as exc:
                self.broken = exc  # raised at the next call, once these acks are applied
            if self.broken is None and self.out is None and self._window_open():
                self._frame_more()
            if self.broken is None and self.out is not None:
                sent = self._send_out()
        return Outcome.progressed(sent) + self._settled()

    def _settled(self):
        acked, self.acked = self.acked, 0
        return Outcome.acked(acked) if acked else Outcome.NOTHING

    def _release(self, n):
        """n more messages at the head of those in flight are acknowledged."""
        self.inflight -= n
        self.acked += n
        self.chain.set_unacked(self.inflight)  # the gauge first: releasing lets flush return

    def _sending(self, n):
        """n more messages were framed to go out."""
        if self.owed_resend:
            again = min(n, self.owed_resend)
            self.owed_resend -= again
            self.chain.count_resent(again)
        self.inflight += n
        self.chain.set_unacked(self.inflight)

    def _end_session(self):
        """The bookkeeping of a session that ends: what it settled, to report."""
        outcome = self._settled()
        self.owed_resend += self.inflight  # sent again on the next session
        self.inflight = 0
        self.broken = None
        self.chain.set_unacked(0)
        return outcome

    def close(self):
        outcome = self._end_session()
        super().close()
        return outcome

    def wants(self):
        return select.POLLOUT if self.out is not None else select.POLLIN

    def wait_ready(self, timeout_s):
        """A hang-up is reported by the next write(), after the acknowledgements that came
        before it are read and taken."""
        poller = select.poll()
        poller.register(self.sock, self.wants())
        poller.poll(timeout_s * 1000)
        return False

    def peer_closed(self):
        try:
            self._read_acks()
        except OSError as exc:
            self.broken = exc
            return not self.acked
        return False

    def _send_out(self):
        try:
            written = self.sock.send(self.out)
        except would_block():
            return 0
        self.out = self.out[written:] if written < len(self.out) else None
        return written

    def _recv_available(self):
        """Read what is there; the end of the stream is remembered (peer_gone) and raised
        by _raise_if_gone once what came before it is parsed."""
        while True:
            try:
                data = self.sock.recv(65536)
            except would_block():
                return
            if not data:
                self.peer_gone = True
                return
            self._feed(data)
            if len(data) < 65536:
                return

    def _raise_if_gone(self):
        if self.peer_gone:
            raise ConnectionResetError(errno.ECONNRESET, f"the {self.PROTOCOL} server closed "
                                       f"the connection")

    # -- the opening exchange: within the connect deadline, ended by stop --

    def _send_all(self, data, should_stop, deadline, what):
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view):]
            except would_block():
                self._wait(select.POLLOUT, should_stop, deadline, what)

    def _wait(self, events, should_stop, deadline, what):
        wait_io(self.sock, events, deadline, should_stop,
                f"{what} (connect_timeout_ms {self.sink.connect_timeout_ms})")
