"""Acknowledged sessions over a stream (RELP, Fluent forward): the bookkeeping both share,
composed into each (self.session), over the transport's Connection.

Up to a window of messages is in flight; the collector's answers release them from the head
of the chain, in order, as the engine applies the Outcome (acked) a write returns. The
protocol (the transport) frames what goes out (frame_more) and parses what comes back
(read_acks, calling release for each contiguous run acknowledged). What both need and must
get right the same way lives here:
- acknowledgements that arrive together with the end of the connection or an error are
  taken first; the end is reported by the next write (self.broken, self.peer_gone);
- a session that ends with messages in flight owes their resend to the next one, counted in
  resent_messages when they go again.
The waits of the opening exchange (connect deadline, stop flag) are the Connection's.

The protocol provides: PROTOCOL (its name, in error messages), window_open() (may another
batch go out now?), frame_more() (frame the next messages after the first inflight + acked
into session.out, a memoryview, or leave it None when nothing is pending), read_acks(receive)
(read what the collector sent and release what it acknowledged; raise for an answer that
ends the session, after the acknowledgements before it) and feed(data) (bytes the collector
sent, to its parser).
"""
import errno
import select

from logpool.transports.connection import would_block
from logpool.transports.contract import Fate, Outcome


class AckSession:
    def __init__(self, conn, chain, protocol):
        self.conn, self.chain, self.protocol = conn, chain, protocol
        self.owed_resend = 0  # messages in flight when a session broke: sent again next
        self.reset()

    def reset(self):
        """A new session starts (in the opening exchange)."""
        self.out = None  # memoryview of frames not completely written yet
        self.inflight = 0  # sent, not acknowledged: the first `inflight` pending messages
        self.acked = 0  # acknowledged messages not reported in an Outcome yet
        self.rejections = []  # (offset among those `acked`, reason): refused for good
        self.broken = None  # the error that ended the session, raised once acks are out
        self.peer_gone = False  # the collector closed the connection (EOF read)

    def write(self):
        if self.broken is not None and not self.acked:
            raise self.broken  # after the acknowledgements that came with it were reported
        sent = 0
        if self.broken is None:
            try:
                self.protocol.read_acks()
            except OSError as exc:
                self.broken = exc  # raised at the next call, once these acks are applied
            if self.broken is None and self.out is None and self.protocol.window_open():
                self.protocol.frame_more()
            if self.broken is None and self.out is not None:
                sent = self._send_out()
        return Outcome.progressed(sent) + self.settled()

    def settled(self):
        acked, self.acked = self.acked, 0
        if self.rejections:
            fates = [(Fate.ACK, None)] * acked
            for offset, reason in self.rejections:
                fates[offset] = (Fate.REJECT, reason)
            self.rejections = []
            return Outcome.per_message(fates)
        return Outcome.acked(acked) if acked else Outcome.NOTHING

    def release(self, n):
        """n more messages at the head of those in flight are acknowledged."""
        self.inflight -= n
        self.acked += n
        self.chain.set_unacked(self.inflight)  # the gauge first: releasing lets flush return

    def sending(self, n):
        """n more messages were framed to go out."""
        if self.owed_resend:
            again = min(n, self.owed_resend)
            self.owed_resend -= again
            self.chain.count_resent(again)
        self.inflight += n
        self.chain.set_unacked(self.inflight)

    def end(self):
        """The bookkeeping of a session that ends: what it settled, to report."""
        outcome = self.settled()
        self.owed_resend += self.inflight  # sent again on the next session
        self.inflight = 0
        self.broken = None
        self.chain.set_unacked(0)
        return outcome

    def wants(self):
        return select.POLLOUT if self.out is not None else select.POLLIN

    def wait_ready(self, timeout_s):
        """A hang-up is reported by the next write(), after the acknowledgements that came
        before it are read and taken."""
        self.conn.wait_ready(self.wants(), timeout_s)
        return False

    def peer_closed(self):
        try:
            self.protocol.read_acks()
        except OSError as exc:
            self.broken = exc
            return not self.acked
        return False

    def _send_out(self):
        try:
            written = self.conn.sock.send(self.out)
        except would_block():
            return 0
        self.out = self.out[written:] if written < len(self.out) else None
        return written

    def recv_available(self):
        """Read what is there; the end of the stream is remembered (peer_gone) and raised
        by raise_if_gone once what came before it is parsed."""
        while True:
            try:
                data = self.conn.sock.recv(65536)
            except would_block():
                return
            if not data:
                self.peer_gone = True
                return
            self.protocol.feed(data)
            if len(data) < 65536:
                return

    def raise_if_gone(self):
        if self.peer_gone:
            raise ConnectionResetError(errno.ECONNRESET, f"the {self.protocol.PROTOCOL} "
                                       f"server closed the connection")
