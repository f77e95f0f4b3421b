"""A sink's writer thread: waits in C (GIL released) for a batch, sends it zero-copy from the
C chunks, reconnects with jittered backoff and resends from the first message that was not
completely written.

Three separate pieces, as in CPython's logging.handlers.SocketHandler and redis-py:
``open_connection`` makes a socket, ``Backoff`` is the retry policy, ``SinkWriter`` is the
loop. ``sock is None`` is the one "disconnected" state.
"""
import errno
import os
import random
import select
import socket
import ssl
import sys
import threading
import time
import traceback

from logpool.metrics import WriterHistograms

# How often a blocked connect/send looks at the stop flag: logpool_close waits for the
# writer to notice, so this bounds how long a close can take after its own timeout.
SLICE_S = 0.05
IOV_BATCH = 64  # chunks per sendmsg; IOV_MAX is 1024
REPORT_INTERVAL_S = 10.0


class Backoff:
    """Exponential backoff with "equal jitter": the delay for the n-th consecutive failure
    is uniform in [d/2, d] where d = min(cap, base * 2**(n-1)), so attempts are never closer
    than half the configured interval and never synchronised across workers."""

    def __init__(self, base_s, cap_s, rand=random.random):
        self.base_s = base_s
        self.cap_s = cap_s
        self.rand = rand

    def compute(self, failures):
        if failures <= 0:
            return 0.0
        d = min(self.cap_s, self.base_s * (2 ** min(failures - 1, 30)))
        return d / 2 + self.rand() * d / 2


class FaultInjector:
    """Test seam at the socket layer (never in log_cdata). Off unless the environment of the
    process names faults in LOGPOOL_TEST_FAULTS (JSON: probability per fault, plus "seed");
    no pool config key can switch it on, and nginx clears the environment of its workers.

    Faults: connect_fail, connect_timeout, write_error (a random partial write, then EPIPE
    or ECONNRESET), eagain, short_write, slow_write (a few ms before the send), exception
    (an unexpected error inside the writer, DESIGN.md trap 8), writer_crash (an error that
    escapes the writer's loop: what a bug in the loop itself would do) and resolve_delay (the
    name resolver answers only after "resolve_delay_s" seconds: a slow DNS server).
    "max_<fault>" caps how often a fault happens."""

    KINDS = ("connect_fail", "connect_timeout", "write_error", "eagain", "short_write",
             "slow_write", "exception", "writer_crash", "resolve_delay")
    SETTINGS = ("seed", "resolve_delay_s")

    def __init__(self, spec, stream_id=0):
        unknown = (set(spec) - set(self.KINDS) - set(self.SETTINGS)
                   - {f"max_{k}" for k in self.KINDS})
        if unknown:
            raise ValueError(f"LOGPOOL_TEST_FAULTS: unknown faults {sorted(unknown)}")
        self.prob = {k: float(spec.get(k, 0)) for k in self.KINDS}
        self.limit = {k: spec.get(f"max_{k}") for k in self.KINDS}
        self.resolve_delay_s = float(spec.get("resolve_delay_s", 5))
        self.rng = random.Random(f"{spec.get('seed', 0)}-{stream_id}")
        self.counts = dict.fromkeys(self.KINDS, 0)

    @classmethod
    def from_environment(cls, stream_id):
        text = os.environ.get("LOGPOOL_TEST_FAULTS")
        if not text:
            return None
        import json
        return cls(json.loads(text), stream_id)

    def hit(self, kind, record=True):
        """Decide whether `kind` happens now; counted at once unless record=False (the
        caller records it with record() once the fault really took effect)."""
        limit = self.limit[kind]
        if limit is not None and self.counts[kind] >= limit:
            return False
        if self.prob[kind] and self.rng.random() < self.prob[kind]:
            if record:
                self.record(kind)
            return True
        return False

    def record(self, kind):
        self.counts[kind] += 1


class Stopped(Exception):
    """logpool_close gave up waiting: leave now."""


class TlsHandshakeError(OSError):
    """The TLS handshake failed (certificate refused, protocol mismatch): counted apart."""


