"""forward://host:port and forward+tls://host:port: Fluent's forward protocol (Fluentd
in_forward, Fluent Bit's forward input, Vector's fluent source), with acknowledgements.

Messages travel in PackedForward mode: ``[tag, entries, {"size": n, "chunk": id}]`` where
entries is the concatenation of msgpack ``[EventTime, record]`` pairs and id a unique
base64 chunk id; the server answers ``{"ack": id}`` once it has taken the chunk, and only
then are the chunk's messages released (counted as sent). Up to forward_window chunks are
in flight (like RELP's window); a broken session, an answer not understood, an ack for a
chunk not in flight, or no progress for send_timeout_ms reconnects (with the engine's
backoff) and resends every message not acknowledged, in order: at-least-once delivery
(resends counted in resent_messages).

Records: the message when it is a JSON object (strict JSON) msgpack can carry, else
``{"message": "<line>"}`` (invalid UTF-8 bytes as U+FFFD; also a JSON object holding an
integer beyond 64 bits); the time is the record time of logpool.transports.formats (a time
field of the message, else when the chunk was framed). A time field out of range (before 1970,
after 2106-02-07, not finite, not a time: EventTime's seconds are 32 bits) gives the chunk's
time; the record keeps the original value. Encoding never fails a chunk (encode_entries).

forward_shared_key: the optional handshake (HELO from the server, PING with
sha512(salt + hostname + nonce + key), PONG checked the same way) happens inside connect, so a
collector that refuses or never answers it is a failed connect and the next collector is
tried. Everything the server sends is bounded (MAX_REPLY_BYTES per msgpack object, small
containers only): anything else is a protocol error.
"""
import base64
import errno
import hashlib
import os
import select
import socket
import time
from collections import deque

from logpool.errors import ConfigError
from logpool.transports.address import HOST_PORT
from logpool.transports.base import ProtocolError, Transport
from logpool.transports.formats.common import (CACHED_TIMES, NOT_JSON, TIME_FIELDS, batch_time,
                                               number_ns, text_ns, utf8_line, valid_utf8)
from logpool.transports.schema import Option, defaults, int_range, non_empty, optional, text
from logpool.transports.session import AckSession

EVENT_TIMES = {}  # a time field's text -> its EventTime (log lines repeat their second)
DEFAULT_WINDOW = 8
CHUNK_BYTES = 1024 * 1024  # messages per chunk total at most this (one larger goes alone)
CHUNK_MESSAGES = 4096
MAX_REPLY_BYTES = 64 * 1024  # an ack, a HELO or a PONG is small
FORWARD_OPTIONS = (
    Option("forward_tag", "string", "logpool", "the tag of every record",
           text(r"(?s).{1,1024}", "a non-empty string of at most 1024 characters")),
    Option("forward_shared_key", "string or null", None, "the collector's shared key: "
           "enables the HELO/PING/PONG handshake", optional(non_empty),
           default_doc="none: no handshake"),
    Option("forward_window", "integer", DEFAULT_WINDOW, "chunks sent and not yet "
           "acknowledged, at most", int_range(1, 1024)),
)
OPTIONS = defaults(FORWARD_OPTIONS)


def encode_entries(messages, now_ns):
    """The PackedForward entries of `messages`: the concatenation of msgpack
    [EventTime, record] pairs, a pure function of the messages and the fallback time (the
    batch's: for a message with no time field in range). Never raises: a record msgpack
    cannot carry (an integer beyond 64 bits) goes as {"message": <the line>}."""
    packed, start = _packed_pairs(messages, now_ns)
    return packed[start:]


