"""HTTP/1.1, the collector's side (http://host:port/path, https://): a request to the
listen path (POST or PUT) is decoded (Content-Encoding gzip or zstd, then NDJSON or a JSON
array), its messages written out in the receiver's framing and flushed, and only then
answered 200. Everything a peer announces is bounded by max_message_size: a Content-Length
past it (or not a plain number) is refused before any body is read, a chunked body is
decoded and refused past it, a body that decodes to more is refused with 413 without being
inflated. Another path is answered 404; a body whose length is not given 411; a transfer
coding other than chunked 501. An error answer closes the connection.

Runs in the receiver's loop like every protocol: its answers go to the connection's bounded
output buffer, its deadlines (handshake_timeout until the first request head is in, and
again from each answer until the next head is in; idle_timeout between reads) are the
loop's."""
import re
import urllib.parse

from logpool.receive.body import BodyTooLarge, decode_http_body
from logpool.receive.framing import frame_message
from logpool.receive.options import MAX_HTTP_HEAD

REQUEST_LINE = re.compile(rb"([A-Z]{1,16}) ([^\s]{1,8192}) HTTP/1\.([01])")
HEADER = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}):[ \t]*(.*?)[ \t]*")
CONTENT_LENGTH = re.compile(r"[0-9]{1,19}")
CHUNK_SIZE = re.compile(rb"[ \t]*([0-9A-Fa-f]{1,16})[ \t]*(;.*)?")
CHUNK_LINE_MAX = 4096
SINGLE = ("content-length", "transfer-encoding", "content-encoding", "content-type")
REASONS = {100: "Continue", 200: "OK", 400: "Bad Request", 404: "Not Found",
           405: "Method Not Allowed", 411: "Length Required", 413: "Content Too Large",
           431: "Request Header Fields Too Large", 500: "Internal Server Error",
           501: "Not Implemented"}


class HttpError(ValueError):
    def __init__(self, status, text):
        super().__init__(text)
        self.status = status


class ChunkedBody:
    """A chunked request body arriving; take() consumes from the connection's buffer and
    returns the whole body once its last chunk and trailers are in, else None."""

    def __init__(self, limit):
        self.limit = limit
        self.body = bytearray()
        self.need = None  # bytes of the current chunk, None while its size line comes
        self.trailers = False

    def take(self, buf):
        while True:
            if self.trailers or self.need is None:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > (MAX_HTTP_HEAD if self.trailers else CHUNK_LINE_MAX):
                        raise HttpError(400, "a chunk size line or trailer too long")
                    return None
                line = bytes(buf[:end])
                del buf[:end + 2]
                if self.trailers:
                    if not line:
                        return bytes(self.body)
                    continue
                m = CHUNK_SIZE.fullmatch(line)
                if m is None:
                    raise HttpError(400, "a bad chunk size line")
                size = int(m.group(1), 16)
                if size == 0:
                    self.trailers = True
                    continue
                if len(self.body) + size > self.limit:
                    raise HttpError(413, f"the body is larger than {self.limit} bytes")
                self.need = size
            if len(buf) < self.need + 2:
                return None
            if buf[self.need:self.need + 2] != b"\r\n":
                raise HttpError(400, "a chunk without its CRLF")
            self.body += buf[:self.need]
            del buf[:self.need + 2]
            self.need = None