class InjectedCrash(BaseException):
    """FaultInjector's writer_crash: escapes every `except Exception` of the loop."""


def _addresses(sink, deadline, should_stop, faults=None):
    """[(family, sockaddr)] of the sink, resolved within the connect deadline. getaddrinfo
    cannot be interrupted: it runs in a helper thread that is left behind (it ends on its
    own) when the deadline passes or the pool closes."""
    if sink.scheme in ("unix", "unixgram"):
        return [(socket.AF_UNIX, sink.address)]
    host, port = sink.address
    delay = faults.resolve_delay_s if faults is not None and faults.hit("resolve_delay") else 0
    done = threading.Event()
    answer = {}

    def resolve():
        try:
            if delay:
                time.sleep(delay)  # the injected slow resolver
            answer["infos"] = socket.getaddrinfo(host, port, type=sink.socket_type)
        except UnicodeError as exc:  # a name IDNA cannot encode
            answer["error"] = OSError(errno.EINVAL, f"bad host name {host!r}: {exc}")
        except OSError as exc:
            answer["error"] = OSError(exc.errno or errno.EHOSTUNREACH,
                                      f"cannot resolve {host!r}: {_describe(exc)}")
        finally:
            done.set()

    threading.Thread(target=resolve, name="logpool-resolve", daemon=True).start()
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


def _wait_io(sock, events, deadline, should_stop, what):
    """Poll in slices until sock is ready, stop is requested or the deadline passes."""
    poller = select.poll()
    poller.register(sock, events)
    while not poller.poll(SLICE_S * 1000):
        if should_stop():
            raise Stopped()
        if time.monotonic() >= deadline:
            raise TimeoutError(errno.ETIMEDOUT, f"{what} timed out")


def open_connection(sink, should_stop, tls_session=None, faults=None):
    """Resolve, connect (and for tls://, handshake) within connect_timeout_ms; non-blocking
    socket on success. Names are resolved here, in the writer, never on the hot path."""
    deadline = time.monotonic() + sink.connect_timeout_ms / 1000
    last_error = None
    for family, address in _addresses(sink, deadline, should_stop, faults):
        sock = socket.socket(family, sink.socket_type)
        try:
            sock.setblocking(False)
            if family == socket.AF_UNIX and sink.datagram:
                # A unix datagram larger than the send buffer fails with EMSGSIZE.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2 * sink.max_message_size)
            rc = sock.connect_ex(address)
            if rc in (errno.EINPROGRESS, errno.EALREADY):
                _wait_io(sock, select.POLLOUT, deadline, should_stop,
                         f"connect (connect_timeout_ms {sink.connect_timeout_ms})")
                rc = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if rc != 0:
                raise OSError(rc, os.strerror(rc))
            if not sink.datagram and family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if sink.tls is not None:
                return tls_handshake(sock, sink, tls_session, deadline, should_stop)
            return sock
        except TlsHandshakeError:
            raise  # the next address would present the same certificate
        except Stopped:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            last_error = exc
    raise last_error


# In TLS 1.3 the server checks a client certificate after the client's handshake is done,
# and sends session tickets then: wait this long for that first record, so that a refusal is
# a handshake failure (not a batch written into a dead connection) and the ticket is kept.
TLS13_FIRST_RECORD_S = 0.25


