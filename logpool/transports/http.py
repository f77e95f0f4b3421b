"""http://host[:port]/path and https://host[:port]/path: batches of messages as HTTP request
bodies, in the body format of ``http_format`` (logpool/transports/formats: ndjson,
json_array and the backends' own), optionally gzip or zstd, one request in flight per sink on
one kept-alive connection.

What an answer means (every format; a format's answer reader, Encoder.interpret, may say it
otherwise, e.g. per item, and gives back the contract's Outcome itself: answers are
translated once):

- 1xx interim responses (100 Continue, 103 Early Hints) are skipped: the final answer follows;
- 2xx acknowledges the request's messages (sent_messages);
- 3xx, 401, 403, 404: the configuration is wrong, not the data: kept, logged (rate-limited:
  once, not per retry), retried on the backoff schedule;
- 408, 429, 5xx: retried after backoff, honouring Retry-After (capped by
  max_retry_interval_ms);
- 413: the request is sent again as two halves; a single message answered 413 is refused
  for good (dropped_rejected);
- any other 4xx, and a format's refusal that names no record (ClickHouse's parse errors, a
  400 without per-item detail): narrowed down. The request is split (as 413 halves, or
  around the record the answer names) until the refused record is alone; that record is
  rejected with the collector's answer only when it is refused alone between two successes
  (a part just before and the next request went through; otherwise it is tried again after
  the next part, the next pending messages, or a probe: the format's request without data;
  when only a probe follows and the collector refuses it too, the success before stands). The good
  records are delivered once each. Bound: a refused record costs at most about
  2*log2(batch)+2 requests. An outage is never turned into rejections: connect errors and
  "later" answers keep the request as it is, and after 2*log2(batch)+4 refusals in a row
  with no success in between the batch is held and tried on the retry schedule;
- an answer the transport does not understand (a garbage status line, oversized status line
  or headers, a body it cannot parse where it needs one) is an error that keeps the data:
  logged, the connection closed, the request sent again. It is never a drop.

A batch is released from its head as its fates become known: a prefix delivered or rejected
for good is released at once, the rest when every part is answered. Per-item retries (an
Elasticsearch item answered 429, HEC's events after a refused one) are handed to the engine
as Fate.RETRY, those messages alone; the next request waits one backoff step.

Counters: messages sent again after an answer never seen (a broken connection, a timeout,
an answer not understood) are counted in resent_messages (the collector may have stored
them); sent again after a definite refusal or "later" (a retry, a narrowing split, a
per-item retry) in retried_messages (nothing was stored).

Every wait on the collector has a deadline: a request and its whole answer take at most
send_timeout_ms (not per read: a collector trickling one byte at a time cannot hold the
writer), and the pool's stop flag ends any wait within base.SLICE_S. Every size the collector
announces is bounded: status line and each header line 8 KiB, 100 headers, 64 KiB of headers,
at most 10 interim responses, and a body is read up to a small limit per format (64 KiB by
default): the rest is not read, the connection is closed instead.

http_max_body_bytes bounds the request body as it goes on the wire: framing (brackets,
commas, newlines, the backend's envelope) and compression included. The messages of one
request also total at most http_max_body_bytes before encoding. A single message that does
not fit once encoded can never be sent: it is dropped (dropped_unsendable), logged.

Retried requests are byte-identical (a request is frozen once encoded, the fallback record
time and ClickHouse's token too): deduplicating backends (ClickHouse's token, Elasticsearch's
_id) see the same request.

The HTTP/1.1 framing is our own small reader (http_exchange.py: http.client can be neither
bounded nor interrupted by the stop flag).
"""
import errno
import time
import zlib
from collections import deque

from logpool.errors import ConfigError
from logpool.transports.address import HTTP
from logpool.transports.base import (SLICE_S, Fate, Outcome, ProtocolError, RetryLater,
                                    Stopped, Transport, Unsendable)
