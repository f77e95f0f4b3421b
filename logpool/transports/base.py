"""What every transport shares: the interface the delivery engine calls, the view of a sink's
C chain a transport sends from, name resolution and socket connects that watch the stop
flag and the connect deadline.

A transport is one connection to one collector. The engine (logpool/engine/writer.py)
decides when to connect, what is due, how long to back off and what to resend; the
transport connects, writes frames from the chain, says what was written, and closes.
"""
import errno
import os
import select
import socket
import threading
import time

from logpool.errors import ConfigError
from logpool.transports.schema import TLS_OPTIONS, Values
from logpool.transports.contract import (  # noqa: F401 — the contract's names, re-exported
    Fate, HandshakeError, Outcome, ProtocolError, RetryLater, Stopped, Unsendable)

# How often a blocked connect/send looks at the stop flag: logpool_close waits for the
# writer to notice, so this bounds how long a close can take after its own timeout.
SLICE_S = 0.05
IOV_BATCH = 64  # chunks per sendmsg (IOV_MAX is 1024), datagrams per sendmmsg


class Chain:
    """A sink's pending messages in C, as its writer thread sees them (only that thread may
    call these). The complete view a transport needs: zero-copy buffers over the pending
    messages or bytes, and the calls that report their fate. The engine applies a
    transport's Outcome through it; transports never touch the C library."""

    def __init__(self, ffi, lib, csink):
        self.ffi, self.lib, self.c = ffi, lib, csink
        self.iov = ffi.new("logpool__iov_t[]", IOV_BATCH)
        self.msg_iov = None  # grown on demand by messages()
        self.completed = 0  # messages completely written or settled through this view, ever

    # -- what is pending --

    def pending(self):
        """Bytes pending (taken from the producers, not yet settled)."""
        return self.lib.logpool__sink_pending(self.c)

    def pending_messages(self):
        return self.lib.logpool__sink_pending_messages(self.c)

    def views(self, max_chunks=IOV_BATCH):
        """The pending bytes as buffers over the C chunks (no copy), in order."""
        n = self.lib.logpool__sink_iov(self.c, self.iov, max_chunks)
        return [self.ffi.buffer(self.iov[i].base, self.iov[i].len) for i in range(n)]

    def messages(self, max_count, max_bytes, skip=0):
        """Buffers over whole pending messages after the first `skip` (handed over already),
        in order: at most max_count and max_bytes in all (always at least one)."""
        if self.msg_iov is None or len(self.msg_iov) < max_count:
            self.msg_iov = self.ffi.new("logpool__iov_t[]", max_count)
        n = self.lib.logpool__sink_message_iov(self.c, self.msg_iov, max_count, max_bytes, skip)
        return [self.ffi.buffer(self.msg_iov[i].base, self.msg_iov[i].len) for i in range(n)]

    def frame_buffer(self, size):
        """C memory for frames built from the chain (relp_frames)."""
        return self.ffi.new("char[]", size)

    def relp_frames(self, out, skip, max_msgs, first_txnr):
        """RELP "syslog" commands for up to max_msgs messages after the first `skip`, framed
        in C into `out` (a frame_buffer). Returns (how many, a buffer over the frames)."""
        used = self.ffi.new("size_t *")
        n = self.lib.logpool__sink_relp_frames(self.c, out, len(out), skip, max_msgs,
                                               first_txnr, used)
        return n, self.ffi.buffer(out, used[0])

    def send_datagrams(self, fd):
        """Pending messages, one datagram each, by sendmmsg in C (consumed and counted
        there). Returns how many were sent, or -errno."""
        sent = self.lib.logpool__sink_send_datagrams(self.c, fd, IOV_BATCH)
        if sent > 0:
            self.completed += sent
        return sent

    # -- fates (the engine's, applying an Outcome) --

    def consume(self, nbytes):
        """nbytes more of the stream were written: counts the write and the messages it
        completed."""
        self.count_write()
        done = self.lib.logpool__sink_consume(self.c, nbytes)
        self.completed += done
        return done

    def ack(self, n):
        """The first n pending messages are acknowledged: released, counted as sent."""
        self.lib.logpool__sink_consume_messages(self.c, n, self.lib.LOGPOOL__DONE_SENT)
        self.completed += n

    def reject(self, n):
        """The first n pending messages were refused for good: released, counted in
        dropped_rejected."""
        self.lib.logpool__sink_consume_messages(self.c, n, self.lib.LOGPOOL__DONE_REJECTED)
        self.completed += n

    def drop_first(self):
        """Drop the first pending message (counted in dropped_unsendable); its size."""
        return self.lib.logpool__sink_drop_message(self.c)

    # -- gauges and counters a transport reports --

    def set_unacked(self, n):
        self.lib.logpool__sink_set_unacked(self.c, n)

    def count_write(self, n=1):
        self.lib.logpool__sink_count(self.c, self.lib.LOGPOOL__WRITES, n)

    def count_resent(self, n):
        """n messages go again after an answer that was never seen (a broken session, a
        timeout): the collector may have stored them, so each may arrive twice."""
        if n:
            self.lib.logpool__sink_count(self.c, self.lib.LOGPOOL__RESENT_MESSAGES, n)

    def count_retried(self, n):
        """n messages go again after a definite refusal or "later" (HTTP 429/5xx, a
        per-item retry, a narrowing split): nothing was stored, no duplicate can come of it."""
        if n:
            self.lib.logpool__sink_count(self.c, self.lib.LOGPOOL__RETRIED_MESSAGES, n)

    def native(self, kind):
        """The C side of a transport that has one (e.g. "kafka"), bound to this sink."""
        from logpool.transports.native import KINDS
        return KINDS[kind](self.ffi, self.lib, self.c)