def tls_handshake(sock, sink, session, deadline, should_stop):
    tls = sink.tls
    ssock = tls.context.wrap_socket(sock, server_hostname=tls.server_name,
                                    do_handshake_on_connect=False, session=session)
    what = f"TLS handshake (connect_timeout_ms {sink.connect_timeout_ms})"
    try:
        while True:
            try:
                ssock.do_handshake()
                break
            except ssl.SSLWantReadError:
                _wait_io(ssock, select.POLLIN, deadline, should_stop, what)
            except ssl.SSLWantWriteError:
                _wait_io(ssock, select.POLLOUT, deadline, should_stop, what)
        if ssock.version() == "TLSv1.3":
            first = min(deadline, time.monotonic() + TLS13_FIRST_RECORD_S)
            try:
                while (data := _tls_read_nonblocking(ssock)) is None and not (
                        ssock.session is not None and ssock.session.has_ticket):
                    _wait_io(ssock, select.POLLIN, first, should_stop, what)
            except TimeoutError:
                data = None  # a server that sends no tickets: nothing to wait for
            if data == b"":
                raise ConnectionResetError(errno.ECONNRESET, "closed after the handshake")
        return ssock
    except ssl.SSLError as exc:
        ssock.close()
        raise TlsHandshakeError(errno.EPROTO, _describe_tls(exc, sink)) from None
    except ConnectionError as exc:
        ssock.close()
        raise TlsHandshakeError(exc.errno, f"TLS handshake failed: the server closed the "
                                f"connection ({_describe(exc)}); does it speak TLS, and does "
                                f"it want a client certificate (cert_file)?") from None
    except BaseException:
        ssock.close()
        raise


def _tls_read_nonblocking(ssock):
    """Process what the server sent (tickets, alerts). None: nothing yet; b"": closed."""
    try:
        return ssock.recv(4096)
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
        return None


def _describe_tls(exc, sink):
    tls = sink.tls
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message or exc.reason or str(exc)
        where = f"CA file {tls.ca_file}" if tls.ca_file else "the system CA bundle"
        return (f"TLS handshake failed: server certificate refused: {why} (server_name "
                f"{tls.server_name!r}, trusted CAs from {where})")
    reason = (exc.reason or str(exc)).replace("_", " ").lower()
    hint = ""
    if "wrong version number" in reason or "record layer failure" in reason:
        hint = " (is the server speaking TLS on this port?)"
    elif "certificate required" in reason:
        hint = " (the server wants a client certificate: set cert_file and key_file)"
    elif "alert" in reason and ("certificate" in reason or "unknown ca" in reason):
        hint = " (the server refused our client certificate: see cert_file, key_file)"
    return f"TLS handshake failed: {reason}{hint}"


def _describe(exc):
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM):
        return f"{exc.strerror or exc} (running as uid {os.geteuid()})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class ErrorReporter:
    """First error of each kind per sink goes to stderr (nginx's error log); repeats are
    rate-limited to one line per interval with a count."""

    def __init__(self, label, interval_s=REPORT_INTERVAL_S, stream=None, clock=time.monotonic):
        self.label = label
        self.interval_s = interval_s
        self.stream = stream
        self.clock = clock
        self.last = {}  # kind -> (time reported, suppressed since)
        self.last_error = ""

    def report(self, kind, text):
        self.last_error = f"{kind}: {text}"
        now = self.clock()
        seen = self.last.get(kind)
        if seen is not None and now - seen[0] < self.interval_s:
            self.last[kind] = (seen[0], seen[1] + 1)
            return
        more = f" ({seen[1]} more in the last {self.interval_s:.0f} s)" if seen and seen[1] else ""
        self.last[kind] = (now, 0)
        self.emit(f"{kind}: {text}{more}")

    def emit(self, text):
        """One line in the shape of nginx's own error log lines: it is where stderr ends up."""
        stream = self.stream or sys.stderr
        try:
            stamp = time.strftime("%Y/%m/%d %H:%M:%S")
            stream.write(f"{stamp} [error] {os.getpid()}#{threading.get_native_id()}: "
                         f"logpool: sink {self.label}: {text}\n")
            stream.flush()
        except (OSError, ValueError):
            pass


