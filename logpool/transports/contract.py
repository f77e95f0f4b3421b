"""The transport contract: what a transport may do, what it must report, and what the
delivery engine (logpool/engine/writer.py) does with the report. This docstring is the
reference; logpool/transports/base.py holds the interface (Transport, every name below
declared on it) and the shared pieces that implement it.

A transport is one connection to one collector at a time, driven by one writer thread.
connect, write, close and idle always return an Outcome (Outcome.NOTHING when there is
nothing to report), or raise one of the errors below: the engine never tests for None.

connect(should_stop) -> Outcome
    Opens a session within connect_timeout_ms: the whole opening exchange (TCP connect, TLS
    handshake, the protocol's open such as RELP's "open", a forward HELO/PING) happens
    inside it, per collector. A collector that accepts TCP and then hangs or refuses at any
    step is a failed connect: the next collector of the sink's failover list is tried.
    Its Outcome.opened(failed_over) lists the (url, error) of the collectors that failed
    before one opened; the engine counts them (connect_failures, tls_handshake_failures for
    HandshakeError) and logs them. Raises OSError when no collector opened a session,
    Stopped when the pool closes.

write() -> Outcome
    Sends from the sink's Chain (the pending messages, oldest first) and returns one Outcome
    describing what happened, never doing the bookkeeping itself:
      Outcome.wrote(nbytes)         stream bytes handed to the kernel (the engine consumes
                                    them: a message completes when its last byte is written)
      Outcome.acked(n)              the first n pending messages are acknowledged
      Outcome.rejected(n, reason)   the first n pending messages were refused for good
      Outcome.per_message([...])    one (Fate, reason) per message of the batch (ACK,
                                    RETRY, REJECT), for backends that answer per item
      Outcome.progressed(nbytes)    bytes went out, nothing is settled yet (an
                                    acknowledging protocol: resets the stall clock)
      Outcome.NOTHING               nothing could be done now (the engine waits on wants())
    A transport whose per-message work is C (Kafka: one delivery report per message) has
    its fates applied by that C code through the same chain calls; its Outcome says how
    many it settled (settled=) and what to report (reports=), so the engine still logs and
    resets its backoff.
    The engine releases acknowledged messages as sent, rejected ones into dropped_rejected
    (logging the reason once per kind, appending it to dead_letter_path when set), and counts
    writes, resends and failures itself. A per-item answer settles each message by its own
    fate: acknowledged and rejected ones are released, and only the RETRY ones go again,
    copied to the head of the pending list (still counted in max_buffer_length) and counted
    in retried_messages (nothing was stored). The one reordering: a retried item arrives
    after the later items of its batch that were taken at the first try.
    Errors are exceptions, and every one keeps the data:
      OSError (incl. TimeoutError)  the connection broke, timed out, or the collector said
                                    something the transport does not understand: logged,
                                    reconnect with backoff, resend from the first message
                                    not acknowledged (not completely written, for streams)
      RetryLater(after_s)           the collector asked to be asked again later (HTTP 429,
                                    503 with Retry-After, HEC busy): honoured, capped by
                                    max_retry_interval_ms
      Unsendable                    the first pending message can never be sent on this
                                    transport: the engine drops it, counted
      Stopped                       the pool is closing: leave now

close() -> Outcome
    Ends the session (a polite protocol close where there is one). What a closing exchange
    settles (RELP's last acknowledgements) comes back in the Outcome; the engine applies it.
    The next connect() starts a new session; shutdown() ends the transport for good.

idle() -> Outcome
    Housekeeping every IDLE_TICK_MS while nothing is pending (Kafka: librdkafka's
    callbacks); its reports are logged like a write's.

What else the engine reads, all declared on base.Transport: inflight (messages sent and not
settled yet, which the engine must not spill), resumed (the last TLS handshake resumed a
session), url and collectors (failover), collector_stats (metrics), wants() and
wait_ready() (waiting for room), peer_closed() (before a batch), failed() (move to the next
collector), announce(), shutdown(), and the class attributes UNIT, STALLS and IDLE_TICK_MS.

Every wait on a peer has a deadline (connect_timeout_ms for the opening exchange,
send_timeout_ms for a stalled send or an unanswered request) and looks at should_stop at
least every SLICE_S, so close() ends it. Every size a peer announces is bounded by what the
protocol needs (a reply line, a header block, a window of acknowledgements); a peer that
exceeds it is a protocol error (OSError), never an allocation of its choosing.

Acknowledging transports report unacknowledged messages with chain.set_unacked(n) (a gauge)
and announce resends with chain.count_resent(n); nothing else touches counters.

Options are declared once per transport as OPTIONS, a tuple of Option (name, type, default,
one-line doc, check): config checking, the Lua option list and the docs' key tables come from
them. TLS is an option block of any socket transport (the +tls schemes), not a subclass.
"""
import enum
import errno
import select
import time

