"""A sink's writer thread: waits in C (GIL released) for a batch, hands it to the sink's
transport, reconnects with jittered backoff and resends from the first message that was not
completely written. It knows no socket: the transport (logpool/transports) does the I/O.

Three separate pieces, as in CPython's logging.handlers.SocketHandler and redis-py: the
transport makes connections, Backoff is the retry policy, SinkWriter is the loop. "Not
connected" has one state: ``self.connected`` is False and the transport holds no socket.
"""
import errno
import threading
import time

from logpool.engine.backoff import Backoff
from logpool.engine.deadletter import DeadLetters
from logpool.engine.faults import FaultInjector, InjectedCrash
from logpool.engine.report import REPORT_INTERVAL_S, ErrorReporter, describe

DROPS_CHECK_S = 0.25  # how often a busy writer looks for new refusals (reported within 1 s)
from logpool.engine.histograms import WriterHistograms
from logpool.engine.spooling import SpoolingWriter
from logpool.transports import for_scheme
from logpool.transports.base import (SLICE_S, Chain, Fate, HandshakeError, Stopped,
                                    Unsendable)



MAX_REJECTION_KINDS = 32  # kinds of reasons counted apart (metrics' cardinality); then "other"


def rejection_kind(reason):
    """The kind of a refusal: its reason up to the first colon (e.g. "HTTP 400", "item 400
    mapper_parsing_exception"), at most 60 characters."""
    return (reason or "unknown").split(":", 1)[0][:60].strip() or "unknown"