class SinkWriter(threading.Thread):
    def __init__(self, ffi, lib, csink, sink):
        super().__init__(name=f"logpool-writer-{sink.index}", daemon=True)
        self.ffi = ffi
        self.lib = lib
        self.c = csink
        self.sink = sink
        self.sock = None
        self.failures = 0
        self.ever_connected = False
        self.next_attempt = 0.0
        self.backoff = Backoff(sink.retry_interval_ms / 1000, sink.max_retry_interval_ms / 1000)
        self.iov = ffi.new("logpool__iov_t[]", IOV_BATCH)
        self.reporter = ErrorReporter(f"{sink.index} ({sink.name})")
        self.poller = None
        self.faults = FaultInjector.from_environment(f"{sink.index}-{sink.url}")
        self.tls_session = None  # reused on reconnect (TLS session resumption)
        self.histograms = WriterHistograms()

    # -- lifecycle --

    def run(self):
        try:
            if self.sink.tls is not None and not self.sink.tls.verify:
                self.reporter.emit(f"{self.sink.url}: TLS certificate verification is off "
                                   f"(verify = false): the collector's identity is not checked")
            self._supervise()
        finally:
            self._disconnect()
            self._report_drops(final=True)
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
                    self.lib.logpool__sink_count(self.c, self.lib.LOGPOOL__WRITER_ERRORS, 1)
                    self._disconnect()
                    self.lib.logpool__sink_rewind(self.c)
                    delay = self.backoff.compute(crashes)
                    self.reporter.report("writer restarted", f"{type(exc).__name__}: {exc} "
                                         f"escaped the writer loop; restarting it in "
                                         f"{delay * 1000:.0f} ms (crash {crashes}); buffered "
                                         f"messages are kept")
                    if (self.lib.logpool__sink_wait(self.c, self.lib.LOGPOOL__WAIT_FOR_STOP,
                                                    max(1, int(delay * 1000)))
                            == self.lib.LOGPOOL__WAIT_STOP):
                        return
                except BaseException:  # noqa: B036 — the supervisor itself must not die
                    pass

    _drops_reported = (0, 0, 0, 0, 0)
    _drops_reported_at = -REPORT_INTERVAL_S

    def _report_drops(self, final=False):
        """Drops happen in C, where nothing may be printed: the writer summarises them, at
        most once per REPORT_INTERVAL_S, and abandonment when it leaves."""
        now = time.monotonic()
        if not final and now - self._drops_reported_at < REPORT_INTERVAL_S:
            return
        st = self.ffi.new("logpool_stats_t *")
        self.lib.logpool__sink_stats(self.c, st)
        # At exit, what is still unsent is about to be abandoned by writer_exit.
        abandoned = st.abandoned_messages + (
            st.accepted_messages - st.sent_messages - st.dropped_unsendable if final else 0)
        current = (st.dropped_full, st.dropped_too_big, st.dropped_closed, abandoned,
                   st.dropped_unsendable)
        delta = [a - b for a, b in zip(current, self._drops_reported)]
        if not any(delta):
            return
        self._drops_reported, self._drops_reported_at = current, now
        parts = []
        if delta[0]:
            parts.append(f"{delta[0]} refused: buffer full at max_buffer_length "
                         f"{self.sink.max_buffer_length} bytes (the sink is not keeping up)")
        if delta[1]:
            parts.append(f"{delta[1]} refused: larger than max_message_size "
                         f"{self.sink.max_message_size}")
        if delta[2]:
            parts.append(f"{delta[2]} refused: pool closed")
        if delta[3]:
            parts.append(f"{delta[3]} accepted messages abandoned at close")
        if delta[4]:
            parts.append(f"{delta[4]} accepted, then refused by the socket for good")
        self.reporter.emit(f"messages lost: {'; '.join(parts)}; counted in "
                           f"logpool_dropped_messages_total and "
                           f"logpool_abandoned_messages_total")

    def _should_stop(self):
        lib = self.lib
        return lib.logpool__sink_wait(self.c, lib.LOGPOOL__WAIT_FOR_STOP, 0) == lib.LOGPOOL__WAIT_STOP

    def _loop(self):
        lib = self.lib
        while True:
            try:
                if self.sock is None:
                    if not self._connect_when_due():
                        return
                    continue
                if lib.logpool__sink_pending(self.c) == 0:
                    waited = time.monotonic()
                    r = lib.logpool__sink_wait(self.c, lib.LOGPOOL__WAIT_FOR_BATCH, -1)
                    if r == lib.LOGPOOL__WAIT_STOP:
                        return
                    if r != lib.LOGPOOL__WAIT_READY:
                        continue
                    self.histograms.buffer_await_seconds.observe(time.monotonic() - waited)
                    self.histograms.batch_bytes.observe(lib.logpool__sink_take(self.c))
                    if self._peer_closed():
                        self._broken("write", "the peer closed the connection")
                        continue
                if self.faults is not None and self.faults.hit("writer_crash"):
                    raise InjectedCrash("injected: the writer loop crashed")
                self._send_pending()
            except Stopped:
                return
            except OSError as exc:
                self._broken("write", _describe(exc))
            except Exception as exc:  # noqa: BLE001 — a writer never dies silently (trap 8)
                lib.logpool__sink_count(self.c, lib.LOGPOOL__WRITER_ERRORS, 1)
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
            wait_ms = max(1, int((self.next_attempt - now) * 1000))
            return (self.lib.logpool__sink_wait(self.c, self.lib.LOGPOOL__WAIT_FOR_STOP, wait_ms)
                    != self.lib.LOGPOOL__WAIT_STOP)
        started = time.monotonic()
        try:
            if self.faults is not None:
                if self.faults.hit("connect_fail"):
                    raise ConnectionRefusedError(errno.ECONNREFUSED, "injected: refused")
                if self.faults.hit("connect_timeout"):
                    raise TimeoutError(errno.ETIMEDOUT, "injected: connect timed out")
            sock = open_connection(self.sink, self._should_stop, self.tls_session, self.faults)
        except Stopped:
            return False
        except OSError as exc:
            self.histograms.connect_duration_seconds.observe(time.monotonic() - started)
            self.failures += 1
            self.lib.logpool__sink_count(self.c, self.lib.LOGPOOL__CONNECT_FAILURES, 1)
            if isinstance(exc, TlsHandshakeError):
                self.lib.logpool__sink_count(self.c, self.lib.LOGPOOL__TLS_HANDSHAKE_FAILURES, 1)
            delay = self.backoff.compute(self.failures)
            self.next_attempt = time.monotonic() + delay
            self.reporter.report("connect failed", f"{self.sink.url}: {_describe(exc)}; "
                                 f"retrying in {delay * 1000:.0f} ms")
            return True
        self.histograms.connect_duration_seconds.observe(time.monotonic() - started)
        if isinstance(sock, ssl.SSLSocket):
            if sock.session_reused:
                self.lib.logpool__sink_count(self.c, self.lib.LOGPOOL__TLS_RESUMED, 1)
            self.tls_session = sock.session
        self.sock = sock
        self.poller = select.poll()
        self.poller.register(sock, select.POLLOUT)
        self.lib.logpool__sink_count(self.c, self.lib.LOGPOOL__CONNECTS, 1)
        if self.ever_connected:
            self.lib.logpool__sink_count(self.c, self.lib.LOGPOOL__RECONNECTS, 1)
        self.ever_connected = True
        self.lib.logpool__sink_set_connected(self.c, 1)
        return True

    def _disconnect(self):
        if self.sock is not None:
            if isinstance(self.sock, ssl.SSLSocket):
                if self.sock.session is not None:
                    self.tls_session = self.sock.session  # with the tickets that came since
                try:  # close_notify, so the collector sees a clean end, not a truncation
                    self.sock.unwrap()
                except (OSError, ValueError):
                    pass  # sent, or the connection is already gone: nothing to wait for
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None
            self.poller = None
            self.lib.logpool__sink_set_connected(self.c, 0)

    def _broken(self, kind, text):
        """The connection is unusable: close it, rewind to the first message not completely
        written, and schedule a reconnect with backoff."""
        if kind is not None:
            self.lib.logpool__sink_count(self.c, self.lib.LOGPOOL__WRITE_ERRORS, 1)
        self._disconnect()
        self.lib.logpool__sink_rewind(self.c)
        self.failures += 1
        delay = self.backoff.compute(self.failures)
        self.next_attempt = time.monotonic() + delay
        if kind is not None:
            self.reporter.report(f"{kind} failed", f"{self.sink.url}: {text}; reconnecting in "
                                 f"{delay * 1000:.0f} ms and resending from the first "
                                 f"message not completely written")

    def _peer_closed(self):
        """A collector never talks back: readable means EOF or reset. Checked before a batch
        so that a peer that went away while we were idle does not swallow it."""
        if self.sink.datagram:
            return False  # nothing to lose: a send error says the same
        if isinstance(self.sock, ssl.SSLSocket):
            # Reading also takes in TLS session tickets and alerts.
            try:
                while (data := _tls_read_nonblocking(self.sock)) is not None:
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

    # -- sending --

    def _send_pending(self):
        oldest_ns = self.lib.logpool__sink_batch_oldest_ns(self.c)
        if self.sink.datagram:
            self._send_datagrams()
        else:
            self._send_stream()
        self.histograms.message_processing_seconds.observe(
            (self.lib.logpool__now_ns() - oldest_ns) / 1e9)

    def _send_stream(self):
        lib, ffi, c = self.lib, self.ffi, self.c
        stalled_since = None
        while lib.logpool__sink_pending(c) > 0:
            n = lib.logpool__sink_iov(c, self.iov, IOV_BATCH)
            views = [ffi.buffer(self.iov[i].base, self.iov[i].len) for i in range(n)]
            try:
                written = self._send_views(views)
            except (BlockingIOError, InterruptedError):
                written = 0
            if written > 0:
                lib.logpool__sink_count(c, lib.LOGPOOL__WRITES, 1)
                if lib.logpool__sink_consume(c, written) > 0:
                    self.failures = 0
                stalled_since = None
                continue
            stalled_since = self._wait_for_room(stalled_since)

    def _send_views(self, views):
        if isinstance(self.sock, ssl.SSLSocket):
            # No sendmsg over TLS: one chunk per call; a retry after "want write" passes
            # the same bytes again, as OpenSSL requires (pending chunks never change).
            try:
                return self.sock.send(views[0])
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                raise BlockingIOError(errno.EAGAIN, "TLS: would block") from None
        if self.faults is not None:
            return self._faulty_send(views)
        return self.sock.sendmsg(views, (), socket.MSG_NOSIGNAL)

    def _send_datagrams(self):
        """One datagram per message, never two messages in one; sendmmsg in C, in batches."""
        lib, c = self.lib, self.c
        stalled_since = None
        fd = self.sock.fileno()
        while lib.logpool__sink_pending(c) > 0:
            sent = lib.logpool__sink_send_datagrams(c, fd, IOV_BATCH)  # counts the write
            if sent > 0:
                self.failures = 0
                stalled_since = None
                continue
            err = -sent
            if err in (errno.EAGAIN, errno.ENOBUFS, errno.EINTR):
                stalled_since = self._wait_for_room(stalled_since)
                continue
            if err != errno.EMSGSIZE:  # ECONNREFUSED and the like: reconnect, resend it
                raise OSError(err, os.strerror(err))
            size = lib.logpool__sink_drop_message(c)
            lib.logpool__sink_count(c, lib.LOGPOOL__WRITE_ERRORS, 1)
            self.reporter.report("send failed", f"{self.sink.url}: a {size}-byte datagram is "
                                 f"too large for the socket ({os.strerror(err)}); it was "
                                 f"dropped (dropped_unsendable)")

    def _wait_for_room(self, stalled_since):
        """The peer is not reading: wait for room in slices, watching the stop flag and
        send_timeout_ms. Returns when the stall began."""
        now = time.monotonic()
        if stalled_since is None:
            stalled_since = now
        elif now - stalled_since >= self.sink.send_timeout_ms / 1000:
            raise TimeoutError(errno.ETIMEDOUT, f"no progress for "
                               f"{self.sink.send_timeout_ms} ms (send_timeout_ms)")
        self._report_drops()
        events = self.poller.poll(SLICE_S * 1000)
        if events and events[0][1] & (select.POLLERR | select.POLLHUP):
            raise ConnectionResetError(errno.ECONNRESET, "connection reset by peer")
        if self._should_stop():
            raise Stopped()
        return stalled_since

    def _faulty_send(self, views):
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
            self.lib.logpool__sink_count(self.c, self.lib.LOGPOOL__WRITES, 1)
            self.lib.logpool__sink_consume(self.c, written)
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
