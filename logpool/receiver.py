"""A collector: accepts stream connections (unix, tcp, tls) or datagrams (udp, unixgram)
and appends complete messages to a file, in the framing it was told to expect:

- ``newline`` (default): messages end with "\\n"; complete lines are written out;
- ``octet-counting`` (RFC 6587 ``LEN SP MSG``): complete frames are written out verbatim;
- ``raw``: bytes are written as they arrive (a stream has no message boundaries then).

A datagram is one message whatever the framing; it is written out in that framing. The
torn last message of a connection that broke is dropped (logpool resends that message whole
on its next connection).

Stopping is graceful: the listener closes, and for unix sockets each connection is shut
down for reading and then drained, so every byte the kernel accepted from a writer is
either written out here or refused to the writer (EPIPE), which then resends it. TCP has no
such handshake: bytes in flight when a TCP receiver stops can be lost.
"""
import collections
import errno
import os
import re
import select
import selectors
import signal
import socket
import ssl
import stat
import sys
import threading
import time
from dataclasses import dataclass

READ_SIZE = 1 << 18
FRAMINGS = ("newline", "octet-counting", "raw")
OCTET_HEADER = re.compile(rb"([1-9][0-9]{0,9}) ")


DEFAULT_SOCKET_MODE = 0o660
DEFAULT_MAX_MESSAGE_SIZE = 16 << 20
DEFAULT_IDLE_TIMEOUT_S = 300.0
DEFAULT_HANDSHAKE_TIMEOUT_S = 10.0
# After running out of descriptors, try accepting again this often (or when one frees up).
ACCEPT_RETRY_S = 0.5


def _claim_unix_path(path, kind):
    """Remove a stale socket left at path by a receiver that died; refuse anything else (a
    regular file, a directory, a socket something still listens on)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket; not replacing it")
    probe = socket.socket(socket.AF_UNIX, kind)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # nobody listens: stale
        return
    except OSError:
        if kind == socket.SOCK_DGRAM:
            os.unlink(path)
            return
        raise
    else:
        if kind == socket.SOCK_STREAM:
            raise OSError(errno.EADDRINUSE, f"{path}: another process is listening there")
        os.unlink(path)  # a datagram socket "connects" to a stale path too: nothing to ask
    finally:
        probe.close()


def listen_socket(listen, mode=DEFAULT_SOCKET_MODE):
    """A bound socket for unix:, unixgram:/path or tcp://, tls://, udp://host:port (port 0
    picks a free one); stream sockets are listening. A unix socket gets `mode`."""
    from logpool import transports
    from logpool.config import parse_url
    scheme, address = parse_url("--listen", listen, allow_port_zero=True)
    transport = transports.for_scheme(scheme)
    kind = transport.SOCKET_TYPE
    if transport.ADDRESS[scheme] == "path":
        _claim_unix_path(address, kind)
        sock = socket.socket(socket.AF_UNIX, kind)
        try:
            sock.bind(address)
            os.chmod(address, mode)
        except OSError:
            sock.close()
            raise
    else:
        host, port = address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    if kind == socket.SOCK_STREAM:
        sock.listen(512)
    else:
        # Bursts of datagrams must not overflow the queue while the receiver looks away.
        grow_receive_buffer(sock, 8 << 20)
    sock.setblocking(False)
    return scheme, sock


SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux; not in Python's socket


def grow_receive_buffer(sock, size):
    """Past net.core.rmem_max when privileged (CAP_NET_ADMIN), else up to it."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def address_of(scheme, sock):
    """The URL a writer would use to reach this listener."""
    if sock.family == socket.AF_UNIX:
        return f"{scheme}:" + sock.getsockname()
    host, port = sock.getsockname()[:2]
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def server_tls_context(cert_file, key_file=None, client_ca_file=None):
    """TLS for a listener; with client_ca_file, clients must present a certificate it signed."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    if client_ca_file:
        ctx.load_verify_locations(client_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class FramingError(ValueError):
    """Not a frame; `complete` is what came whole before it: (bytes, count, consumed)."""

    def __init__(self, message, complete):
        super().__init__(message)
        self.complete = complete


def split_messages(framing, buf):
    """(complete messages as written out, count, bytes consumed) from the start of buf."""
    if framing == "raw":
        return buf, 0, len(buf)
    if framing == "newline":
        cut = buf.rfind(b"\n") + 1
        return buf[:cut], buf.count(b"\n", 0, cut), cut
    pos, count = 0, 0
    while True:
        m = OCTET_HEADER.match(buf, pos)
        if m is None:
            if len(buf) - pos > 11 or (buf[pos:] and not re.fullmatch(rb"[1-9][0-9]*",
                                                                        buf[pos:])):
                raise FramingError(f"bad octet-counting frame header {buf[pos:pos + 12]!r}",
                                   (buf[:pos], count, pos))
            break
        end = m.end() + int(m.group(1))
        if end > len(buf):
            break
        pos, count = end, count + 1
    return buf[:pos], count, pos


def frame_datagram(framing, data):
    """A datagram written out in the receiver's framing."""
    if framing == "octet-counting":
        return b"%d %s" % (len(data), data)
    if framing == "newline" and not data.endswith(b"\n"):
        return data + b"\n"
    return data