# How often a blocked connect/send looks at the stop flag: logpool_close waits for the
# writer to notice, so this bounds how long a close can take after its own timeout.
SLICE_S = 0.05


class Fate(enum.Enum):
    ACK = "ack"        # the collector has it
    RETRY = "retry"    # send it again, alone (the engine requeues it at the head)
    REJECT = "reject"  # refused for good: dropped, counted in dropped_rejected


class Outcome:
    """What one write() call achieved. Use the constructors below."""
    __slots__ = ("wrote_bytes", "progress", "fates", "settled", "reports", "failed_over")

    def __init__(self, wrote_bytes=0, progress=0, fates=(), settled=0, reports=(),
                 failed_over=()):
        self.wrote_bytes = wrote_bytes  # stream bytes to consume
        self.progress = progress  # > 0: the connection moved (resets the stall clock)
        self.fates = tuple(fates)  # ((Fate, count, reason or None), ...), head first
        self.settled = settled  # messages delivered whose fate native code applied
        self.reports = tuple(reports)  # ((kind, text), ...) refusals native code applied
        self.failed_over = tuple(failed_over)  # connect: ((url, OSError), ...) tried first

    @classmethod
    def wrote(cls, nbytes):
        return cls(wrote_bytes=nbytes, progress=nbytes) if nbytes > 0 else cls.NOTHING

    @classmethod
    def progressed(cls, nbytes):
        """Bytes went out but nothing is settled yet (an acknowledging protocol)."""
        return cls(progress=nbytes) if nbytes > 0 else cls.NOTHING

    @classmethod
    def acked(cls, n, progress=None):
        return cls(progress=n if progress is None else progress,
                   fates=((Fate.ACK, n, None),) if n else ())

    @classmethod
    def rejected(cls, n, reason):
        return cls(progress=n, fates=((Fate.REJECT, n, reason),))

    @classmethod
    def per_message(cls, fates):
        """fates: one (Fate, reason or None) per message of the batch, in order."""
        runs = []
        for fate, reason in fates:
            if runs and runs[-1][0] is fate and runs[-1][2] == reason:
                runs[-1][1] += 1
            else:
                runs.append([fate, 1, reason])
        return cls(progress=len(fates), fates=[tuple(r) for r in runs])

    @classmethod
    def opened(cls, failed_over):
        """A session is open; failed_over: ((url, error), ...) of the collectors tried first."""
        return cls(failed_over=failed_over) if failed_over else cls.NOTHING

    def __add__(self, other):
        return Outcome(self.wrote_bytes + other.wrote_bytes, self.progress + other.progress,
                       self.fates + other.fates, self.settled + other.settled,
                       self.reports + other.reports, self.failed_over + other.failed_over)

    def __repr__(self):
        return (f"Outcome(wrote={self.wrote_bytes}, progress={self.progress}, "
                f"fates={self.fates}, settled={self.settled}, reports={self.reports}, "
                f"failed_over={self.failed_over})")


Outcome.NOTHING = Outcome()


class Stopped(Exception):
    """logpool_close gave up waiting: leave now."""


class HandshakeError(OSError):
    """The collector refused the session (a TLS handshake failed): counted apart, and not
    retried on the name's other addresses, which would present the same certificate."""


class Unsendable(OSError):
    """The first pending message can never be sent on this transport (a datagram larger
    than the socket takes): the engine drops it, counted, so it cannot wedge the sink."""


class RetryLater(OSError):
    """The collector asked for the data again later (after_s seconds, or None: backoff)."""

    def __init__(self, text, after_s=None, errno_=11):
        if isinstance(text, int):  # OSError's (errno, text), as failover re-raises it
            text, errno_, after_s = after_s, text, None
        super().__init__(errno_, text)
        self.retry_after = after_s


class ProtocolError(OSError):
    """The collector said something the transport does not understand or that breaks the
    protocol's rules (an oversized reply, an acknowledgement for nothing sent): the data is
    kept and resent on a new session."""

    def __init__(self, *args):
        super().__init__(*((71,) + args if len(args) == 1 else args))  # EPROTO


def wait_io(sock, events, deadline, should_stop, what):
    """Poll in slices until sock is ready, stop is requested or the deadline passes: the one
    wait every transport's waits on a peer are made of."""
    poller = select.poll()
    poller.register(sock, events)
    while not poller.poll(SLICE_S * 1000):
        if should_stop():
            raise Stopped()
        if time.monotonic() >= deadline:
            raise TimeoutError(errno.ETIMEDOUT, f"{what} timed out")
