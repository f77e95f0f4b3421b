"""http://host[:port]/path and https://host[:port]/path: batches of messages as HTTP request
bodies, in the body format of ``http_format`` (logpool/transports/formats: ndjson,
json_array and the backends' own), optionally gzip or zstd, one request in flight per sink on
one kept-alive connection.

What an answer means (every format; a format may refine it, e.g. per item):

- 1xx interim responses (100 Continue, 103 Early Hints) are skipped: the final answer follows;
- 2xx acknowledges the request's messages (sent_messages);
- 3xx, 401, 403, 404: the configuration is wrong, not the data: kept, logged (rate-limited:
  once, not per retry), retried on the backoff schedule;
- 408, 429, 5xx: retried after backoff, honouring Retry-After (capped by
  max_retry_interval_ms);
- 413: the request is sent again with half its messages; a single message answered 413 is
  refused for good (dropped_rejected);
- any other 4xx: refused for good (dropped_rejected), logged with the collector's reason;
- an answer the transport does not understand (a garbage status line, oversized status line
  or headers, a body it cannot parse where it needs one) is an error that keeps the data:
  logged, the connection closed, the request sent again. It is never a drop.

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

Retried requests are byte-identical (the batch boundary is frozen once sent, the fallback
record time too): deduplicating backends (ClickHouse's token, Elasticsearch's _id) see the
same request. Messages that may have reached the collector before a retry are counted in
resent_messages.

The HTTP/1.1 framing is our own small reader (http_exchange.py: http.client can be neither
bounded nor interrupted by the stop flag).
"""
import errno
import time
import zlib

from logpool.errors import ConfigError
from logpool.transports.address import HTTP
from logpool.transports.base import Fate, Outcome, RetryLater, Transport, Unsendable
from logpool.transports.formats import FORMATS, all_options as format_options
from logpool.transports.formats import owner as format_owner
from logpool.transports.formats.common import ACK, REJECT, RETRY, Answer, body_text
from logpool.transports.http_exchange import Exchange, HttpProtocolError
from logpool.transports.schema import Option, all_of, choice, http_headers, int_range, needs

COMPRESSIONS = ("none", "gzip", "zstd")
METHODS = ("POST", "PUT")
RETRY_STATUSES = (408, 429)
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
    """An answer that says the configuration is wrong (3xx, 401, 403, 404): the data is kept
    and sent again on the backoff schedule."""


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
    """The HTTP rules every format shares (the module doc)."""
    status = response.status
    text = body_text(response)
    why = why or f"HTTP {status} {response.reason[:60]!r}: {text!r}"
    if 200 <= status < 300:
        return Answer("ok")
    if 300 <= status < 400 or status in KEEP_STATUSES:
        return Answer("keep", f"{why}; the data is kept (check the URL and credentials)")
    if status in RETRY_STATUSES or 500 <= status < 600:
        return Answer("retry", why, retry_after=retry_after_seconds(
            response.headers.get("retry-after")))
    if status == 413:
        return Answer("split", why) if count > 1 else Answer("reject", why)
    if 400 <= status < 500:
        return Answer("reject", why)
    return Answer("error", f"an HTTP status not understood: {why}")


# -- the transport ------------------------------------------------------------------------------