@dataclass
class ReceiverStats:
    connections: int = 0
    messages: int = 0
    bytes: int = 0
    torn: int = 0
    reads: int = 0
    tls_resumed: int = 0
    tls_failures: int = 0
    framing_errors: int = 0
    oversized: int = 0          # connections dropped: a message above max_message_size
    timeouts: int = 0           # connections dropped: idle or handshake timeout
    accept_errors: int = 0      # accept() failed (out of descriptors, ...)


class Receiver:
    """Runs in its own thread (start/stop) or in the caller's (serve_forever)."""

    def __init__(self, listen, out, framing="newline", tls=None, mode=DEFAULT_SOCKET_MODE,
                 max_message_size=DEFAULT_MAX_MESSAGE_SIZE,
                 idle_timeout=DEFAULT_IDLE_TIMEOUT_S,
                 handshake_timeout=DEFAULT_HANDSHAKE_TIMEOUT_S, clock=time.monotonic):
        if framing not in FRAMINGS:
            raise ValueError(f"framing must be one of {', '.join(FRAMINGS)}, got {framing!r}")
        self.max_message_size = max_message_size
        self.idle_timeout = idle_timeout
        self.handshake_timeout = handshake_timeout
        self.clock = clock
        self.scheme, self.sock = listen_socket(listen, mode)
        if self.scheme in ("tls", "relp+tls") and tls is None:
            self.sock.close()
            raise ValueError(f"a {self.scheme}:// listener needs a certificate "
                             f"(tls=server_tls_context())")
        self.relp = self.scheme in ("relp", "relp+tls")
        self.tls = tls
        self.datagram = self.sock.type == socket.SOCK_DGRAM
        self.framing = framing
        self.url = address_of(self.scheme, self.sock)
        self.out = out
        self.stats = ReceiverStats()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.sock, selectors.EVENT_READ, None)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._stopping = False
        self._actions = collections.deque()  # (action, done event) for the loop's thread
        self._thread = None
        self._partial = {}  # conn -> bytearray after its last complete message
        self._last_active = {}  # conn -> clock() of its accept or last read
        self._accept_paused_at = None  # out of descriptors: accept() again later
        self._swept_at = clock()
        self._handshaking = set()  # TLS connections whose handshake is not done
        self._lock = threading.Lock()
        self._dirty = False

    def start(self):
        self._thread = threading.Thread(target=self.serve_forever, name="logpool-receiver",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout=10):
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout)

    def request_stop(self):
        """Safe from a signal handler or another thread."""
        self._stopping = True
        self._wake()

    def pause_reading(self):
        """Stop reading connections (the writers' sends then stall) until they are dropped.
        Returns once the receiver's thread has stopped reading."""
        def unregister_all():
            for conn in self._partial:
                self._sel.unregister(conn)
        self._run_in_loop(unregister_all)

    def drop_connections(self):
        """Close every connection now, unread bytes and all (the peer gets a reset): a
        collector that crashes, as far as its writers can tell. Returns once they are."""
        def drop_all():
            for conn in list(self._partial):
                self._drop(conn)
        self._run_in_loop(drop_all)

    def _run_in_loop(self, action, timeout=10):
        """Run action in the receiver's thread, which owns the connections; wait for it."""
        done = threading.Event()
        self._actions.append((action, done))
        self._wake()
        if not done.wait(timeout):
            raise TimeoutError("the receiver's thread did not run the action")

    def _wake(self):
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def snapshot(self):
        with self._lock:
            return ReceiverStats(**vars(self.stats))

    def serve_forever(self):
        try:
            while not self._stopping:
                if self._dirty:
                    # Readers of the file (tail -f, tests) see lines as they arrive.
                    self._flush_out()
                self._housekeeping()
                for key, _ in self._sel.select(timeout=self._select_timeout()):
                    if key.data == "wake":
                        try:
                            self._wake_r.recv(64)
                        except BlockingIOError:
                            pass
                        while self._actions:
                            action, done = self._actions.popleft()
                            action()
                            done.set()
                    elif key.fileobj is self.sock and self.datagram:
                        self._read_datagrams()
                    elif key.fileobj is self.sock:
                        self._accept()
                    else:
                        self._read(key.fileobj)
            self._shutdown()
        finally:
            self._flush_out()

    def _select_timeout(self):
        if self._accept_paused_at is not None:
            return ACCEPT_RETRY_S
        return 1.0

    def _housekeeping(self):
        """Accept again after running out of descriptors; hang up on connections idle too
        long or stuck in their TLS handshake (a peer must not hold a descriptor forever)."""
        now = self.clock()
        if self._accept_paused_at is not None and now - self._accept_paused_at >= ACCEPT_RETRY_S:
            self._resume_accepting()
        if now - self._swept_at < min(1.0, self.handshake_timeout, self.idle_timeout):
            return
        self._swept_at = now
        for conn, since in list(self._last_active.items()):
            limit = self.handshake_timeout if conn in self._handshaking else self.idle_timeout
            if now - since >= limit:
                with self._lock:
                    self.stats.timeouts += 1
                self._drop(conn)

    def _resume_accepting(self):
        if self._accept_paused_at is not None and not self._stopping:
            self._accept_paused_at = None
            self._sel.register(self.sock, selectors.EVENT_READ, None)

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EMFILE/ENFILE/ENOBUFS/ENOMEM: the pending connection stays queued; stop
                # polling the listener (it would spin) until a descriptor frees up.
                with self._lock:
                    self.stats.accept_errors += 1
                    first = self.stats.accept_errors == 1
                if first or exc.errno not in (errno.EMFILE, errno.ENFILE):
                    print(f"logpool receive: accept failed: {exc}; still serving, accepting "
                          f"again when descriptors free up", file=sys.stderr, flush=True)
                self._sel.unregister(self.sock)
                self._accept_paused_at = self.clock()
                return
            conn.setblocking(False)
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True,
                                            do_handshake_on_connect=False)
                self._handshaking.add(conn)
            self._partial[conn] = bytearray()
            self._last_active[conn] = self.clock()
            self._sel.register(conn, selectors.EVENT_READ, "conn")
            with self._lock:
                self.stats.connections += 1

    def _read_datagrams(self):
        while True:
            try:
                data = self.sock.recv(1 << 17)
            except (BlockingIOError, InterruptedError):
                return
            self.out.write(frame_datagram(self.framing, data))
            self._dirty = True
            with self._lock:
                self.stats.messages += 1
                self.stats.bytes += len(data)
                self.stats.reads += 1

    def _handshake(self, conn):
        """True once the TLS handshake is done; False while it needs more, or failed."""
        try:
            conn.do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False
        except (ssl.SSLError, OSError):
            with self._lock:
                self.stats.tls_failures += 1
            self._drop(conn)
            return False
        self._handshaking.discard(conn)
        if conn.session_reused:
            with self._lock:
                self.stats.tls_resumed += 1
        return True

    def _read(self, conn, drain=False):
        """Read what is there. Returns False once the connection is gone."""
        if conn in self._handshaking and not self._handshake(conn):
            return conn in self._partial
        tls = isinstance(conn, ssl.SSLSocket)
        while True:
            try:
                data = conn.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError,
                    ssl.SSLWantWriteError):
                return True
            except OSError:
                data = b""
            if not data:
                self._drop(conn)
                return False
            if not self._consume(conn, data):
                return False
            # TLS may hold decrypted bytes that poll() cannot see: take them now.
            if not drain and not (tls and conn.pending()):
                return True

    def _split(self, buf, new):
        """split_messages over buf, whose last `new` bytes just arrived: a newline stream
        is searched only in them (the rest holds no newline), so a long line costs linear
        time, not quadratic."""
        if self.framing != "newline":
            return split_messages(self.framing, buf)
        old = len(buf) - new
        last = buf.rfind(b"\n", old)
        if last < 0:
            return b"", 0, 0
        cut = last + 1
        return bytes(memoryview(buf)[:cut]), buf.count(b"\n", old, cut), cut

    def _consume(self, conn, data):
        buf = self._partial[conn]
        buf += data
        self._last_active[conn] = self.clock()
        if self.relp:
            return self._consume_relp(conn, buf)
        try:
            complete, count, cut = self._split(buf, len(data))
            bad = False
        except FramingError as exc:
            (complete, count, cut), bad = exc.complete, True
        if cut:
            self.out.write(complete)
            self._dirty = True
            with self._lock:
                self.stats.messages += count
                self.stats.bytes += cut
                self.stats.reads += 1
            del buf[:cut]
        if not bad and (len(buf) > self.max_message_size or self._announces_too_much(buf)):
            # A partial message past the limit: the peer is broken or hostile. Hang up
            # rather than buffer without bound.
            with self._lock:
                self.stats.oversized += 1
            buf.clear()
            self._drop(conn)
            return False
        if bad:  # the stream cannot be resynchronised: hang up
            with self._lock:
                self.stats.framing_errors += 1
            buf.clear()
            self._drop(conn)
            return False
        return True

    def _consume_relp(self, conn, buf):
        """RELP server side: answer open and close, write each syslog command's message out,
        flush, and only then acknowledge it ("rsp 200 OK"): an acknowledged message is in
        the output file (the page cache), so a collector killed after the reply loses
        nothing the sender let go of."""
        try:
            pos, replies, count, size, close = self._relp_frames(buf)
        except OSError:  # not RELP: hang up
            with self._lock:
                self.stats.framing_errors += 1
            buf.clear()
            self._drop(conn)
            return False
        del buf[:pos]
        if count:
            self._flush_out()  # written out before it is acknowledged
            with self._lock:
                self.stats.messages += count
                self.stats.bytes += size
                self.stats.reads += 1
        if replies:
            try:
                conn.settimeout(5)  # replies are small; a peer that takes none is gone
                conn.sendall(b"".join(replies))
                conn.setblocking(False)
            except OSError:
                self._drop(conn)
                return False
        if close or len(buf) > self.max_message_size + 64:
            if not close:
                with self._lock:
                    self.stats.oversized += 1
            buf.clear()
            self._drop(conn)
            return False
        return True

    def _relp_frames(self, buf):
        """Write out the syslog commands of buf; (bytes used, replies, messages, bytes,
        close seen). Runs of syslog commands take the fast path: one regex match each, one
        write and one reply buffer for all of them."""
        from logpool.transports.relp import FRAME_HEAD, OFFERS, RelpTransport
        ok = b" rsp 6 200 OK\n"
        replies, acks, pieces = [], [], []
        pos = count = size = 0
        suffix = b"\n" if self.framing == "newline" else None
        view = memoryview(buf)
        try:
            while True:
                m = FRAME_HEAD.match(buf, pos)
                if m is not None and m.group(2) == b"syslog" and suffix is not None:
                    start = m.end()
                    end = start + int(m.group(3))
                    if len(buf) <= end:
                        break
                    if buf[end] != 0x0A:
                        raise OSError("a RELP frame without its trailer")
                    pieces += (view[start:end], suffix)
                    acks.append(m.group(1))
                    count, size, pos = count + 1, size + end - start, end + 1
                    continue
                frame = RelpTransport._parse_frame(buf, pos)
                if frame is None:
                    break
                if acks:  # replies keep the order of the commands
                    replies.append(ok.join(acks) + ok)
                    acks = []
                txnr, command, data, pos = frame
                if command == b"syslog":
                    pieces.append(frame_datagram(self.framing, data))
                    count, size = count + 1, size + len(data)
                    replies.append(b"%d rsp 6 200 OK\n" % txnr)
                elif command == b"open":
                    offer = b"200 OK\n" + OFFERS.replace(b"logpool,", b"logpool-receive,")
                    replies.append(b"%d rsp %d %s\n" % (txnr, len(offer), offer))
                elif command == b"close":
                    replies.append(b"%d rsp 0\n" % txnr)
                    return pos, replies, count, size, True
                else:
                    reply = b"500 unknown command " + command[:64]
                    replies.append(b"%d rsp %d %s\n" % (txnr, len(reply), reply))
            if acks:
                replies.append(ok.join(acks) + ok)
            return pos, replies, count, size, False
        finally:
            if pieces:
                self.out.write(b"".join(pieces))
            del pieces
            view.release()

    def _announces_too_much(self, buf):
        """An octet-counting header announcing more than max_message_size."""
        if self.framing != "octet-counting":
            return False
        m = OCTET_HEADER.match(buf)
        return m is not None and int(m.group(1)) > self.max_message_size

    def _drop(self, conn):
        self._handshaking.discard(conn)
        self._last_active.pop(conn, None)
        torn = self._partial.pop(conn, b"")
        if torn:
            with self._lock:
                self.stats.torn += 1
        try:
            self._sel.unregister(conn)
        except (KeyError, ValueError):
            pass
        conn.close()
        self._flush_out()
        self._resume_accepting()  # a descriptor is free again

    def _flush_out(self):
        self._dirty = False
        try:
            self.out.flush()
        except (OSError, ValueError):
            pass

    def _shutdown(self):
        if self._accept_paused_at is None:
            self._sel.unregister(self.sock)
        self._accept_paused_at = -1.0  # never accept again
        if self.datagram:
            self._read_datagrams()  # what is queued now
        if self.sock.family == socket.AF_UNIX:
            path = self.sock.getsockname()
            self.sock.close()
            try:
                os.unlink(path)
            except OSError:
                pass
        else:
            self.sock.close()
        for conn in list(self._partial):
            if conn.family == socket.AF_UNIX:
                # Writers now get EPIPE; what they wrote before is still queued: drain it.
                try:
                    conn.shutdown(socket.SHUT_RD)
                except OSError:
                    pass
            deadline = time.monotonic() + 2.0
            while conn in self._partial and time.monotonic() < deadline:
                if self._read(conn, drain=True) and conn.family != socket.AF_UNIX:
                    break  # TCP: take what is queued now, nothing more is promised
                if conn in self._partial:
                    select.select([conn], [], [], 0.05)
            if conn in self._partial:
                self._drop(conn)
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()


