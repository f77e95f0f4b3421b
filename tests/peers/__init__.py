"""Scripted collectors: real listening sockets whose every connection runs a script that
plays one protocol step badly (never answers, hangs after the open, trickles, announces a
huge size, closes mid-reply, answers garbage, acknowledges out of order or twice or for
nothing) or well. The conformance matrix (tests/test_conformance.py) runs each against
every transport that has that step.

A protocol joins by giving PROTOCOLS an entry: a correct session (used once a script stops
misbehaving) and the scripts of its steps."""
import re
import select
import socket
import ssl
import threading
import time

IO_SLICE_S = 0.05
MAX_BUFFER = 1 << 24  # a peer never holds more than this of what it was sent


class PeerClosed(Exception):
    """The test is over: the peer stops whatever it was doing."""


class Conn:
    """One accepted connection, as a script sees it."""

    def __init__(self, sock, peer, index):
        self.sock, self.peer, self.index = sock, peer, index
        self.inbuf = bytearray()
        self.sock.settimeout(IO_SLICE_S)

    def _check(self):
        if self.peer.stopping.is_set():
            raise PeerClosed()

    def recv_some(self):
        """Whatever arrives next (b"" at EOF)."""
        while True:
            self._check()
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, ssl.SSLWantReadError):
                continue
            except OSError:
                return b""
            if len(self.inbuf) + len(data) > MAX_BUFFER:
                raise AssertionError("the client sent more than a collector would hold")
            self.inbuf += data
            return data

    def read_until(self, pattern):
        """The first match of a compiled bytes regex in what was received, consumed."""
        while True:
            m = pattern.search(bytes(self.inbuf))  # (a match over the bytearray would see it change)
            if m is not None:
                del self.inbuf[:m.end()]
                return m
            if not self.recv_some():
                raise ConnectionResetError("the client went away")

    def read_exactly(self, n):
        while len(self.inbuf) < n:
            if not self.recv_some():
                raise ConnectionResetError("the client went away")
        data = bytes(self.inbuf[:n])
        del self.inbuf[:n]
        return data

    def send(self, data):
        view = memoryview(data)
        while view:
            self._check()
            try:
                view = view[self.sock.send(view):]
            except (socket.timeout, ssl.SSLWantWriteError):
                continue

    def trickle(self, data, interval_s=0.2):
        """One byte at a time, interval_s apart: a peer that is slow on purpose."""
        for i in range(len(data)):
            self.send(data[i:i + 1])
            if self.peer.stopping.wait(interval_s):
                raise PeerClosed()

    def hang(self):
        """Hold the connection open, reading nothing and answering nothing, until the test
        ends."""
        self.peer.stopping.wait()
        raise PeerClosed()

    def drain_kernel(self):
        """What the client wrote that is still queued in the kernel: read at the end of a
        test from a peer that hung, so that stream bytes it was given are accounted for."""
        if self.sock.fileno() < 0:
            return
        self.sock.setblocking(False)
        while True:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError, OSError):
                return
            if not data:
                return
            self.inbuf += data


class Peer:
    """A listening socket on loopback (optionally TLS); `script(conn)` runs per connection,
    in a thread of its own. `taken` collects the messages the peer acknowledged (or, for a
    stream, received), as the scripts record them."""

    def __init__(self, script, tls=None):
        self.script = script
        self.tls = tls  # an ssl.SSLContext for the server side, or None
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.taken = []
        self.conns = []
        self.finished = 0  # scripts that ran to their end (or failed)
        self.drained = []  # complete lines still queued in the kernel at close (streams)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def url(self, scheme, path=""):
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def take(self, messages):
        with self.lock:
            self.taken.extend(messages)

    @property
    def connections(self):
        with self.lock:
            return len(self.conns)

    def _accept(self):
        while not self.stopping.is_set():
            if not select.select([self.listener], [], [], IO_SLICE_S)[0]:
                continue
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                index = len(self.conns)
                self.conns.append(None)
            t = threading.Thread(target=self._serve, args=(sock, index), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, sock, index):
        try:
            if self.tls is not None and not getattr(self.script, "before_tls", False):
                sock.settimeout(5)
                sock = self.tls.wrap_socket(sock, server_side=True)
            conn = Conn(sock, self, index)
            with self.lock:
                self.conns[index] = conn
            self.script(conn)
        except (PeerClosed, OSError, ssl.SSLError):
            pass
        finally:
            with self.lock:
                self.finished += 1
            if not self.stopping.is_set():
                try:
                    sock.close()
                except OSError:
                    pass

    def close(self):
        """Ends every script; returns what the hung connections still had queued."""
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=5)
        self.listener.close()
        for conn in self.conns:
            if conn is not None:
                try:
                    conn.drain_kernel()
                    conn.sock.close()
                except OSError:  # a script closed it already
                    pass
                self.drained += LINE.findall(bytes(conn.inbuf))