class Batch:
    """A request as sent (frozen until its messages are released): positions in the chain
    (relative to its first pending message) of the messages it carries, and its bytes."""

    __slots__ = ("positions", "request", "body")

    def __init__(self, positions, request, body):
        self.positions, self.request, self.body = positions, request, body


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
        self.batch = None  # the request in flight or to send again (frozen)
        self.on_wire = 0  # the first on_wire pending messages went out at least once
        self.items_to_retry = None  # why: a per-item answer asked for some again (backoff)
        self.count_cap = None  # after a 413: at most this many messages per request
        self._should_stop = lambda: False
        self.reusable = False

    # -- connection --

    def connect(self, should_stop):
        self._should_stop = should_stop
        opened = self.conn.open(should_stop)
        self.reusable = True
        return opened

    def peer_closed(self):
        return False  # an idle keep-alive connection the server closed is reopened in write

    def _reopen_if_closed(self):
        """Servers close idle keep-alive connections (and some close after every response):
        that is not an error, just open a new one."""
        if self.sock is None or not self.reusable or self.conn.peer_closed():
            self.close()
            self.connect(self._should_stop)

    # -- a request --

    def _next_batch(self):
        """The frozen batch, or a new one: the first pending messages, as many as fit in
        http_max_body_bytes once encoded."""
        if self.batch is not None:
            return self.batch
        max_count = min(c for c in (self.encoder.MAX_MESSAGES, self.count_cap, MAX_BATCH)
                        if c is not None)
        views = self.chain.messages(max_count, self.limit)
        positions = list(range(len(views)))
        if not positions:
            return None
        now_ns = time.time_ns()
        while True:
            request = self.encoder.encode([views[i] for i in positions], now_ns)
            body = self.compress(request.body) if self.compress else request.body
            if len(body) <= self.limit:
                break
            if len(positions) == 1:
                self.on_wire = max(0, self.on_wire - 1)  # the engine drops it
                raise Unsendable(errno.EMSGSIZE, f"{len(body)} bytes once encoded, more "
                                 f"than http_max_body_bytes {self.limit}")
            keep = max(1, min(len(positions) - 1,
                              len(positions) * self.limit // len(body) - 1))
            positions = positions[:keep]
        self.batch = Batch(positions, request, body)
        return self.batch

    def _head(self, request, body):
        host, port, _ = self.address
        default_port = 443 if self.sink.scheme == "https" else 80
        host_header = (f"[{host}]" if ":" in host else host) + (
            "" if port == default_port else f":{port}")
        headers = {"Host": host_header, **request.headers, **self.extra_headers,
                   "Content-Length": str(len(body))}
        lines = [f"{self.options.http_method} {request.path} HTTP/1.1"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def write(self):
        if self.items_to_retry is not None:  # back off before sending those items again
            why, self.items_to_retry = self.items_to_retry, None
            raise HttpRetry(None, why)
        while True:
            self._reopen_if_closed()
            batch = self._next_batch()
            if batch is None:
                return Outcome.NOTHING
            rejected = batch.request.rejected  # by the encoder: not in the body
            count = len(batch.positions) - len(rejected)  # the messages the body carries
            if count == 0:
                self.batch = None
                self.on_wire = max(0, self.on_wire - len(batch.positions))
                return with_rejections(Outcome.NOTHING, rejected)
            left_out = {index for index, _ in rejected}
            resent = sum(1 for p in batch.positions if p < self.on_wire and p not in left_out)
            self.chain.count_resent(resent)
            self.on_wire = max(self.on_wire, batch.positions[-1] + 1)
            self.chain.set_unacked(len(batch.positions))
            exchange = Exchange(self.sock, time.monotonic() + self.sink.send_timeout_ms / 1000,
                                self._should_stop, f"HTTP {self.url}")
            try:
                exchange.send_all(self._head(batch.request, batch.body) + batch.body)
                response = exchange.read_response(self.encoder.response_limit(count))
            except HttpProtocolError as exc:
                self.reusable = False
                raise HttpProtocolError(f"an answer not understood ({exc.strerror}); the "
                                        f"batch of {count} is kept and sent again") from None
            self.reusable = exchange.reusable and not exchange.closed
            answer = self.encoder.interpret(response, count)
            if answer is None or answer.kind == "generic":
                answer = generic_answer(response, count, answer.reason if answer else "")
            done = self._apply(answer, batch, response)
            if done is not None:
                return with_rejections(done, rejected)

    def _apply(self, answer, batch, response):
        """The Outcome of the batch by the answer, or None to send the (halved) batch again
        now; raises for a retry later."""
        total = len(batch.positions)  # on_wire counts positions, the body's left-outs too
        count = total - len(batch.request.rejected)  # in the body
        kind = answer.kind
        if kind in ("ok", "partial", "reject", "items"):
            self.batch = None
            self.chain.set_unacked(0)
        if kind == "ok":
            self.on_wire = max(0, self.on_wire - total)
            if self.count_cap is not None:
                self.count_cap = None if self.count_cap * 2 > MAX_BATCH else self.count_cap * 2
            return Outcome.acked(count)
        if kind == "partial":
            self.on_wire = max(0, self.on_wire - total)
            taken = count - answer.rejected
            return Outcome.per_message([(Fate.ACK, None)] * taken +
                                       [(Fate.REJECT, answer.reason)] * answer.rejected)
        if kind == "reject":
            self.on_wire = max(0, self.on_wire - total)
            return Outcome.rejected(count, answer.reason)
        if kind == "items":
            fates = [({ACK: Fate.ACK, RETRY: Fate.RETRY, REJECT: Fate.REJECT}[fate],
                      why or None) for fate, why in answer.fates]
            retry = [why for fate, why in answer.fates if fate == RETRY]
            if retry:
                # The engine releases the prefix before the first retried item; that item
                # and every later one go again (the later ones counted as resent there).
                self.on_wire = 0
                if answer.backoff:
                    self.items_to_retry = (f"{len(retry)} of {count} items to send again "
                                           f"({retry[0]})")
            else:
                self.on_wire = max(0, self.on_wire - total)
            return Outcome.per_message(fates)
        if kind == "split":
            self.batch = None
            self.count_cap = max(1, count // 2)
            return None
        # Otherwise the batch stays frozen: the same request goes again.
        if kind == "retry":
            raise HttpRetry(response.status, f"{answer.reason}; the batch of {count} is sent "
                            f"again", answer.retry_after)
        if kind == "keep":
            raise HttpKept(errno.EREMOTEIO, f"{answer.reason}; the batch of {count} is sent "
                           f"again on the retry schedule")
        self.reusable = False
        raise HttpProtocolError(f"{answer.reason}; the batch of {count} is kept and sent "
                                f"again")

    def close(self):
        self.reusable = False
        self.chain.set_unacked(0)  # nothing is in flight without a connection
        return super().close()


def with_rejections(outcome, rejected):
    """The Outcome of a batch from that of its body (outcome, whose fates are those of the
    messages the body carries, in order) and the encoder's rejections ((index in the batch,
    reason), ...): each rejected message refused for good at its place."""
    if not rejected:
        return outcome
    fates = [(fate, reason) for fate, n, reason in outcome.fates for _ in range(n)]
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
