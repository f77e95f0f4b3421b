"""What every transport shares: the interface the delivery engine calls (Transport: the
contract of logpool/transports/contract.py, every name the engine reads declared here) and
the view of a sink's C chain a transport sends from. What a socket transport needs besides
(resolution, failover over the opening exchange, TLS, deadlines) is a Connection it composes
(logpool/transports/connection.py), not a base class.

A transport is one connection to one collector. The engine (logpool/engine/writer.py)
decides when to connect, what is due, how long to back off and what to resend; the
transport connects, writes frames from the chain, says what was written, and closes.
"""
import select
import socket

from logpool.errors import ConfigError
from logpool.transports.connection import Collectors, Connection
from logpool.transports.schema import TLS_OPTIONS, Values
from logpool.transports.tls import tls_config
from logpool.transports.contract import (  # noqa: F401 — the contract's names, re-exported
    SLICE_S, Fate, HandshakeError, Outcome, ProtocolError, RetryLater, Stopped, Unsendable,
    wait_io)

IOV_BATCH = 64  # chunks per sendmsg (IOV_MAX is 1024), datagrams per sendmmsg


class Chain:
    """A sink's pending messages in C, as its writer thread sees them (only that thread may
    call these). The complete view a transport needs: zero-copy buffers over the pending
    messages or bytes, and the calls that report their fate. The engine applies a
    transport's Outcome through it; transports never touch the C library."""

    def __init__(self, ffi, lib, csink):
        self.ffi, self.lib, self.csink = ffi, lib, csink
        self.iov = ffi.new("logpool__iov_t[]", IOV_BATCH)
        self.msg_iov = None  # grown on demand by messages()
        self.completed = 0  # messages completely written or settled through this view, ever

    # -- what is pending --

    def pending(self):
        """Bytes pending (taken from the producers, not yet settled)."""
        return self.lib.logpool__sink_pending(self.csink)

    def pending_messages(self):
        return self.lib.logpool__sink_pending_messages(self.csink)

    def views(self, max_chunks=IOV_BATCH):
        """The pending bytes as buffers over the C chunks (no copy), in order."""
        n = self.lib.logpool__sink_iov(self.csink, self.iov, max_chunks)
        return [self.ffi.buffer(self.iov[i].base, self.iov[i].len) for i in range(n)]

    def messages(self, max_count, max_bytes, skip=0):
        """Buffers over whole pending messages after the first `skip` (handed over already),
        in order: at most max_count and max_bytes in all (always at least one)."""
        if self.msg_iov is None or len(self.msg_iov) < max_count:
            self.msg_iov = self.ffi.new("logpool__iov_t[]", max_count)
        n = self.lib.logpool__sink_message_iov(self.csink, self.msg_iov, max_count, max_bytes, skip)
        return [self.ffi.buffer(self.msg_iov[i].base, self.msg_iov[i].len) for i in range(n)]

    def frame_buffer(self, size):
        """C memory for frames built from the chain (relp_frames)."""
        return self.ffi.new("char[]", size)

    def relp_frames(self, out, skip, max_msgs, first_txnr):
        """RELP "syslog" commands for up to max_msgs messages after the first `skip`, framed
        in C into `out` (a frame_buffer). Returns (how many, a buffer over the frames)."""
        used = self.ffi.new("size_t *")
        n = self.lib.logpool__sink_relp_frames(self.csink, out, len(out), skip, max_msgs,
                                               first_txnr, used)
        return n, self.ffi.buffer(out, used[0])

    def send_datagrams(self, fd):
        """Pending messages, one datagram each, by sendmmsg in C (consumed and counted
        there). Returns how many were sent, or -errno."""
        sent = self.lib.logpool__sink_send_datagrams(self.csink, fd, IOV_BATCH)
        if sent > 0:
            self.completed += sent
        return sent

    # -- fates (the engine's, applying an Outcome) --

    def consume(self, nbytes):
        """nbytes more of the stream were written: counts the write and the messages it
        completed."""
        self.count_write()
        done = self.lib.logpool__sink_consume(self.csink, nbytes)
        self.completed += done
        return done

    def ack(self, n):
        """The first n pending messages are acknowledged: released, counted as sent."""
        self.lib.logpool__sink_consume_messages(self.csink, n, self.lib.LOGPOOL__DONE_SENT)
        self.completed += n

    def reject(self, n):
        """The first n pending messages were refused for good: released, counted in
        dropped_rejected."""
        self.lib.logpool__sink_consume_messages(self.csink, n, self.lib.LOGPOOL__DONE_REJECTED)
        self.completed += n

    def drop_first(self):
        """Drop the first pending message (counted in dropped_unsendable); its size."""
        return self.lib.logpool__sink_drop_message(self.csink)

    # -- gauges and counters a transport reports --

    def set_unacked(self, n):
        self.lib.logpool__sink_set_unacked(self.csink, n)

    def count_write(self, n=1):
        self.lib.logpool__sink_count(self.csink, self.lib.LOGPOOL__WRITES, n)

    def count_resent(self, n):
        """n messages go again after an answer that was never seen (a broken session, a
        timeout): the collector may have stored them, so each may arrive twice."""
        if n:
            self.lib.logpool__sink_count(self.csink, self.lib.LOGPOOL__RESENT_MESSAGES, n)

    def count_retried(self, n):
        """n messages go again after a definite refusal or "later" (HTTP 429/5xx, a
        per-item retry, a narrowing split): nothing was stored, no duplicate can come of it."""
        if n:
            self.lib.logpool__sink_count(self.csink, self.lib.LOGPOOL__RETRIED_MESSAGES, n)

    def native(self, kind):
        """The C side of a transport that has one (e.g. "kafka"), bound to this sink."""
        from logpool.transports.native import KINDS
        return KINDS[kind](self.ffi, self.lib, self.csink)