class Transport:
    """The interface. Class attributes declare what config accepts for the schemes a
    transport serves; instances live as long as their writer (state such as a TLS session
    survives reconnects)."""

    SCHEMES = ()
    ADDRESS = {}  # scheme -> "path" (unix:/path) or "host_port" (scheme://host:port)
    SOCKET_TYPE = socket.SOCK_STREAM
    OPTIONS = ()  # schema.Option: valid at the top level and per sink of these schemes
    TLS_SCHEMES = frozenset()  # schemes of this transport that speak TLS (take TLS_OPTIONS)
    UNIT = "message"  # what one message travels as, in error reports
    FAILOVER = True  # a sink may list several collectors
    STALLS = True  # no progress for send_timeout_ms means the connection is broken
    IDLE_TICK_MS = -1  # > 0: call idle() this often while there is nothing to send

    # What the engine reads between calls (the contract's list):
    inflight = 0  # messages sent and not settled yet: held by the session, not to spill
    resumed = False  # the last TLS handshake resumed a session (counted in tls_resumed)

    @classmethod
    def options_for(cls, scheme):
        """The Options a sink of this scheme takes."""
        return cls.OPTIONS + (TLS_OPTIONS if scheme in cls.TLS_SCHEMES else ())

    RAW_FRAMING_ONLY = None  # why, for transports that frame each message themselves

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
        (every key of options_for(scheme), defaults applied by config)."""
        return Values(values)

    def __init__(self, sink, chain, faults=None):
        self.sink = sink
        self.chain = chain
        self.faults = faults
        self.sock = None
        self.collectors = sink.collectors or ((sink.url, sink.scheme, sink.address),)
        self.current = 0  # the collector in use, or tried first at the next connect
        # Per collector: [connects, connect failures], for metrics.
        self.collector_stats = {url: [0, 0] for url, _, _ in self.collectors}

    @property
    def url(self):
        return self.collectors[self.current][0]

    @property
    def address(self):
        return self.collectors[self.current][2]

    def connect_any(self, should_stop, connect_one):
        """connect_one() (the whole opening exchange) against each collector in failover
        order, from the current one; the first that works stays current. Returns
        Outcome.opened with the (url, error) of the collectors that failed before it, for
        the engine to count and report; raises the last failure when none works."""
        last, skipped = None, []
        for _ in range(len(self.collectors)):
            url = self.url
            try:
                connect_one()
                self.collector_stats[url][0] += 1
                return Outcome.opened(skipped)
            except Stopped:
                raise
            except OSError as exc:
                self.collector_stats[url][1] += 1
                self.close()
                skipped.append((url, exc))
                last = exc if len(self.collectors) == 1 else type(exc)(
                    exc.errno, f"{url}: {exc.strerror or exc}")
                self.current = (self.current + 1) % len(self.collectors)
        raise last

    def failed(self):
        """The session broke: the next connect starts with the next collector."""
        self.current = (self.current + 1) % len(self.collectors)

    def wants(self):
        """poll() events to wait for when write() made no progress."""
        return select.POLLOUT

    def wait_ready(self, timeout_s):
        """Wait until write() may progress, at most timeout_s. True when the connection
        reported an error or a hang-up."""
        poller = select.poll()
        poller.register(self.sock, self.wants())
        events = poller.poll(timeout_s * 1000)
        return bool(events and events[0][1] & (select.POLLERR | select.POLLHUP))

    def shutdown(self):
        """The writer stops for good."""
        self.close()

    def idle(self):
        """Housekeeping while idle, every IDLE_TICK_MS; an Outcome (its reports)."""
        return Outcome.NOTHING

    def announce(self):
        """A line for the error log when the writer starts, or None."""
        return None

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
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None
        return Outcome.NOTHING

    def fileno(self):
        return self.sock.fileno()


def wait_io(sock, events, deadline, should_stop, what):
    """Poll in slices until sock is ready, stop is requested or the deadline passes."""
    poller = select.poll()
    poller.register(sock, events)
    while not poller.poll(SLICE_S * 1000):
        if should_stop():
            raise Stopped()
        if time.monotonic() >= deadline:
            raise TimeoutError(errno.ETIMEDOUT, f"{what} timed out")


def resolve(sink, address, deadline, should_stop, faults=None):
    """[(family, sockaddr)] of the sink, resolved within the connect deadline. getaddrinfo
    cannot be interrupted: it runs in a helper thread that is left behind (it ends on its
    own) when the deadline passes or the pool closes."""
    if sink.address_kind == "path":
        return [(socket.AF_UNIX, address)]
    host, port = address[:2]
    delay = faults.resolve_delay_s if faults is not None and faults.hit("resolve_delay") else 0
    done = threading.Event()
    answer = {}

    def lookup():
        try:
            if delay:
                time.sleep(delay)  # the injected slow resolver
            answer["infos"] = socket.getaddrinfo(host, port, type=sink.socket_type)
        except UnicodeError as exc:  # a name IDNA cannot encode
            answer["error"] = OSError(errno.EINVAL, f"bad host name {host!r}: {exc}")
        except OSError as exc:
            answer["error"] = OSError(exc.errno or errno.EHOSTUNREACH,
                                      f"cannot resolve {host!r}: {exc.strerror or exc}")
        finally:
            done.set()

    threading.Thread(target=lookup, name="logpool-resolve", daemon=True).start()
    while not done.wait(SLICE_S):
        if should_stop():
            raise Stopped()
        if time.monotonic() >= deadline:
            raise TimeoutError(errno.ETIMEDOUT, f"resolving {host!r} timed out "
                               f"(connect_timeout_ms {sink.connect_timeout_ms})")
    if "error" in answer:
        raise answer["error"]
    if not answer["infos"]:
        raise OSError(errno.EHOSTUNREACH, f"{host} resolves to no address")
    return [(family, sockaddr) for family, _, _, _, sockaddr in answer["infos"]]


def connect_socket(sink, address, should_stop, deadline, faults=None, prepare=None,
                   established=None):
    """A connected non-blocking socket to the first address `address` resolves to that
    answers (names are resolved again at every connect).
    prepare(sock, family) runs before connect; established(sock, family) after it and may
    return another object (a TLS socket); a HandshakeError it raises ends the search."""
    last_error = None
    for family, sockaddr in resolve(sink, address, deadline, should_stop, faults):
        sock = socket.socket(family, sink.socket_type)
        try:
            sock.setblocking(False)
            if prepare is not None:
                prepare(sock, family)
            rc = sock.connect_ex(sockaddr)
            if rc in (errno.EINPROGRESS, errno.EALREADY):
                wait_io(sock, select.POLLOUT, deadline, should_stop,
                        f"connect (connect_timeout_ms {sink.connect_timeout_ms})")
                rc = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if rc != 0:
                raise OSError(rc, os.strerror(rc))
            return established(sock, family) if established is not None else sock
        except HandshakeError:
            raise  # the next address would present the same certificate
        except Stopped:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            last_error = exc
            if time.monotonic() >= deadline:
                break  # the next address would only report the spent deadline
    raise last_error