from logpool.transports.formats import FORMATS, all_options as format_options
from logpool.transports.formats import owner as format_owner
from logpool.transports.formats.common import (RESPONSE_LIMIT, Misconfigured, Refused,
                                               SendAgain, Unconfirmed, body_text)
from logpool.transports.http_exchange import Exchange, HttpProtocolError
from logpool.transports.schema import Option, all_of, choice, http_headers, int_range, needs

COMPRESSIONS = ("none", "gzip", "zstd")
METHODS = ("POST", "PUT")
RETRY_STATUSES = (408, 429)
ACKED = (Fate.ACK, None)
KEEP_STATUSES = (401, 403, 404)  # and 3xx: the configuration, not the data
# Headers logpool sets itself: a user value would contradict the body.
RESERVED_HEADERS = ("content-length", "content-encoding", "content-type", "transfer-encoding",
                    "host", "connection")

# Bounds of what the collector may send.
MAX_BATCH = 4096  # messages per request


class HttpRetry(RetryLater):
    """The collector asked for the batch again later (408, 429, 5xx, HEC code 9)."""

    def __init__(self, status, text, retry_after=None):
        super().__init__(text, retry_after)
        self.status = status


class HttpKept(OSError):
    """An answer that says the configuration is wrong (3xx, 401, 403, 404), or a batch held
    while the collector refuses everything alike: the data is kept and sent again on the
    backoff schedule."""


# The HTTP keys, then every format's (<format>_<field>): one tuple, shared by http and https.
HTTP_OPTIONS = (
    Option("http_format", "string", "ndjson", "the request body: ndjson, json_array, or a "
           "backend's API: elasticsearch, loki, otlp, otlp_json, splunk_hec, clickhouse, "
           "datadog", all_of(choice(*FORMATS), needs({
               cls.NAME: cls.NEEDS for cls in FORMATS.values() if getattr(cls, "NEEDS", None)}))),
    Option("http_headers", "object", {}, "extra request headers (tokens, API keys, tenants); "
           "values Latin-1 without control characters",
           http_headers(RESERVED_HEADERS, "set by logpool from http_format and "
                                          "http_compression")),
    Option("http_compression", "string", "none", "none, gzip or zstd", all_of(
        choice(*COMPRESSIONS), needs({"zstd": ("zstandard", "the zstandard package (pip "
                                                "install zstandard)")}))),
    Option("http_method", "string", "POST", "POST or PUT", choice(*METHODS)),
    Option("http_max_body_bytes", "integer", 1024 * 1024, "the largest request body on the "
           "wire (framing and compression included)", int_range(1024, 2**31 - 1)),
) + tuple(format_options().values())


def retry_after_seconds(value, now=None):
    """Retry-After: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    import email.utils
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def generic_answer(response, count, why=""):
    """The HTTP rules every format shares (the module doc), as the contract's Outcome or one
    of the answer vocabulary's exceptions (logpool/transports/formats/common.py). 413 is the
    transport's own (halving) and never reaches here."""
    status = response.status
    why = why or (f"HTTP {status} {response.reason[:60]!r}: {body_text(response)!r}")
    if 200 <= status < 300:
        return Outcome.acked(count)
    if 300 <= status < 400 or status in KEEP_STATUSES:
        raise Misconfigured(f"{why}; the data is kept (check the URL and credentials)")
    if status in RETRY_STATUSES or 500 <= status < 600:
        raise HttpRetry(status, why, retry_after_seconds(response.headers.get("retry-after")))
    if 400 <= status < 500:
        raise Refused(why)
    raise HttpProtocolError(f"an HTTP status not understood: {why}")


# -- the transport ------------------------------------------------------------------------------