def main(listen, out_path=None, framing="newline", cert_file=None, key_file=None,
         client_ca_file=None, mode=DEFAULT_SOCKET_MODE,
         max_message_size=DEFAULT_MAX_MESSAGE_SIZE, idle_timeout=DEFAULT_IDLE_TIMEOUT_S,
         handshake_timeout=DEFAULT_HANDSHAKE_TIMEOUT_S):
    out = open(out_path, "ab") if out_path else sys.stdout.buffer
    try:
        tls = server_tls_context(cert_file, key_file, client_ca_file) if cert_file else None
        receiver = make_receiver(listen, out, framing=framing, tls=tls, mode=mode,
                            max_message_size=max_message_size, idle_timeout=idle_timeout,
                            handshake_timeout=handshake_timeout)
    except (OSError, ValueError) as exc:
        print(f"logpool receive: cannot listen on {listen}: {exc}", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: receiver.request_stop())
    print(f"logpool receive: {framing} framing, listening on {receiver.url}", file=sys.stderr,
          flush=True)
    receiver.serve_forever()
    s = receiver.stats
    print(f"logpool receive: stopped: {s.connections} connections, {s.messages} messages, "
          f"{s.bytes} bytes, {s.torn} torn messages dropped, {s.oversized} oversized, "
          f"{s.timeouts} timed out, {s.accept_errors} accept errors", file=sys.stderr,
          flush=True)
    if out_path:
        out.close()
    return 0