class SinkWriter(SpoolingWriter, threading.Thread):
    def __init__(self, ffi, lib, csink, sink):
        super().__init__(name=f"logpool-writer-{sink.index}", daemon=True)
        self.ffi = ffi
        self.lib = lib
        self.c = csink
        self.sink = sink
        self.connected = False
        self.failures = 0
        self.ever_connected = False
        self.next_attempt = 0.0
        self.backoff = Backoff(sink.retry_interval_ms / 1000, sink.max_retry_interval_ms / 1000)
        self.reporter = ErrorReporter(f"{sink.index} ({sink.name})")
        self.faults = FaultInjector.from_environment(f"{sink.index}-{sink.url}")
        self.chain = Chain(ffi, lib, csink)
        self.transport = for_scheme(sink.scheme)(sink, self.chain, self.faults)
        self.histograms = WriterHistograms()
        self.spool = None  # opened by the writer thread: logpool_new never touches the disk
        self.replaying = False  # the pending list holds records read back from the spool
        self.replay_count = 0  # messages in that batch
        self.next_rescan = 0.0  # when to look for segments other processes left
        self.spill_blocked_until = 0.0  # the spool was full: no spill attempt before this
        self.spill_iov = ffi.new("logpool__iov_t[]", 1024)  # pending messages, at exit
        self.spool_lock = threading.RLock()  # the Spool object and spills (spooling.py)
        self.replay_reordered = False  # a per-item retry reordered the replayed batch
        self.rejected_by_kind = {}  # kind of reason -> messages (Prometheus' reason label)
        self.dead_letters = None if sink.dead_letter_path is None else DeadLetters(
            sink.dead_letter_path, sink.dead_letter_max_bytes, sink.name, self.reporter.report)

    def _count(self, counter, n=1):
        self.lib.logpool__sink_count(self.c, counter, n)

    # -- lifecycle --

    def run(self):
        try:
            if self.sink.spool_dir is not None:
                self._open_spool()
            announcement = self.transport.announce()
            if announcement:
                self.reporter.emit(announcement)
            self._supervise()
        finally:
            self._note_unseen()
            self._disconnect()
            self.transport.shutdown()
            if self.spool is not None:
                self._spool_at_exit()
            self._report_drops(final=True)
            if self.dead_letters is not None:
                self.dead_letters.close()
            # Last touch of C memory: once this returns, logpool_free may release the pool.
            self.lib.logpool__sink_writer_exit(self.c)

    def _supervise(self):
        """Run the loop until stop. Whatever escapes it (a bug in the loop's own error
        handling, a BaseException) is counted in writer_errors, logged, and the loop starts
        again after backoff with the buffered messages intact: a writer never dies while its
        pool is open, so nothing accepted is left without a writer."""
        crashes = 0
        while True:
            try:
                self._loop()
                return
            except BaseException as exc:  # noqa: B036 — see the docstring
                crashes += 1
                try:
                    self._count(self.lib.LOGPOOL__WRITER_ERRORS)
                    self._disconnect()
                    self.lib.logpool__sink_rewind(self.c)
                    delay = self.backoff.compute(crashes)
                    self.reporter.report("writer restarted", f"{type(exc).__name__}: {exc} "
                                         f"escaped the writer loop; restarting it in "
                                         f"{delay * 1000:.0f} ms (crash {crashes}); buffered "
                                         f"messages are kept")
                    if self._wait_for_stop(delay):
                        return
                except BaseException:  # noqa: B036 — the supervisor itself must not die
                    pass

    _drops_reported = (0, 0, 0, 0, 0)
    _drops_reported_at = -REPORT_INTERVAL_S
    _drops_checked_at = -REPORT_INTERVAL_S

    def _report_drops(self, final=False):
        """Drops happen in C, where nothing may be printed: the writer summarises them, at
        most once per REPORT_INTERVAL_S (of the reporter's clock), and abandonment when it
        leaves."""
        now = self.reporter.clock()
        if not final and (now - self._drops_reported_at < REPORT_INTERVAL_S
                          or now - self._drops_checked_at < DROPS_CHECK_S):
            return
        self._drops_checked_at = now
        st = self.ffi.new("logpool_stats_t *")
        self.lib.logpool__sink_stats(self.c, st)
        # At exit, what is still unsent is about to be abandoned by writer_exit.
        abandoned = st.abandoned_messages + (
            st.accepted_messages - st.sent_messages - st.dropped_unsendable
            - st.dropped_rejected - st.abandoned_messages - st.spooled_messages
            - st.dropped_spool_replay if final else 0)
        current = (st.dropped_full, st.dropped_too_big, st.dropped_closed, abandoned,
                   st.dropped_unsendable)
        delta = [a - b for a, b in zip(current, self._drops_reported)]
        if not any(delta):
            return
        self._drops_reported, self._drops_reported_at = current, now
        parts, counters = [], []
        if delta[0]:
            full = (f"memory (max_buffer_length {self.sink.max_buffer_length} bytes) and the "
                    f"spool are both full" if self.spool is not None and self.spool.enabled
                    else f"buffer full at max_buffer_length {self.sink.max_buffer_length} "
                    f"bytes (the sink is not keeping up)")
            parts.append(f"{delta[0]} refused: {full}")
            counters.append('logpool_dropped_messages_total{reason="full"}')
        if delta[1]:
            parts.append(f"{delta[1]} refused: larger than max_message_size "
                         f"{self.sink.max_message_size}")
            counters.append('logpool_dropped_messages_total{reason="too_big"}')
        if delta[2]:
            parts.append(f"{delta[2]} refused: pool closed")
            counters.append('logpool_dropped_messages_total{reason="closed"}')
        if delta[3]:
            parts.append(f"{delta[3]} accepted messages abandoned at close")
            counters.append("logpool_abandoned_messages_total")
        if delta[4]:
            parts.append(f"{delta[4]} accepted, then refused by the socket for good")
            counters.append('logpool_dropped_messages_total{reason="unsendable"}')
        self.reporter.emit(f"messages lost: {'; '.join(parts)}; counted in "
                           f"{' and '.join(counters)}")

    def _should_stop(self):
        """Asked by every wait on a peer at least every SLICE_S: so losses are reported
        within a second whatever the writer is doing (the spiller moves memory to disk)."""
        lib = self.lib
        self._report_drops()
        return lib.logpool__sink_wait(self.c, lib.LOGPOOL__WAIT_FOR_STOP_NO_SPILL, 0) == \
            lib.LOGPOOL__WAIT_STOP

    def _note_unseen(self):
        """How many pending messages went out without an answer (the unacked gauge), before
        the connection goes: if they are spooled now, their segment says so."""
        if self.connected and self.spool is not None:
            st = self.ffi.new("logpool_stats_t *")
            self.lib.logpool__sink_stats(self.c, st)
            self.unseen = st.unacked_messages

    def _wait_for_stop(self, seconds):
        """Sleep up to `seconds` unless the pool stops first (True then); spill to the spool
        meanwhile whenever producers pass the spill mark (unless the spool was just found
        full), and look for orphaned segments every RESCAN_S."""
        lib = self.lib
        deadline = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            wake = deadline
            if self.spool is not None:
                wake = min(wake, self.next_rescan)
                if now < self.spill_blocked_until:
                    wake = min(wake, self.spill_blocked_until)
            r = lib.logpool__sink_wait(self.c, lib.LOGPOOL__WAIT_FOR_STOP_NO_SPILL,
                                       max(1, int((wake - now) * 1000)))
            if r == lib.LOGPOOL__WAIT_STOP:
                return True
            self._report_drops()
            self._maybe_adopt()
            if time.monotonic() >= deadline:
                return False

    def _loop(self):
        lib = self.lib
        while True:
            try:
                if not self.connected:
                    if not self._connect_when_due():
                        return
                    continue
                self._maybe_adopt()
                if self.chain.pending() == 0 and self.spool is not None and \
                        self.spool.has_records() and self._should_stop():
                    return  # a long replay must not hold up close: the rest stays spooled
                if self.chain.pending() == 0 and self._replay_next():
                    pass  # spooled records go before what is in memory
                elif self.chain.pending() == 0:
                    waited = time.monotonic()
                    tick = self.transport.IDLE_TICK_MS
                    if self.spool is not None:  # wake up for the next look at the spool
                        rescan = max(1, int((self.next_rescan - waited) * 1000))
                        tick = rescan if tick <= 0 else min(tick, rescan)
                    r = lib.logpool__sink_wait(self.c, lib.LOGPOOL__WAIT_FOR_BATCH, tick)
                    if r == lib.LOGPOOL__WAIT_STOP:
                        return
                    if r != lib.LOGPOOL__WAIT_READY:
                        if self.transport.IDLE_TICK_MS > 0:
                            self._apply(self.transport.idle())
                        continue
                    self.histograms.buffer_await_seconds.observe(time.monotonic() - waited)
                    with self.spool_lock:
                        if self.spool is not None and self.spool.has_records():
                            continue  # spilled meanwhile: the spool goes first (order)
                        self.histograms.batch_bytes.observe(lib.logpool__sink_take(self.c))
                    if self.transport.peer_closed():
                        self._broken("write", "the peer closed the connection")
                        continue
                if self.faults is not None and self.faults.hit("writer_crash"):
                    raise InjectedCrash("injected: the writer loop crashed")
                self._send_pending()
                if self.replaying:
                    self.replaying = self.replay_reordered = False
                    self._replay_done()
                    self.spill_blocked_until = 0.0  # room in the spool again
            except Stopped:
                return
            except OSError as exc:
                self._broken("write", describe(exc), getattr(exc, "retry_after", None))
            except Exception as exc:  # noqa: BLE001 — a writer never dies silently (trap 8)
                import traceback  # only when something went wrong: not in every worker
                self._count(lib.LOGPOOL__WRITER_ERRORS)
                self.reporter.report("internal error", "".join(
                    traceback.format_exception_only(type(exc), exc)).strip() + "\n" +
                    "".join(traceback.format_tb(exc.__traceback__)).rstrip())
                self._broken(None, None)

    # -- connecting --

    def _connect_when_due(self):
        """False when stop was requested."""
        self._report_drops()
        now = time.monotonic()
        if now < self.next_attempt:
            # (Not while a transport still holds some of them: librdkafka keeps its queue.)
            if (self._may_spill() and not self.transport.inflight
                    and not self._spool_pending()):
                self.spill_blocked_until = now + self.backoff.compute(max(1, self.failures))
            return not self._wait_for_stop(self.next_attempt - now)
        started = time.monotonic()
        lib = self.lib
        try:
            if self.faults is not None:
                if self.faults.hit("connect_fail"):
                    raise ConnectionRefusedError(errno.ECONNREFUSED, "injected: refused")
                if self.faults.hit("connect_timeout"):
                    raise TimeoutError(errno.ETIMEDOUT, "injected: connect timed out")
            opened = self.transport.connect(self._should_stop)
        except Stopped:
            self.transport.close()
            return False
        except OSError as exc:
            self.transport.close()
            self.histograms.connect_duration_seconds.observe(time.monotonic() - started)
            self.failures += 1
            self._count(lib.LOGPOOL__CONNECT_FAILURES)
            if isinstance(exc, HandshakeError):
                self._count(lib.LOGPOOL__TLS_HANDSHAKE_FAILURES)
            delay = self.backoff.compute(self.failures)
            self.next_attempt = time.monotonic() + delay
            where = self.sink.url if len(self.transport.collectors) == 1 else (
                f"all {len(self.transport.collectors)} collectors")
            self.reporter.report("connect failed", f"{where}: {describe(exc)}; "
                                 f"retrying in {delay * 1000:.0f} ms")
            return True
        self.histograms.connect_duration_seconds.observe(time.monotonic() - started)
        self.unseen = 0  # the transport counts what it sends again on this connection
        for url, exc in opened.failed_over:  # collectors that failed before one opened
            self._count(lib.LOGPOOL__CONNECT_FAILURES)
            if isinstance(exc, HandshakeError):
                self._count(lib.LOGPOOL__TLS_HANDSHAKE_FAILURES)
            self.reporter.report("collector failed", f"{url}: {describe(exc)}; using "
                                 f"{self.transport.url} instead")
        if self.transport.resumed:
            self._count(lib.LOGPOOL__TLS_RESUMED)
        self.connected = True
        self._count(lib.LOGPOOL__CONNECTS)
        if self.ever_connected:
            self._count(lib.LOGPOOL__RECONNECTS)
        self.ever_connected = True
        lib.logpool__sink_set_connected(self.c, 1)
        return True

    def _disconnect(self):
        if self.connected:
            # A closing exchange may settle messages (RELP's last acknowledgements).
            self._apply(self.transport.close())
            self.connected = False
            self.lib.logpool__sink_set_connected(self.c, 0)

    def _broken(self, kind, text, retry_after=None):
        """The connection is unusable: close it, rewind to the first message not completely
        written, and schedule a reconnect with backoff (or after the collector's Retry-After,
        capped by max_retry_interval_ms)."""
        if kind is not None:
            self._count(self.lib.LOGPOOL__WRITE_ERRORS)
        url = self.transport.url
        self._note_unseen()
        self._disconnect()
        self.transport.failed()
        self.lib.logpool__sink_rewind(self.c)
        self.failures += 1
        delay = self.backoff.compute(self.failures)
        if retry_after is not None:
            delay = min(max(delay, retry_after), self.backoff.cap_s)
        self.next_attempt = time.monotonic() + delay
        if kind is not None:
            self.reporter.report(f"{kind} failed", f"{url}: {text}; reconnecting in "
                                 f"{delay * 1000:.0f} ms and resending from the first "
                                 f"message not completely written")

    # -- sending --

    def _send_pending(self):
        oldest_ns = self.lib.logpool__sink_batch_oldest_ns(self.c)
        stalled_since = None
        while self.chain.pending() > 0:
            try:
                outcome = self.transport.write()
            except Unsendable as exc:
                size = self.chain.drop_first()
                self._count(self.lib.LOGPOOL__WRITE_ERRORS)
                self.reporter.report("send failed", f"{self.sink.url}: a {size}-byte "
                                     f"{self.transport.UNIT} "
                                     f"is too large for the socket ({exc.strerror}); it was "
                                     f"dropped (dropped_unsendable)")
                continue
            if self._apply(outcome) > 0:  # a whole message got through
                self.failures = 0
            if outcome.progress > 0:
                stalled_since = None
                continue
            stalled_since = self._wait_for_room(stalled_since)
        self.histograms.message_processing_seconds.observe(
            (self.lib.logpool__now_ns() - oldest_ns) / 1e9)

    def _apply(self, outcome):
        """The bookkeeping of one Outcome (logpool/transports/contract.py), in the chain's
        order. Returns how many messages were settled."""
        chain = self.chain
        settled = outcome.settled
        if outcome.wrote_bytes:
            settled += chain.consume(outcome.wrote_bytes)
        fates = outcome.fates
        first_retry = next((i for i, f in enumerate(fates) if f[0] is Fate.RETRY), None)
        if first_retry is not None and any(f[0] is not Fate.RETRY
                                           for f in fates[first_retry + 1:]):
            settled += self._settle_each(fates)  # retry only the items that failed
            fates = ()
        for i, (fate, n, reason) in enumerate(fates):
            if fate is Fate.ACK:
                chain.ack(n)
                settled += n
            elif fate is Fate.REJECT:
                self._reject(n, reason)
                settled += n
            else:  # the rest of the batch (all retries) stays at the head of the list
                chain.count_retried(sum(f[1] for f in fates[i:]))
                break
        for kind, text in outcome.reports:
            self.reporter.report(kind, f"{self.transport.url}: {text}, counted in "
                                 f"dropped_rejected")
        if outcome.progress > 0 and not outcome.wrote_bytes:
            chain.count_write()  # (consume counted the stream's)
        return settled

    def _reject(self, n, reason, messages=None):
        """The first n pending messages (or `messages`, their copies, already released)
        were refused for good: counted per kind of reason, logged once per kind, appended
        to the dead-letter file when there is one."""
        release = messages is None
        if reason:  # a collector's words; JSON can carry a lone surrogate, no UTF-8 can
            reason = reason.encode("utf-8", "replace").decode("utf-8")
        if release and self.dead_letters is not None:
            messages = [bytes(m) for m in self.chain.messages(n, 1 << 62)]
        kind = rejection_kind(reason)
        if kind not in self.rejected_by_kind and len(self.rejected_by_kind) >= MAX_REJECTION_KINDS:
            kind = "other"
        self.rejected_by_kind[kind] = self.rejected_by_kind.get(kind, 0) + n
        where = ""
        if self.dead_letters is not None and messages:
            written = self.dead_letters.append(self.transport.url, reason or "", messages)
            self._count(self.lib.LOGPOOL__DEAD_LETTERS, written)
            where = f", appended to {self.sink.dead_letter_path}"
        if release:  # after the dead letters: flush returns once they are written
            self.chain.reject(n)
        self.reporter.report(f"rejected {kind}", f"{self.transport.url}: the collector "
                             f"refused a batch of {n} message{'s' if n != 1 else ''} for good "
                             f"({reason}); dropped, counted in dropped_rejected{where}")

    def _settle_each(self, fates):
        """A per-item answer with retries among acknowledged or rejected items: settle each
        message by its own fate and put only the retried ones back at the head of the
        pending list (they go again before later messages, after the batch's delivered ones:
        the one reordering, documented). Returns how many were settled."""
        lib = self.lib
        code = {Fate.ACK: lib.LOGPOOL__DONE_SENT, Fate.REJECT: lib.LOGPOOL__DONE_REJECTED,
                Fate.RETRY: lib.LOGPOOL__DONE_REQUEUED}
        codes, rejected, at = bytearray(), [], 0
        for fate, n, reason in fates:
            codes += bytes((code[fate],)) * n
            if fate is Fate.REJECT:
                rejected.append((at, n, reason))
            at += n
        copies = {}
        if rejected and self.dead_letters is not None:
            views = self.chain.messages(at, 1 << 62)
            copies = {first: [bytes(v) for v in views[first:first + n]]
                      for first, n, _ in rejected}
        for first, n, reason in rejected:  # before the release: flush waits for them
            self._reject(n, reason, copies.get(first, ()))
        requeued = lib.logpool__sink_settle_each(self.c, self.ffi.from_buffer(codes), at)
        if requeued < 0:  # no memory for the copy: release the head only, the rest goes again
            first_retry = next(i for i, f in enumerate(fates) if f[0] is Fate.RETRY)
            head = fates[:first_retry]
            for fate, n, reason in head:
                if fate is Fate.ACK:
                    self.chain.ack(n)
                else:
                    self.chain.reject(n)
            self.chain.count_retried(at - sum(n for _, n, _ in head))
            return sum(n for _, n, _ in head)
        self.chain.completed += at - requeued
        self.chain.count_retried(requeued)
        if self.replaying:
            self.replay_reordered = True
        return at - requeued

    def _wait_for_room(self, stalled_since):
        """The peer is not reading: wait for room in slices, watching the stop flag and
        send_timeout_ms. Returns when the stall began."""
        now = time.monotonic()
        if stalled_since is None:
            stalled_since = now
        elif (self.transport.STALLS
              and now - stalled_since >= self.sink.send_timeout_ms / 1000):
            raise TimeoutError(errno.ETIMEDOUT, f"no progress for "
                               f"{self.sink.send_timeout_ms} ms (send_timeout_ms)")
        self._report_drops()
        if self.transport.wait_ready(SLICE_S):
            raise ConnectionResetError(errno.ECONNRESET, "connection reset by peer")
        if self._should_stop():
            raise Stopped()
        return stalled_since