class Part:
    """One request of a batch: the messages at positions [start, stop) of the batch (an
    empty part is a probe: a request without data) and, once encoded, its frozen request
    (sent again as the same bytes, token included)."""

    __slots__ = ("start", "stop", "request", "body", "again", "suspect", "verdict",
                 "send_again")

    def __init__(self, start, stop, again=None):
        self.start, self.stop = start, stop
        self.request = self.body = None
        self.again = again  # how its next send is counted: "retried", "resent" or None
        self.suspect = False  # refused alone with no success just before: tested again
        self.verdict = None  # refused alone right after a success: why, if the next succeeds
        self.send_again = 0  # SendAgain answers taken for it (bounded)

    def __len__(self):
        return self.stop - self.start


class Batch:
    """The first len(fates) pending messages while their fates are decided: one fate per
    message ((Fate, reason), None while open) and the parts still to send, the first next."""

    __slots__ = ("fates", "parts", "judged", "refusals", "bound", "now_ns")

    def __init__(self, size, now_ns):
        self.now_ns = now_ns  # the fallback record time of every part
        self.fates = [None] * size
        self.parts = deque([Part(0, size)])
        self.judged = []  # records refused alone between two successes, once the next is
        # Refusals in a row without a success in between: beyond `bound` the collector is
        # refusing everything alike (an outage, not a record): hold on the retry schedule.
        self.refusals = 0
        self.bound = 2 * max(1, size - 1).bit_length() + 4

    def shift(self, n):
        """The first n messages were released: positions move down."""
        del self.fates[:n]
        for part in (*self.parts, *self.judged):
            part.start = max(0, part.start - n)
            part.stop = max(0, part.stop - n)