# -- sessions played correctly, from which the hostile scripts deviate --

LINE = re.compile(rb"[^\n]*\n")
RELP_HEAD = re.compile(rb"(\d{1,9}) ([a-z]{1,32}) (\d{1,9})[ \n]")
RELP_OFFERS = b"200 OK\nrelp_version=0\nrelp_software=peer\ncommands=syslog"


def stream_session(conn):
    """A stream collector: takes every complete line."""
    while True:
        m = conn.read_until(LINE)
        conn.peer.take([m.group(0)])


def relp_frame(conn):
    """(txnr, command, data) of the next RELP frame."""
    m = conn.read_until(RELP_HEAD)
    n = int(m.group(3))
    data = b""
    if m.group(0).endswith(b" "):
        data = conn.read_exactly(n)
        assert conn.read_exactly(1) == b"\n"
    return int(m.group(1)), m.group(2), data


def relp_open(conn):
    txnr, command, _ = relp_frame(conn)
    assert command == b"open"
    conn.send(b"%d rsp %d %s\n" % (txnr, len(RELP_OFFERS), RELP_OFFERS))


def relp_session(conn, order=None, opened=False):
    """A RELP collector: acknowledges each syslog command once it holds it. `order`
    reorders the acknowledgements of each batch of commands read together."""
    if not opened:
        relp_open(conn)
    while True:
        batch = [relp_frame(conn)]
        while RELP_HEAD.match(conn.inbuf) and conn.inbuf.count(b"\n") > 1:
            try:
                batch.append(relp_frame(conn))
            except ConnectionResetError:
                break
        acks = []
        for txnr, command, data in batch:
            if command == b"close":
                conn.send(b"".join(acks) + b"%d rsp 0\n" % txnr)
                return
            conn.peer.take([data + b"\n"])
            acks.append(b"%d rsp 6 200 OK\n" % txnr)
        conn.send(b"".join(order(acks) if order else acks))


HTTP_HEAD_END = re.compile(rb"\r\n\r\n")


def http_read_request(conn):
    m = conn.read_until(re.compile(rb"^(.*?)\r\n\r\n", re.S))
    head = m.group(1)
    length = int(re.search(rb"(?im)^content-length:\s*(\d+)", head).group(1))
    return head, conn.read_exactly(length)


def http_session(conn):
    """An HTTP collector: 200 for each NDJSON batch, taking its lines."""
    while True:
        _, body = http_read_request(conn)
        conn.peer.take(LINE.findall(body))
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")


# -- the hostile steps --

def then_correct(bad, good):
    """`bad` on the first connection, the correct session on later ones."""
    def script(conn):
        (bad if conn.index == 0 else good)(conn)
    script.ends_before_second_batch = True  # (see stream_close_mid_stream)
    return script


def close_now(conn):
    conn.sock.close()


def stream_close_mid_stream(conn):
    """Takes a few lines, then hangs up in the middle of the stream."""
    for _ in range(3):
        conn.peer.take([conn.read_until(LINE).group(0)])
    conn.sock.shutdown(socket.SHUT_RDWR)


# A stream client learns of a hang-up only when it next writes: the test lets the script
# finish before the second batch, so that the break happens between batches.
stream_close_mid_stream.ends_before_second_batch = True


def stream_chatter(conn):
    """Talks garbage back while taking lines (a collector never talks on a stream)."""
    conn.send(b"\x00\xffgarbage\r\n" * 100)
    stream_session(conn)