def _packed_pairs(messages, now_ns):
    """(a msgpack array of the [EventTime, record] pairs, where its items start)."""
    import logpool.transports.formats.codec as codec
    event_time, pack = codec.event_time, codec.pack_msgpack
    fallback = event_time(batch_time(now_ns))
    decode = codec.ANY.decode
    pairs = []
    for m in messages:
        line = bytes(m).rstrip(b"\n")
        if not line.isascii():
            line = valid_utf8(line)
        doc = None
        if line[:1] == b"{":
            try:
                doc = decode(line)
            except NOT_JSON:
                pass
        if type(doc) is not dict:
            pairs.append((fallback, {"message": line.decode()}))
            continue
        when = fallback
        for key in TIME_FIELDS:
            value = doc.get(key)
            if value is not None:
                if type(value) is str:
                    when = EVENT_TIMES.get(value)
                    if when is None:
                        ns = text_ns(value)
                        when = fallback if ns is None else event_time(ns)
                        if ns is not None:
                            if len(EVENT_TIMES) > CACHED_TIMES:  # (keys: short texts)
                                EVENT_TIMES.clear()
                            EVENT_TIMES[value] = when
                else:
                    ns = number_ns(value)
                    if ns is not None:
                        when = event_time(ns)
                if when is not fallback:
                    break
        pairs.append((when, doc))
    try:
        packed = pack(pairs)
    except (OverflowError, ValueError, TypeError, RecursionError):
        packed = pack([(when, _packable(pack, doc, m)) for (when, doc), m in zip(pairs, messages)])
    n = len(pairs)  # (the array's header: fixarray, array 16 or array 32)
    return packed, 1 if n < 16 else 3 if n < 65536 else 5


def _packable(pack, doc, message):
    try:
        pack(doc)
        return doc
    except (OverflowError, ValueError, TypeError, RecursionError):
        return {"message": utf8_line(message).decode()}


def encode_chunk(tag, messages, chunk_id, now_ns):
    """One PackedForward message (bytes) carrying `messages` as chunk `chunk_id`:
    [tag, entries (bin), option], the entries copied once, from the packed pairs."""
    from logpool.transports.formats.codec import pack_msgpack as pack
    packed, start = _packed_pairs(messages, now_ns)
    size = len(packed) - start
    bin_header = (b"\xc4" + bytes((size,)) if size < 1 << 8 else
                  b"\xc5" + size.to_bytes(2, "big") if size < 1 << 16 else
                  b"\xc6" + size.to_bytes(4, "big"))
    return b"".join((b"\x93", pack(tag), bin_header, memoryview(packed)[start:],
                     pack({"size": len(messages), "chunk": chunk_id})))


def unpacker():
    """A msgpack reader of what a forward server says, every size bounded."""
    import msgpack
    # Fluent Bit's HELO packs a random nonce and salt as msgpack str (not valid UTF-8):
    # surrogateescape keeps their bytes.
    return msgpack.Unpacker(max_buffer_size=MAX_REPLY_BYTES, max_str_len=MAX_REPLY_BYTES,
                            max_bin_len=MAX_REPLY_BYTES, max_array_len=16, max_map_len=16,
                            max_ext_len=64, raw=False, strict_map_key=True,
                            unicode_errors="surrogateescape")


def ping_digest(salt, hostname, nonce, key):
    """sha512_hex(salt + hostname + nonce + shared_key), the forward protocol's digest."""
    h = hashlib.sha512()
    for part in (salt, hostname, nonce, key):
        h.update(part if isinstance(part, bytes) else part.encode("utf-8", "surrogateescape"))
    return h.hexdigest()