class HttpTransport(Transport):
    SCHEMES = ("http", "https")
    ADDRESS = {"http": HTTP, "https": HTTP}
    TLS_SCHEMES = frozenset(("https",))
    OPTIONS = HTTP_OPTIONS

    RAW_FRAMING_ONLY = ("an HTTP sink frames messages by http_format (ndjson, json_array "
                        "or a backend's format)")

    @classmethod
    def check_sink(cls, where, sink, given, values, opts, framing):
        super().check_sink(where, sink, given, values, opts, framing)
        fmt = given.get("http_format")  # (a pool-wide one counts as the sink's)
        for key in given:
            owner = format_owner(key)
            if owner is not None and fmt is not None and not (
                    owner == fmt or fmt.startswith(owner + "_")):
                raise ConfigError(f"{where}.{key}: a key of http_format {owner!r}, and this "
                                  f"sink's http_format is {fmt!r}")
        limit = values["http_max_body_bytes"]
        if opts["max_message_size"] > limit:
            if "max_message_size" in sink:
                raise ConfigError(f"{where}.max_message_size: {opts['max_message_size']} is "
                                  f"larger than http_max_body_bytes {limit}")
            opts["max_message_size"] = limit

    @classmethod
    def parse_options(cls, where, scheme, address, values):
        parsed = super().parse_options(where, scheme, address, values)  # the TLS block
        parsed.format_options = {name: values[name] for name in format_options()}
        return parsed

    def __init__(self, sink, chain, faults=None):
        super().__init__(sink, chain, faults)
        self.conn = self.connection()
        self.options = sink.transport_options
        self.encoder = FORMATS[self.options.http_format](
            self.options.format_options, self.address[2])
        self.extra_headers = dict(self.options.http_headers)
        if self.options.http_compression != "none":
            self.extra_headers["Content-Encoding"] = self.options.http_compression
        self.compress = {"none": None, "gzip": _gzip, "zstd": _zstd()}[
            self.options.http_compression]
        self.limit = self.options.http_max_body_bytes
        self.batch = None  # the batch whose fates are being decided (kept across sessions)
        self.backoff_first = None  # why: per-item retries asked for; back off before sending
        self.count_cap = None  # after a 413: at most this many messages per request
        self.last_ok = False  # the collector's last answer was a success (a witness)
        self.learned = None  # the collector whose probe answer the encoder has
        self._should_stop = lambda: False
        self.reusable = False

    @property
    def inflight(self):
        """Messages held by an undecided batch: the engine does not spool them meanwhile."""
        return len(self.batch.fates) if self.batch is not None else 0

    # -- connection --

    def connect(self, should_stop):
        self._should_stop = should_stop
        opened = self.conn.open(should_stop)
        self.reusable = True
        self.encoder.url = self.url
        if self.learned != self.url:
            self._probe()
        return opened

    def failed(self):
        super().failed()
        self.last_ok = False  # a new session, maybe another collector: no witness yet
        self.learned = None

    def _probe(self):
        """The format's probe (ClickHouse: its version), once per session; an answer that is
        not a success leaves the format guessing (it then learns from refusals)."""
        request = self.encoder.probe()
        if request is None:
            return
        exchange = self._exchange()
        head = self._head(request, b"", "GET")
        exchange.send_all(head)
        response = exchange.read_response(RESPONSE_LIMIT)
        self.reusable = exchange.reusable and not exchange.closed
        self.encoder.learn(self.url, response)
        self.learned = self.url
        if not self.reusable:
            self.conn.close()
            self.conn.open(self._should_stop)
            self.reusable = True

    def peer_closed(self):
        return False  # an idle keep-alive connection the server closed is reopened in write

    def _reopen_if_closed(self):
        """Servers close idle keep-alive connections (and some close after every response):
        that is not an error, just open a new one."""
        if self.sock is None or not self.reusable or self.conn.peer_closed():
            self.close()
            self.connect(self._should_stop)

    # -- a request --

    def _max_count(self):
        return min(c for c in (self.encoder.MAX_MESSAGES, self.count_cap, MAX_BATCH)
                   if c is not None)

    def _fit(self, skip, max_count, now_ns):
        """(count, request, body) of the pending messages after the first `skip`: as many
        as fit in http_max_body_bytes once encoded (count 0: none pending; None for the
        request: a single message that does not fit)."""
        views = self.chain.messages(max_count, self.limit, skip) if max_count > 0 else []
        count = len(views)
        while count:
            request = self.encoder.encode(views[:count], now_ns)
            body = self.compress(request.body) if self.compress else request.body
            if len(body) <= self.limit:
                return count, request, body
            if count == 1:
                return 1, None, body
            count = max(1, min(count - 1, count * self.limit // len(body) - 1))
        return 0, None, None

    def _new_batch(self):
        """A batch of the first pending messages, as many as fit in http_max_body_bytes
        once encoded (its first part encoded), or None."""
        now_ns = time.time_ns()
        count, request, body = self._fit(0, self._max_count(), now_ns)
        if not count:
            return None
        if request is None:
            raise Unsendable(errno.EMSGSIZE, f"{len(body)} bytes once encoded, more than "
                             f"http_max_body_bytes {self.limit}")
        batch = Batch(count, now_ns)
        batch.parts[0].request, batch.parts[0].body = request, body
        return batch

    def _extend(self, batch):
        """A part of the pending messages after the batch, added to it (a witness for a
        record refused alone), or None when there are none that fit."""
        size = len(batch.fates)
        count, request, body = self._fit(size, min(self._max_count(), MAX_BATCH - size),
                                         batch.now_ns)
        if request is None:
            return None
        batch.fates += [None] * count
        part = Part(size, size + count)
        part.request, part.body = request, body
        return part

    def _encode(self, part, batch):
        """The part's request, encoded once (a probe: the format's empty request), with
        the batch's fallback record time."""
        if part.request is None:
            views = self.chain.messages(len(part), 1 << 62, part.start) if len(part) else []
            request = self.encoder.encode(views, batch.now_ns)
            part.request = request
            part.body = self.compress(request.body) if self.compress else request.body
        return self.encoder.finish(part.request), part.body

    def _head(self, request, body, method=None):
        host, port, _ = self.address
        default_port = 443 if self.sink.scheme == "https" else 80
        host_header = (f"[{host}]" if ":" in host else host) + (
            "" if port == default_port else f":{port}")
        headers = {"Host": host_header, **request.headers, **self.extra_headers,
                   "Content-Length": str(len(body))}
        if method == "GET":
            headers = {k: v for k, v in headers.items() if k not in (
                "Content-Encoding", "Content-Type")}
        lines = [f"{method or self.options.http_method} {request.path} HTTP/1.1"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _exchange(self):
        return Exchange(self.sock, time.monotonic() + self.sink.send_timeout_ms / 1000,
                        self._should_stop, f"HTTP {self.url}")

    def write(self):
        if self.backoff_first is not None:  # per-item retries: back off before sending
            why, self.backoff_first = self.backoff_first, None
            raise HttpRetry(None, why)
        while True:
            self._reopen_if_closed()
            if self.batch is None:
                self.batch = self._new_batch()
                if self.batch is None:
                    return Outcome.NOTHING
            released = self._release()
            if released is not None:
                return released
            batch = self.batch
            if not batch.parts:  # only records refused alone after a success are left
                self._confirm_judged(batch)  # (no request could follow them)
                continue
            part = batch.parts[0]
            request, body = self._encode(part, batch)
            count = len(part)
            if count and len(request.rejected) == count:  # the encoder left them all out
                self._decide(batch, part, [(Fate.REJECT, why) for _, why in request.rejected])
                continue
            if part.again == "resent":
                self.chain.count_resent(count)
            elif part.again == "retried":
                self.chain.count_retried(count)
            part.again = "resent"  # until an answer is read: it may have been stored
            self.chain.set_unacked(count)
            exchange = self._exchange()
            try:
                exchange.send_all(self._head(request, body) + body)
                response = exchange.read_response(self.encoder.response_limit(count))
            except HttpProtocolError as exc:
                self.reusable = False
                raise HttpProtocolError(f"an answer not understood ({exc.strerror}); the "
                                        f"{count} messages are kept and sent again") from None
            self.reusable = exchange.reusable and not exchange.closed
            self.chain.set_unacked(0)
            part.again = "retried"  # an answer was read: if it goes again, nothing is stored
            self._answer(batch, part, request, response)

    def _answer(self, batch, part, request, response):
        """Decide the part's messages by the answer (in the batch), or raise to send it
        again later. The first part of the batch is the one answered."""
        count = len(part) - len(request.rejected)  # the messages the body carries
        if response.status == 413:  # HTTP's own: too large, whatever the format
            why = self.encoder.describe(response)
            if count > 1:
                self.count_cap = max(1, count // 2)
                self._split(batch, part, None)
            elif count == 1:
                self._decide(batch, part, per_message_fates(with_rejections(
                    Outcome.rejected(1, f"HTTP 413 for a single message: {why}"),
                    request.rejected)))
            else:
                batch.parts.popleft()  # a probe too large: no witness from it
            return
        try:
            outcome = self.encoder.interpret(response, request, count)
            if outcome is None:
                outcome = generic_answer(response, count, self.encoder.describe(response))
        except Refused as refusal:
            self._refused(batch, part, refusal)
            return
        except Unconfirmed as exc:
            outcome = self._await_confirmation(part, exc.token)
        except SendAgain as exc:
            # Said once through the engine's error log (the part goes again without delay
            # beyond one backoff step); bounded, should the change not help.
            part.send_again += 1
            if part.send_again > 3:
                self.reusable = False
                raise HttpProtocolError(f"{exc}; still refused after the change, the "
                                        f"{count} messages are kept and sent again") from None
            raise HttpRetry(None, f"{exc}; the {count} messages are sent again at once",
                            0.0) from None
        except RetryLater as exc:
            self._unjudge(batch)
            self.last_ok = False
            if exc.retry_after is None:
                exc.retry_after = retry_after_seconds(response.headers.get("retry-after"))
            raise HttpRetry(getattr(exc, "status", response.status),
                            f"{exc.strerror}; the {count} messages are sent again",
                            exc.retry_after) from None
        except Misconfigured as exc:
            self._unjudge(batch)
            self.last_ok = False
            raise HttpKept(errno.EREMOTEIO, f"{exc.strerror}; the {count} messages are sent "
                           f"again on the retry schedule") from None
        except ProtocolError as exc:
            self._unjudge(batch)
            self.last_ok, self.reusable = False, False
            part.again = "resent"  # what the collector stored is not known
            raise HttpProtocolError(f"{exc.strerror or exc}; the {count} messages are kept "
                                    f"and sent again") from None
        if len(outcome.fates) == 1:  # the common answer: one fate for the whole request
            fate, n, reason = outcome.fates[0]
            fates = [(fate, reason)] * n
        else:
            fates = [(fate, reason) for fate, n, reason in outcome.fates for _ in range(n)]
        if len(fates) != count:
            self.reusable = False
            raise HttpProtocolError(f"an answer for {len(fates)} messages to a request of "
                                    f"{count}; they are kept and sent again")
        if request.rejected:  # left out by the encoder: refused at their places
            fates = per_message_fates(with_rejections(Outcome.per_message(fates),
                                                      request.rejected))
        self.last_ok = True
        batch.refusals = 0
        self._confirm_judged(batch)  # refused alone between two successes: for good
        if self.count_cap is not None and all(f is Fate.ACK for f, _ in fates):
            self.count_cap = None if self.count_cap * 2 > MAX_BATCH else self.count_cap * 2
        self._decide(batch, part, fates)

    def _await_confirmation(self, part, token):
        """Poll the format's confirmation of what the collector received (Splunk HEC's
        indexer acknowledgement) from 50 ms, doubling to 1 s, within confirm_timeout_s;
        then the part is sent again (it may be stored: counted as resent)."""
        count = len(part)
        deadline = time.monotonic() + self.encoder.confirm_timeout_s
        delay = 0.05
        part.again = "resent"
        while True:
            request = self.encoder.confirm_request(token)
            exchange = self._exchange()
            exchange.send_all(self._head(request, request.body) + request.body)
            response = exchange.read_response(RESPONSE_LIMIT)
            self.reusable = exchange.reusable and not exchange.closed
            if self.encoder.confirmed(response, token):
                part.again = None
                return Outcome.acked(count)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(errno.ETIMEDOUT, f"no confirmation that the {count} "
                                   f"messages were stored within "
                                   f"{self.encoder.confirm_timeout_s:.1f} s; sent again")
            end = time.monotonic() + min(delay, left)
            while time.monotonic() < end:
                if self._should_stop():
                    raise Stopped()
                time.sleep(min(SLICE_S, max(0.0, end - time.monotonic())))
            delay = min(delay * 2, 1.0)
            if not self.reusable:
                self._reopen_if_closed()

    def _decide(self, batch, part, fates):
        batch.fates[part.start:part.stop] = fates
        batch.parts.popleft()

    def _split(self, batch, part, item):
        """The part goes again as smaller ones: around the named record (item), or halves."""
        batch.parts.popleft()
        if item is not None and 0 <= item < len(part):
            cuts = [part.start, part.start + item, part.start + item + 1, part.stop]
        else:
            cuts = [part.start, part.start + len(part) // 2, part.stop]
        pieces = [Part(a, b, "retried") for a, b in zip(cuts, cuts[1:]) if b > a]
        batch.parts.extendleft(reversed(pieces))

    def _refused(self, batch, part, refusal):
        """Narrowing: a refusal that names no record is split (as 413 halves) until the
        refused record is alone; that record is rejected only when it is refused alone
        between two successes (the module doc). An outage (every part refused alike) is
        never turned into rejections: after batch.bound refusals in a row the batch is held
        on the retry schedule."""
        witnessed, self.last_ok = self.last_ok, False
        batch.refusals += 1
        if len(part) == 0:  # the probe itself was refused: nothing to compare with
            batch.parts.popleft()
            if batch.judged:  # (some backends refuse a request without data)
                self._confirm_judged(batch)  # the success before their refusal stands
                return
            self._hold(batch, refusal.reason)
        self._unjudge(batch)  # a record refused right after: those are not proven alone
        if len(part) > 1:
            self._split(batch, part, refusal.item)
        elif witnessed:
            # Refused alone right after a success: rejected once the next answer is a
            # success too (an outage starting just now would refuse that one as well).
            batch.parts.popleft()
            part.verdict, part.suspect = refusal.reason, False
            batch.judged.append(part)
            if all(p.suspect for p in batch.parts):
                batch.parts.appendleft(self._extend(batch) or Part(0, 0))
        else:
            self._suspect(batch, part, front=True)
        if batch.refusals > batch.bound:
            self._hold(batch, refusal.reason)

    def _suspect(self, batch, part, front=False):
        """A record refused alone with no success just before: tried again right after the
        next part that is not such a record, or after the next pending messages or a probe
        (a request without data) when there is none."""
        if front:
            batch.parts.popleft()
        part.suspect, part.verdict = True, None
        others = [i for i, p in enumerate(batch.parts) if not p.suspect]
        if others:
            batch.parts.insert(others[0] + 1, part)
        else:
            batch.parts.appendleft(part)
            batch.parts.appendleft(self._extend(batch) or Part(0, 0))

    def _confirm_judged(self, batch):
        for judged in batch.judged:
            batch.fates[judged.start:judged.stop] = [(Fate.REJECT, judged.verdict)]
        batch.judged.clear()

    def _unjudge(self, batch):
        """The answer after a record refused alone was not a success: not proven."""
        judged, batch.judged = batch.judged, []
        for part in judged:
            self._suspect(batch, part)

    def _hold(self, batch, reason):
        raise HttpKept(errno.EREMOTEIO, f"{reason}; {batch.refusals} refusals in a row and "
                       f"no success in between: the collector refuses everything alike, the "
                       f"{len(batch.fates)} messages are held and sent again on the retry "
                       f"schedule")

    def _release(self):
        """The Outcome of the batch's decided messages from its head: all of them once every
        fate is known (per-item retries included, then the batch is done), else the longest
        prefix decided for good (acknowledged or rejected). None when none is."""
        batch = self.batch
        fates = batch.fates
        if None not in fates:
            self.batch = None
            if fates.count(ACKED) == len(fates):  # the common case, without a loop
                return Outcome.acked(len(fates))
            retried = sum(1 for f, _ in fates if f is Fate.RETRY)
            if retried:  # (the engine counts them in retried_messages as it requeues them)
                first = next(why for f, why in fates if f is Fate.RETRY)
                self.backoff_first = (f"{retried} of {len(fates)} messages to send again "
                                      f"({first})")
            return Outcome.per_message(fates)
        n = 0
        while n < len(fates) and fates[n] is not None and fates[n][0] is not Fate.RETRY:
            n += 1
        if n == 0:
            return None
        prefix = fates[:n]
        batch.shift(n)
        return Outcome.per_message(prefix)

    def close(self):
        self.reusable = False
        self.chain.set_unacked(0)  # nothing is in flight without a connection
        return super().close()


def per_message_fates(outcome):
    """[(Fate, reason), ...]: one per message of the Outcome's fates."""
    return [(fate, reason) for fate, n, reason in outcome.fates for _ in range(n)]


def with_rejections(outcome, rejected):
    """The Outcome of a batch from that of its body (outcome, whose fates are those of the
    messages the body carries, in order) and the encoder's rejections ((index in the batch,
    reason), ...): each rejected message refused for good at its place."""
    if not rejected:
        return outcome
    fates = per_message_fates(outcome)
    for index, reason in rejected:  # ascending: each lands at its place in the batch
        fates.insert(index, (Fate.REJECT, reason))
    return Outcome.per_message(fates)


def _gzip(body):
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: a gzip member
    return compressor.compress(body) + compressor.flush()


def _zstd():
    try:
        import zstandard
    except ImportError:
        return None
    return zstandard.ZstdCompressor(level=3).compress
