"""http://host[:port]/path and https://host[:port]/path: batches of messages as HTTP request
bodies (NDJSON or a JSON array, optionally gzip or zstd), one request in flight per sink on
one kept-alive connection. A 2xx acknowledges the batch (its messages count as sent); 408,
429, 5xx, a reset or a timeout retry the same batch after backoff (honouring Retry-After);
any other 4xx refuses it for good: dropped, counted in dropped_rejected, logged.

The HTTP framing is the standard library's http.client, over the socket the transport
connects itself (bounded name resolution, TLS like tls://).
"""
import errno
import time
import zlib

from logpool.errors import ConfigError
from logpool.transports.base import IOV_BATCH, Outcome, RetryLater
from logpool.transports.stream import StreamTransport
from logpool.transports.schema import Option

FORMATS = {"ndjson": "application/x-ndjson", "json_array": "application/json"}
COMPRESSIONS = ("none", "gzip", "zstd")
METHODS = ("POST", "PUT")
OPTION_DOCS = {
    "http_format": ("string", "ndjson", "the request body: ndjson or json_array"),
    "http_headers": ("object", {}, "extra request headers (tokens, API keys, tenants)"),
    "http_compression": ("string", "none", "none, gzip or zstd"),
    "http_method": ("string", "POST", "POST or PUT"),
    "http_max_body_bytes": ("integer", 1024 * 1024, "the largest request body, before "
                            "compression"),
    "http_concurrency": ("integer", 1, "requests in flight per sink (1 keeps the order)"),
}
OPTIONS = {k: default for k, (_, default, _) in OPTION_DOCS.items()}
RETRY_STATUSES = (408, 429)
# Headers logpool sets itself: a user value would contradict the body.
RESERVED_HEADERS = ("content-length", "content-encoding", "content-type", "transfer-encoding",
                    "host", "connection")


class HttpRetry(RetryLater):
    """The collector asked for the batch again later (408, 429, 5xx)."""

    def __init__(self, status, text, retry_after=None):
        super().__init__(text, retry_after)
        self.status = status


def check_option(where, key, value):
    def fail(what):
        raise ConfigError(f"{where}: must be {what}, got {value!r}")
    if key == "http_format" and value not in FORMATS:
        fail(" or ".join(map(repr, FORMATS)))
    if key == "http_compression" and value not in COMPRESSIONS:
        fail(" or ".join(map(repr, COMPRESSIONS)))
    if key == "http_method" and value not in METHODS:
        fail(" or ".join(map(repr, METHODS)))
    if key == "http_max_body_bytes" and (isinstance(value, bool) or not isinstance(value, int)
                                         or not 1024 <= value <= 2**31 - 1):
        fail("an integer from 1024 to 2147483647")
    if key == "http_concurrency" and value != 1:
        fail("1 (one request in flight per sink keeps the order; run more sinks for more "
             "parallel requests)")
    if key == "http_headers":
        if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            fail("an object of header names to string values")
        for name, text in value.items():
            if not name or any(c in name for c in ":\r\n ") or "\r" in text or "\n" in text:
                raise ConfigError(f"{where}: header {name!r} is not a valid header line")
            if name.lower() in RESERVED_HEADERS:
                raise ConfigError(f"{where}: {name} is set by logpool from http_format and "
                                  f"http_compression")
    if key == "http_compression" and value == "zstd":
        try:
            import zstandard  # noqa: F401
        except ImportError:
            raise ConfigError(f"{where}: zstd needs the zstandard package "
                              f"(pip install zstandard)") from None
    return value


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
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _option(key, type_, default, doc):
    return Option(key, type_, default, doc, lambda where, value: check_option(where, key, value))


HTTP_OPTIONS = tuple(_option(k, *v) for k, v in OPTION_DOCS.items())