class ForwardTransport(Transport):
    PROTOCOL = "forward"
    SCHEMES = ("forward", "forward+tls")
    ADDRESS = {"forward": HOST_PORT, "forward+tls": HOST_PORT}
    TLS_SCHEMES = frozenset(("forward+tls",))
    OPTIONS = FORWARD_OPTIONS

    @classmethod
    def check_sink(cls, where, sink, given, values, opts, framing):
        if framing != "raw":
            raise ConfigError(f"{where}.framing: forward frames each message itself (a msgpack "
                              f"record); leave framing raw")
        try:
            import msgpack  # noqa: F401
        except ImportError:
            raise ConfigError(f"{where}.url: forward:// needs the msgpack package (pip "
                              f"install msgpack, or logpool[forward])") from None

    def __init__(self, sink, chain, faults=None):
        super().__init__(sink, chain, faults)
        options = sink.transport_options
        self.tag = options.forward_tag
        self.shared_key = options.forward_shared_key
        self.window = options.forward_window
        self.hostname = socket.gethostname()
        self.conn = self.connection()
        self.session = AckSession(self.conn, chain, self)
        self._reset()

    def _reset(self):
        self.reader = unpacker()
        self.chunks = deque()  # (chunk id, messages) in flight, oldest first
        self.acked_ahead = set()  # chunk ids acknowledged behind an unanswered one

    @property
    def inflight(self):
        return self.session.inflight

    # -- session --

    def connect(self, should_stop):
        return self.conn.open(should_stop, self._open)

    def _open(self, should_stop, deadline):
        """The handshake (when a shared key is set) is part of connecting to each
        collector."""
        self.session.reset()
        self._reset()
        if self.shared_key is not None:
            self._handshake(should_stop, deadline)
        self.chain.set_unacked(0)

    def _handshake(self, should_stop, deadline):
        helo = self._read_one(should_stop, deadline, "forward HELO")
        if (not isinstance(helo, list) or len(helo) != 2 or helo[0] != "HELO"
                or not isinstance(helo[1], dict)):
            raise ProtocolError(f"forward: expected HELO, got {str(helo)[:100]}")
        nonce = helo[1].get("nonce")
        if not isinstance(nonce, (bytes, str)):
            raise ProtocolError("forward: a HELO without a nonce")
        salt = os.urandom(16).hex()
        digest = ping_digest(salt, self.hostname, nonce, self.shared_key)
        import msgpack
        # No user authentication: empty username and password digest.
        self.conn.send_all(msgpack.packb(["PING", self.hostname, salt, digest, "", ""]),
                           should_stop, deadline, "forward handshake")
        pong = self._read_one(should_stop, deadline, "forward PONG")
        if not isinstance(pong, list) or len(pong) != 5 or pong[0] != "PONG":
            raise ProtocolError(f"forward: expected PONG, got {str(pong)[:100]}")
        _, ok, reason, server_host, server_digest = pong
        if ok is not True:  # a wrong key, or a server that wants users (not supported)
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"forward: the server refused "
                                         f"the handshake: {str(reason)[:200]}")
        if not isinstance(server_host, str) or server_digest != ping_digest(
                salt, server_host, nonce, self.shared_key):
            raise ProtocolError("forward: the server's PONG digest does not match "
                                "forward_shared_key")

    def write(self):
        return self.session.write()

    def wants(self):
        return self.session.wants()

    def wait_ready(self, timeout_s):
        return self.session.wait_ready(timeout_s)

    def peer_closed(self):
        return self.session.peer_closed()

    def close(self):
        self.chunks.clear()
        self.acked_ahead.clear()
        outcome = self.session.end()
        self.conn.close()
        return outcome

    # -- writing and acknowledgements --

    def window_open(self):
        return len(self.chunks) < self.window

    def frame_more(self):
        session = self.session
        views = self.chain.messages(CHUNK_MESSAGES, CHUNK_BYTES,
                                    session.inflight + session.acked)
        if not views:
            return
        n = len(views)
        chunk_id = base64.b64encode(os.urandom(16)).decode()
        session.out = memoryview(encode_chunk(self.tag, views, chunk_id, time.time_ns()))
        self.chunks.append((chunk_id, n))
        session.sending(n)

    def feed(self, data):
        import msgpack
        try:
            self.reader.feed(data)
        except msgpack.BufferFull:
            raise ProtocolError(f"forward: an answer longer than {MAX_REPLY_BYTES} bytes") \
                from None

    def _answers(self):
        import msgpack
        try:
            yield from self.reader
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            raise ProtocolError(f"forward: an answer that is not msgpack within bounds "
                                f"({type(exc).__name__}: {exc})") from None

    def read_acks(self, receive=True):
        if receive:
            self.session.recv_available()
        for answer in self._answers():
            if not isinstance(answer, dict) or not isinstance(answer.get("ack"), str):
                raise ProtocolError(f"forward: an answer that is not an ack: "
                                    f"{str(answer)[:100]}")
            self._ack(answer["ack"])
        self.session.raise_if_gone()

    def _ack(self, chunk_id):
        ids = [c for c, _ in self.chunks]
        if chunk_id not in ids or chunk_id in self.acked_ahead:
            state = "acknowledged already" if chunk_id in self.acked_ahead else "not in flight"
            raise ProtocolError(f"forward: an ack for chunk {chunk_id[:40]!r}, which is "
                                f"{state}")
        self.acked_ahead.add(chunk_id)
        released = 0
        while self.chunks and self.chunks[0][0] in self.acked_ahead:
            cid, n = self.chunks.popleft()
            self.acked_ahead.discard(cid)
            released += n
        if released:
            self.session.release(released)

    # -- the opening exchange --

    def _read_one(self, should_stop, deadline, what):
        while True:
            for answer in self._answers():
                return answer
            self.session.raise_if_gone()
            self.conn.wait(select.POLLIN, should_stop, deadline, what)
            self.session.recv_available()