class Transport:
    """The interface, and the only base class of a transport. Class attributes declare what
    config accepts for the schemes a transport serves; instances live as long as their
    writer (state such as a TLS session survives reconnects). A socket transport sets
    self.conn to a Connection; the defaults below then serve it."""

    SCHEMES = ()
    ADDRESS = {}  # scheme -> its address form (logpool/transports/address.py)
    SOCKET_TYPE = socket.SOCK_STREAM
    OPTIONS = ()  # schema.Option: valid at the top level and per sink of these schemes
    TLS_SCHEMES = frozenset()  # schemes of this transport that speak TLS (take TLS_OPTIONS)
    UNIT = "message"  # what one message travels as, in error reports
    FAILOVER = True  # a sink may list several collectors
    STALLS = True  # no progress for send_timeout_ms means the connection is broken
    IDLE_TICK_MS = -1  # > 0: call idle() this often while there is nothing to send
    RAW_FRAMING_ONLY = None  # why, for transports that frame each message themselves

    # What the engine reads between calls (the contract's list):
    inflight = 0  # messages sent and not settled yet: held by the session, not to spill

    @classmethod
    def options_for(cls, scheme):
        """The Options a sink of this scheme takes."""
        return cls.OPTIONS + (TLS_OPTIONS if scheme in cls.TLS_SCHEMES else ())

    @classmethod
    def check_sink(cls, where, sink, given, values, opts, framing):
        """Config-time checks of one sink across its keys (raise ConfigError), once each key
        is valid: sink is the sink's object as written (what it set itself), given the
        validated transport keys set for it (pool-wide or its own), values those with the
        defaults, opts the engine's options (a transport may shrink a default there)."""
        if cls.RAW_FRAMING_ONLY and framing != "raw":
            raise ConfigError(f"{where}.framing: {cls.RAW_FRAMING_ONLY}; leave framing raw")

    @classmethod
    def parse_options(cls, where, scheme, address, values):
        """What the transport gets back as sink.transport_options, from its validated keys
        (every key of options_for(scheme), defaults applied by config); tls: the TLS block's
        config on a TLS scheme, else None."""
        return Values(values, tls=tls_config(where, values) if scheme in cls.TLS_SCHEMES
                      else None)

    def __init__(self, sink, chain, faults=None):
        self.sink = sink
        self.chain = chain
        self.faults = faults
        self.failover = Collectors(sink)
        self.conn = None  # a socket transport's Connection

    def connection(self, prepare=None):
        """The Connection of this sink (TLS on its TLS schemes), for socket transports."""
        options = self.sink.transport_options
        return Connection(self.sink, self.failover, options.tls if options else None,
                          self.faults, prepare)

    # -- what the engine reads --

    @property
    def url(self):
        return self.failover.url

    @property
    def address(self):
        return self.failover.address

    @property
    def collectors(self):
        return self.failover.all

    @property
    def collector_stats(self):
        return self.failover.stats

    @property
    def resumed(self):
        """The last TLS handshake resumed a session (counted in tls_resumed)."""
        return self.conn is not None and self.conn.resumed

    @property
    def sock(self):
        return self.conn.sock if self.conn is not None else None

    def failed(self):
        """The session broke: the next connect starts with the next collector."""
        self.failover.next()

    def wants(self):
        """poll() events to wait for when write() made no progress."""
        return select.POLLOUT

    def wait_ready(self, timeout_s):
        """Wait until write() may progress, at most timeout_s. True when the connection
        reported an error or a hang-up."""
        return self.conn.wait_ready(self.wants(), timeout_s)

    def shutdown(self):
        """The writer stops for good."""
        self.close()

    def idle(self):
        """Housekeeping while idle, every IDLE_TICK_MS; an Outcome (its reports)."""
        return Outcome.NOTHING

    def announce(self):
        """A line for the error log when the writer starts, or None."""
        return self.conn.announce() if self.conn is not None else None

    def connect(self, should_stop):
        """Open a session within connect_timeout_ms (the whole opening exchange). Returns
        Outcome.opened(the (url, error) of collectors that failed first). Raises OSError
        (HandshakeError when the collector refused the session) or Stopped."""
        raise NotImplementedError

    def write(self):
        """Send some pending messages; returns an Outcome (logpool.transports.contract)."""
        raise NotImplementedError

    def peer_closed(self):
        """Before a new batch: did the collector go away while we were idle?"""
        return False

    def close(self):
        """End the session; an Outcome of what a closing exchange settled."""
        if self.conn is not None:
            self.conn.close()
        return Outcome.NOTHING

    def fileno(self):
        return self.sock.fileno()