def relp_then(after_open):
    def script(conn):
        relp_open(conn)
        after_open(conn)
    return script


def relp_acks_duplicated(conn):
    """Acknowledges the first command three times and the last once ("2,2,2,5")."""
    relp_open(conn)
    batch = [relp_frame(conn)]
    while len(batch) < 4:
        batch.append(relp_frame(conn))
    conn.peer.take([batch[0][2] + b"\n"])
    conn.send(b"".join(b"%d rsp 6 200 OK\n" % t for t in (batch[0][0],) * 3 + (batch[3][0],)))
    conn.hang()


def relp_ack_unknown(conn):
    relp_open(conn)
    relp_frame(conn)
    conn.send(b"999999 rsp 6 200 OK\n")
    conn.hang()


def relp_serverclose_with_acks(conn):
    """Acknowledges what it read, and says serverclose in the same packet."""
    relp_open(conn)
    batch = [relp_frame(conn)]
    while RELP_HEAD.match(conn.inbuf):
        batch.append(relp_frame(conn))
    conn.peer.take([data + b"\n" for _, _, data in batch])
    conn.send(b"".join(b"%d rsp 6 200 OK\n" % t for t, _, _ in batch) + b"0 serverclose 0\n")
    conn.sock.shutdown(socket.SHUT_WR)
    conn.hang()


def relp_trickled_open(conn):
    relp_frame(conn)
    conn.trickle(b"1 rsp %d %s\n" % (len(RELP_OFFERS), RELP_OFFERS))


def relp_huge_open_reply(conn):
    relp_frame(conn)
    conn.send(b"1 rsp 999999999 200 OK")
    conn.trickle(b"x" * 1000)


def relp_half_open_reply(conn):
    relp_frame(conn)
    conn.send(b"1 rsp 40 200 O")
    conn.sock.close()


def relp_garbage_open_reply(conn):
    relp_frame(conn)
    conn.send(b"\x00\x01 this is not RELP \xff\n" * 10)
    conn.hang()


def http_then(reply):
    def script(conn):
        http_read_request(conn)
        reply(conn)
    return script