class HttpTransport(StreamTransport):
    SCHEMES = ("http", "https")
    ADDRESS = {"http": "http", "https": "http"}
    TLS_SCHEMES = frozenset(("https",))
    OPTIONS = HTTP_OPTIONS

    RAW_FRAMING_ONLY = "an HTTP sink frames messages by http_format (ndjson or json_array)"

    @classmethod
    def check_sink(cls, where, sink, opts, framing):
        super().check_sink(where, sink, opts, framing)
        limit = sink.get("http_max_body_bytes", OPTIONS["http_max_body_bytes"])
        if isinstance(limit, int) and opts["max_message_size"] > limit:
            if "max_message_size" in sink:
                raise ConfigError(f"{where}.max_message_size: {opts['max_message_size']} is "
                                  f"larger than http_max_body_bytes {limit}")
            opts["max_message_size"] = limit

    def __init__(self, sink, chain, faults=None):
        super().__init__(sink, chain, faults)
        self.options = sink.transport_options
        self.conn = None
        self.max_messages = IOV_BATCH * 64
        self.last_headers = {}
        self.headers = {"Content-Type": FORMATS[self.options.http_format],
                        **self.options.http_headers}
        if self.options.http_compression != "none":
            self.headers["Content-Encoding"] = self.options.http_compression
        self.compress = {"none": None, "gzip": _gzip, "zstd": _zstd()}[
            self.options.http_compression]

    def connect(self, should_stop):
        import http.client  # imported by the sinks that use it, not by every worker
        self._should_stop = should_stop
        skipped = super().connect(should_stop)
        host, port, _ = self.address
        # http.client does the HTTP framing over our socket (blocking, with a deadline per
        # call: the writer is a thread of its own, and send_timeout_ms bounds a request).
        self.sock.settimeout(self.sink.send_timeout_ms / 1000)
        self.conn = http.client.HTTPConnection(host, port)
        self.conn.sock = self.sock
        return skipped

    def close(self):
        if self.conn is not None:
            self.conn.sock = None  # the socket is closed below, once
            self.conn.close()
            self.conn = None
        super().close()

    def peer_closed(self):
        return False  # an idle keep-alive connection the server closed is reopened in write

    def _reopen_if_closed(self):
        """Servers close idle keep-alive connections (and some close after every response):
        that is not an error, just open a new one."""
        if self.conn is None or self.conn.sock is None or self._idle_closed():
            self.close()
            self.connect(self._should_stop)

    def _idle_closed(self):
        """Did the server close the idle connection? Checked without blocking (a socket
        with a timeout would wait for data even with MSG_DONTWAIT)."""
        self.sock.setblocking(False)
        try:
            return super().peer_closed()
        finally:
            self.sock.settimeout(self.sink.send_timeout_ms / 1000)

    def write(self):
        self._reopen_if_closed()
        views = self.chain.messages(self.max_messages, self.options.http_max_body_bytes)
        if not views:
            return Outcome.NOTHING
        n = len(views)
        status, text = self._request(self._body(views))
        if 200 <= status < 300:
            return Outcome.acked(n)
        if status in RETRY_STATUSES or status >= 500:
            raise HttpRetry(status, f"HTTP {status} {text!r}; the batch of {n} is sent "
                            f"again", retry_after_seconds(self.last_headers.get("Retry-After")))
        # Refused for good (400, 401, 403, 404, 413, ...): retrying cannot help.
        return Outcome.rejected(n, f"HTTP {status}: {text[:120]!r}")

    def _body(self, views):
        if self.options.http_format == "json_array":
            body = b"[" + b",".join(bytes(v).rstrip(b"\n") for v in views) + b"]"
        else:
            lines = (bytes(v) for v in views)
            body = b"".join(m if m.endswith(b"\n") else m + b"\n" for m in lines)
        return self.compress(body) if self.compress else body

    def _request(self, body):
        import http.client
        _, _, path = self.address
        try:
            self.conn.request(self.options.http_method, path, body=body, headers=self.headers)
            response = self.conn.getresponse()
            text = response.read(4096)
            while response.read(65536):
                pass  # drain, so the connection stays usable
        except http.client.HTTPException as exc:
            raise ConnectionResetError(errno.ECONNRESET, f"HTTP: {type(exc).__name__}: "
                                       f"{exc}") from None
        self.last_headers = response.headers
        return response.status, text[:200].decode("utf-8", "replace")


def _gzip(body):
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: a gzip member
    return compressor.compress(body) + compressor.flush()


def _zstd():
    try:
        import zstandard
    except ImportError:
        return None
    return zstandard.ZstdCompressor(level=3).compress