class HttpReceiver:
    """`logpool receive --listen http://host:port/path`: a collector for HTTP sinks (the
    standard library's threading HTTP server). Decodes gzip and zstd bodies, NDJSON and JSON
    arrays, writes each message out in the receiver's framing, flushes, then answers 200.
    The same start/stop/snapshot/url interface as Receiver."""

    def __init__(self, listen, out, framing="newline", tls=None, max_message_size=None,
                 **_ignored):
        import http.server
        from logpool.config import parse_url
        scheme, (host, port, self.path) = parse_url("--listen", listen, allow_port_zero=True)
        receiver = self
        self.framing, self.out, self.stats = framing, out, ReceiverStats()
        self.max_body = max_message_size or DEFAULT_MAX_MESSAGE_SIZE
        self._lock = threading.Lock()
        self.requests = []  # (method, path, headers) of every request, for tests

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive

            def log_message(self, *args):
                pass

            def do_POST(self):
                receiver._handle(self)

            do_PUT = do_POST

        class Server(http.server.ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        self.server = Server((host, port), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        bound_host, bound_port = self.server.server_address[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.url = f"{scheme}://{shown}:{bound_port}{self.path}"
        self._thread = None

    def _handle(self, request):
        length = int(request.headers.get("Content-Length") or 0)
        with self._lock:
            self.requests.append((request.command, request.path, dict(request.headers)))
            self.stats.connections = len({id(t) for t in threading.enumerate()})
        if length > self.max_body * 4:
            request.send_error(413, "body too large")
            return
        body = request.rfile.read(length)
        try:
            messages = decode_http_body(body, request.headers.get("Content-Encoding", ""),
                                        request.headers.get("Content-Type", ""))
        except ValueError as exc:
            with self._lock:
                self.stats.framing_errors += 1
            request.send_error(400, str(exc)[:200])
            return
        with self._lock:
            self.out.write(b"".join(frame_datagram(self.framing, m) for m in messages))
            self.out.flush()  # written out before it is acknowledged
            self.stats.messages += len(messages)
            self.stats.bytes += sum(map(len, messages))
            self.stats.reads += 1
        request.send_response(200)
        request.send_header("Content-Length", "0")
        request.end_headers()

    def start(self):
        self._thread = threading.Thread(target=self.serve_forever, name="logpool-http-receiver",
                                        daemon=True)
        self._thread.start()
        return self

    def serve_forever(self):
        self.server.serve_forever(poll_interval=0.1)

    def request_stop(self):
        threading.Thread(target=self.server.shutdown, daemon=True).start()

    def stop(self, timeout=10):
        self.server.shutdown()
        self.server.server_close()
        if self._thread is not None:
            self._thread.join(timeout)

    def snapshot(self):
        with self._lock:
            return ReceiverStats(**vars(self.stats))


def decode_http_body(body, encoding, content_type):
    """The messages of an HTTP sink's request body: gzip or zstd, then NDJSON or a JSON
    array (each element re-encoded compactly). ValueError when it is none of these."""
    import json
    import zlib
    encoding = encoding.strip().lower()
    try:
        if encoding == "gzip":
            body = zlib.decompress(body, 47)  # 47: a gzip or zlib header
        elif encoding == "zstd":
            import zstandard
            body = zstandard.ZstdDecompressor().decompressobj().decompress(body)
        elif encoding not in ("", "identity"):
            raise ValueError(f"unsupported Content-Encoding {encoding!r}")
    except (zlib.error, ImportError) as exc:
        raise ValueError(f"cannot decode the body: {exc}") from None
    if "application/json" in content_type:
        try:
            values = json.loads(body)
        except ValueError as exc:
            raise ValueError(f"not a JSON array: {exc}") from None
        if not isinstance(values, list):
            raise ValueError("not a JSON array")
        return [json.dumps(v, separators=(",", ":"), ensure_ascii=False).encode()
                for v in values]
    return [line for line in body.split(b"\n") if line]


def make_receiver(listen, out, **options):
    """Receiver, or HttpReceiver for http:// and https:// listeners."""
    if listen.split(":", 1)[0].lower() in ("http", "https"):
        return HttpReceiver(listen, out, **options)
    return Receiver(listen, out, **options)