def http_trickled_response(conn):
    conn.trickle(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")


def http_endless_body(conn):
    conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 999999999999\r\n\r\n")
    conn.trickle(b"x" * 1000)


def http_half_response(conn):
    conn.send(b"HTTP/1.1 200 O")
    conn.sock.close()


def http_garbage_response(conn):
    conn.send(b"\x00garbage\xff\r\n\r\n")
    conn.hang()


def http_early_hints_then_ok(conn):
    """A 103 interim response before the real one, on every request."""
    while True:
        _, body = http_read_request(conn)
        conn.peer.take(LINE.findall(body))
        conn.send(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
                  b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")


# -- Fluent forward (forward://): PackedForward chunks, {"ack": chunk id} answers --

def forward_read(conn):
    """The next msgpack object the client sent (a PackedForward message)."""
    import msgpack
    if not hasattr(conn, "unpacker"):
        conn.unpacker = msgpack.Unpacker(raw=False)
    while True:
        for obj in conn.unpacker:
            return obj
        if not conn.recv_some():
            raise ConnectionResetError("the client went away")
        conn.unpacker.feed(bytes(conn.inbuf))
        conn.inbuf.clear()


def forward_buffered(conn):
    """Further messages already received, without waiting."""
    out = []
    for obj in getattr(conn, "unpacker", ()):
        out.append(obj)
    return out


def forward_chunk(message):
    """(chunk id, the lines it carries) of a PackedForward message."""
    import msgpack
    tag, entries, option = message
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(entries)
    records = [record["message"].encode() + b"\n" for _, record in unpacker]
    assert option["size"] == len(records)
    return option["chunk"], records


def forward_ack(chunk_id):
    import msgpack
    return msgpack.packb({"ack": chunk_id})


def forward_session(conn, order=None):
    """A forward collector: acknowledges each chunk once it holds it. `order` reorders the
    acknowledgements of the chunks read together."""
    while True:
        batch = [forward_read(conn)] + forward_buffered(conn)
        acks = []
        for message in batch:
            chunk_id, lines = forward_chunk(message)
            conn.peer.take(lines)
            acks.append(forward_ack(chunk_id))
        conn.send(b"".join(order(acks) if order else acks))


def forward_then(reply):
    """Reads a chunk (without taking it), then `reply(conn, chunk id)`."""
    def script(conn):
        chunk_id, _ = forward_chunk(forward_read(conn))
        reply(conn, chunk_id)
    return script


def forward_acks_duplicated(conn):
    chunk_id, lines = forward_chunk(forward_read(conn))
    conn.peer.take(lines)
    conn.send(forward_ack(chunk_id) * 2)
    conn.hang()


def forward_half_ack(conn, chunk_id):
    conn.send(forward_ack(chunk_id)[:5])
    conn.sock.close()


def forward_huge(conn, chunk_id):
    conn.send(b"\xc6\xff\xff\xff\xff")  # a bin announcing 4 GiB
    conn.trickle(b"x" * 1000)


def forward_garbage(conn, chunk_id):
    conn.send(b"\xc1" * 16)  # never used in msgpack
    conn.hang()


def close_after_first_request(conn):
    """Reads what the client sends first, then hangs up (any protocol)."""
    conn.recv_some()
    conn.sock.shutdown(socket.SHUT_RDWR)


def garbage_after_first_request(conn):
    """Answers the client's first request with bytes of no protocol, then holds on."""
    conn.recv_some()
    conn.send(b"\xff\xff\xff\x7fgarbage" * 64)
    conn.hang()


def hang_before_tls(conn):
    """Accepts TCP and never answers, not even the TLS handshake."""
    conn.hang()


hang_before_tls.before_tls = True


def _reverse(acks):
    return acks[::-1]


# protocol -> (correct session, {step: (script, the hostile peer delivers correctly)})
PROTOCOLS = {
    "stream": (stream_session, {
        "refuse then accept": (then_correct(close_now, stream_session), True),
        "close mid-stream": (stream_close_mid_stream, False),
        "answer garbage": (stream_chatter, True),
    }),
    "tls": (stream_session, {
        "never answer": (hang_before_tls, False),  # (the handshake is the answer)
        "refuse then accept": (then_correct(close_now, stream_session), True),
        "close mid-stream": (stream_close_mid_stream, False),
    }),
    "relp": (relp_session, {
        "never answer": (lambda c: c.hang(), False),
        "hang after open": (relp_then(lambda c: c.hang()), False),
        "trickle": (relp_trickled_open, False),
        "huge announced size": (relp_huge_open_reply, False),
        "close mid-reply": (relp_half_open_reply, False),
        "answer garbage": (relp_garbage_open_reply, False),
        "acks out of order": (lambda c: relp_session(c, order=_reverse), True),
        "acks duplicated": (relp_acks_duplicated, False),
        "ack for an unknown txnr": (relp_ack_unknown, False),
        "acks with serverclose": (relp_serverclose_with_acks, False),
        "refuse then accept": (then_correct(close_now, relp_session), True),
    }),
    "forward": (forward_session, {
        "never answer": (forward_then(lambda c, chunk: c.hang()), False),
        "trickle": (forward_then(lambda c, chunk: c.trickle(forward_ack(chunk))), False),
        "huge announced size": (forward_then(forward_huge), False),
        "close mid-reply": (forward_then(forward_half_ack), False),
        "answer garbage": (forward_then(forward_garbage), False),
        "acks out of order": (lambda c: forward_session(c, order=_reverse), True),
        "acks duplicated": (forward_acks_duplicated, False),
        "ack for an unknown chunk": (forward_then(
            lambda c, chunk: (c.send(forward_ack("never-sent")), c.hang())), False),
        "refuse then accept": (then_correct(close_now, forward_session), True),
    }),
    "http": (http_session, {
        "never answer": (http_then(lambda c: c.hang()), False),
        "trickle": (http_then(http_trickled_response), False),
        "huge announced size": (http_then(http_endless_body), False),
        "close mid-reply": (http_then(http_half_response), False),
        "answer garbage": (http_then(http_garbage_response), False),
        "1xx before the answer": (http_early_hints_then_ok, True),
        "refuse then accept": (then_correct(close_now, http_session), True),
    }),
}
