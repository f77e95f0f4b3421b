"""The HTTP/1.1 exchange of the http:// and https:// transports: one request and its answer
on a connected non-blocking socket (plain or TLS), every wait bounded by one deadline and
the stop flag, every size the collector announces bounded (status line, headers, interim
answers, the body kept). The standard library's http.client can do neither."""
import errno
import select
import sys
import time

from logpool.transports.base import SLICE_S, ProtocolError, Stopped
from logpool.transports.formats.common import Response

MAX_LINE = 8192  # status line, each header line, each chunk-size line
MAX_HEADERS = 100
MAX_HEADER_BYTES = 64 * 1024
MAX_INTERIM = 10  # 1xx responses before the final one


class HttpProtocolError(ProtocolError):
    """An answer the transport does not understand: the data is kept, the request sent
    again on a new connection."""


def _would_block():
    """The exceptions of a non-blocking socket with nothing to do now. ssl's only when it is
    loaded (an https sink exists): plain-HTTP workers never import it."""
    ssl = sys.modules.get("ssl")
    if ssl is None:
        return (BlockingIOError, InterruptedError)
    return (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class Exchange:
    """One request and its answer on a connected non-blocking socket (plain or TLS), every
    wait bounded by `deadline` (monotonic) and the stop flag."""

    def __init__(self, sock, deadline, should_stop, what):
        self.sock, self.deadline, self.should_stop, self.what = sock, deadline, should_stop, what
        self.buf = bytearray()
        self.closed = False  # the peer ended the connection
        self.reusable = True

    def _wait(self, events):
        poller = select.poll()
        poller.register(self.sock, events)
        while True:
            if self.should_stop():
                raise Stopped()
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(errno.ETIMEDOUT, f"{self.what}: no complete answer within "
                                   f"send_timeout_ms")
            if poller.poll(min(SLICE_S, left) * 1000):
                return

    def send_all(self, data):
        view = memoryview(data)
        blocked = _would_block()
        while view:
            try:
                sent = self.sock.send(view)
            except blocked as exc:
                self._wait(select.POLLIN if type(exc).__name__ == "SSLWantReadError"
                           else select.POLLOUT)
                continue
            view = view[sent:]

    def _fill(self):
        """Read what is there (waiting for it); False at EOF."""
        blocked = _would_block()
        while True:
            try:
                data = self.sock.recv(65536)
            except blocked:
                self._wait(select.POLLIN)
                continue
            if not data:
                self.closed = True
                return False
            self.buf += data
            return True

    def _line(self, limit, what):
        while True:
            end = self.buf.find(b"\n")
            if end >= 0:
                if end + 1 > limit:
                    raise HttpProtocolError(f"{what} longer than {limit} bytes")
                line = bytes(self.buf[:end + 1])
                del self.buf[:end + 1]
                return line.rstrip(b"\r\n")
            if len(self.buf) > limit:
                raise HttpProtocolError(f"{what} longer than {limit} bytes")
            if not self._fill():
                raise ConnectionResetError(errno.ECONNRESET, f"the collector closed the "
                                           f"connection in the middle of the answer ({what})")

    def _head(self):
        line = self._line(MAX_LINE, "status line")
        parts = line.split(b" ", 2)
        if (len(parts) < 2 or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0")
                or len(parts[1]) != 3 or not parts[1].isdigit()):
            raise HttpProtocolError(f"not an HTTP/1.x status line: {line[:80]!r}")
        status = int(parts[1])
        reason = parts[2].decode("latin-1") if len(parts) > 2 else ""
        headers, total, count = {}, 0, 0
        while True:
            line = self._line(MAX_LINE, "header line")
            total += len(line) + 2
            if not line:
                break
            count += 1
            if count > MAX_HEADERS or total > MAX_HEADER_BYTES:
                raise HttpProtocolError(f"more than {MAX_HEADERS} headers or "
                                        f"{MAX_HEADER_BYTES} bytes of them")
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise HttpProtocolError(f"a malformed header line: {line[:80]!r}")
            key = name.decode("latin-1").lower()
            value = value.strip().decode("latin-1")
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        return parts[0], status, reason, headers

    def read_response(self, body_limit, head_request=False):
        """The final Response (1xx skipped); at most body_limit bytes of its body are kept:
        beyond that the connection is marked not reusable instead of reading on."""
        for _ in range(MAX_INTERIM + 1):
            version, status, reason, headers = self._head()
            if 100 <= status < 200 and status != 101:
                continue  # an interim answer (100 Continue, 103 Early Hints)
            break
        else:
            raise HttpProtocolError(f"more than {MAX_INTERIM} interim (1xx) answers")
        if status == 101:
            raise HttpProtocolError("the collector switched protocols (101)")
        connection = headers.get("connection", "").lower()
        if "close" in connection or (version == b"HTTP/1.0" and "keep-alive" not in connection):
            self.reusable = False
        body = b""
        if not (head_request or status in (204, 304)):
            body = self._body(headers, body_limit)
        return Response(status, reason, headers, body)

    def _body(self, headers, limit):
        encoding = headers.get("transfer-encoding", "").lower()
        if encoding:
            if encoding.rsplit(",", 1)[-1].strip() != "chunked":
                raise HttpProtocolError(f"a body in transfer-encoding {encoding!r}")
            return self._chunked(limit)
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit() or len(length) > 18:
                raise HttpProtocolError(f"a Content-Length not understood: {length[:40]!r}")
            return self._exact(int(length), limit)
        self.reusable = False  # the body ends when the connection does
        out = bytearray()
        while len(self.buf) < limit and self._fill():
            pass
        out += self.buf[:limit]
        return bytes(out)

    def _exact(self, length, limit):
        keep = min(length, limit)
        while len(self.buf) < keep:
            if not self._fill():
                raise ConnectionResetError(errno.ECONNRESET, "the collector closed the "
                                           "connection in the middle of the answer's body")
        body = bytes(self.buf[:keep])
        if length > limit:
            self.reusable = False  # the rest is not read: this connection is done
        else:
            del self.buf[:keep]
        return body

    def _chunked(self, limit):
        out = bytearray()
        while True:
            line = self._line(MAX_LINE, "chunk size line")
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise HttpProtocolError(f"a chunk size not understood: {line[:40]!r}") from None
            if size == 0:
                for _ in range(MAX_HEADERS + 1):  # trailers
                    if not self._line(MAX_LINE, "trailer line"):
                        return bytes(out)
                raise HttpProtocolError("too many trailer lines")
            if len(out) + size > limit:
                need = limit - len(out)
                while len(self.buf) < need and self._fill():
                    pass
                out += self.buf[:need]
                self.reusable = False
                return bytes(out)
            while len(self.buf) < size + 2:
                if not self._fill():
                    raise ConnectionResetError(errno.ECONNRESET, "the collector closed the "
                                               "connection in the middle of a chunk")
            out += self.buf[:size]
            if self.buf[size:size + 2] != b"\r\n":
                raise HttpProtocolError("a chunk without its CRLF")
            del self.buf[:size + 2]