class HttpProtocol:
    def __init__(self, receiver, conn):
        self.receiver = receiver
        self.conn = conn
        self.limit = receiver.options.max_message_size
        self.path = urllib.parse.urlsplit(receiver.path or "/").path or "/"
        self.buf = bytearray()
        self.request = None  # (method, target, headers, lower-case headers, keep-alive)
        self.length = None  # the Content-Length of the request whose body is arriving
        self.chunked = None  # or its ChunkedBody

    def torn(self):
        return False  # a request not answered 200 is sent again by the client

    def received(self, method, target, headers):
        """Called for each request whose head is accepted (a subclass may record them)."""

    def feed(self, data):
        self.buf += data
        try:
            while not self.conn.closing:
                if self.request is None and not self._head():
                    break
                body = self._body()
                if body is None:
                    break
                self._answer(body)
        except HttpError as exc:
            self.receiver.count(**{"oversized" if exc.status == 413 else "framing_errors": 1})
            self._respond(exc.status, str(exc).encode()[:200], close=True)
            self.buf.clear()
        return True

    def _head(self):
        """Parse a request head once it is all in: True when a body is to be read."""
        buf = self.buf
        end = buf.find(b"\r\n\r\n", 0, MAX_HTTP_HEAD + 4)
        if end < 0:
            if len(buf) > MAX_HTTP_HEAD:
                raise HttpError(431, f"the request head is larger than {MAX_HTTP_HEAD} bytes")
            return False
        lines = bytes(buf[:end]).split(b"\r\n")
        del buf[:end + 4]
        m = REQUEST_LINE.fullmatch(lines[0])
        if m is None:
            raise HttpError(400, "not an HTTP/1.x request line")
        headers, lower = {}, {}
        for line in lines[1:]:
            h = HEADER.fullmatch(line)
            if h is None:
                raise HttpError(400, "a malformed header line")
            name, value = h.group(1).decode("ascii"), h.group(2).decode("latin-1")
            key = name.lower()
            if key in lower and key in SINGLE:
                raise HttpError(400, f"{name} given twice")
            headers[name] = lower[key] = value
        self.conn.opening = False
        method, target = m.group(1).decode(), m.group(2).decode("latin-1")
        connection = lower.get("connection", "").lower()
        keep_alive = ("close" not in connection if m.group(3) == b"1"
                      else "keep-alive" in connection)
        if method not in ("POST", "PUT"):
            raise HttpError(405, f"{method}: only POST and PUT carry messages")
        try:
            path = urllib.parse.urlsplit(target).path
        except ValueError:  # "//[x": not a URL
            raise HttpError(400, "the request target is not a URL") from None
        if path != self.path:
            raise HttpError(404, f"messages go to {self.path}")
        coding, length = lower.get("transfer-encoding"), lower.get("content-length")
        if coding is not None:
            if length is not None:
                raise HttpError(400, "both Transfer-Encoding and Content-Length")
            if coding.strip().lower() != "chunked":
                raise HttpError(501, f"transfer coding {coding!r} not supported (chunked is)")
            self.chunked, self.length = ChunkedBody(self.limit), None
        elif length is None:
            raise HttpError(411, "a Content-Length (or chunked) body is required")
        elif CONTENT_LENGTH.fullmatch(length) is None:
            raise HttpError(400, f"Content-Length {length[:40]!r} is not a length")
        elif int(length) > self.limit:
            raise HttpError(413, f"the body is larger than {self.limit} bytes")
        else:
            self.chunked, self.length = None, int(length)
        if "100-continue" in lower.get("expect", "").lower():
            self._respond(100)
        self.request = (method, target, headers, lower, keep_alive)
        self.received(method, target, headers)
        return True

    def _body(self):
        if self.chunked is not None:
            return self.chunked.take(self.buf)
        if len(self.buf) < self.length:
            return None
        body = bytes(self.buf[:self.length])
        del self.buf[:self.length]
        return body

    def _answer(self, body):
        _, _, _, lower, keep_alive = self.request
        self.request = self.chunked = self.length = None
        try:
            messages = decode_http_body(body, lower.get("content-encoding", ""),
                                        lower.get("content-type", ""), self.limit)
        except BodyTooLarge as exc:
            raise HttpError(413, str(exc)) from None
        except ValueError as exc:
            raise HttpError(400, str(exc)) from None
        receiver = self.receiver
        framing = receiver.framing
        if messages and not receiver.commit(b"".join(frame_message(framing, m)
                                                     for m in messages)):
            self._respond(500, b"cannot write the messages", close=True)
            return
        receiver.count(messages=len(messages), bytes=sum(map(len, messages)), reads=1)
        self._respond(200, close=not keep_alive)
        if keep_alive:  # the next request head has handshake_timeout from now, like the first
            receiver.reopening(self.conn)

    def _respond(self, status, text=b"", close=False):
        head = f"HTTP/1.1 {status} {REASONS[status]}\r\n"
        if status != 100:
            head += f"Content-Length: {len(text)}\r\n"
            if close:
                head += "Connection: close\r\n"
        self.conn.reply(head.encode() + b"\r\n" + text)
        if close:
            self.conn.close_after_replies()
