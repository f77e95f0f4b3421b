"""The receiver: one thread, one selector, every connection non-blocking.

The loop owns the listening socket and the connections: it accepts, runs each TLS
handshake step by step (never inside accept()), reads, hands the bytes to the connection's
protocol (stream, relp or http), and sends the protocol's replies from a bounded
per-connection buffer, so that no peer (silent, trickling, never reading) holds up another.
Deadlines: a connection must finish its opening (TLS handshake, RELP open, an HTTP
request head: the first, and each after an answer on a kept-alive connection) within
handshake_timeout and may stay silent idle_timeout; a peer whose unread replies pass
max_reply_backlog is dropped. A plain stream has no opening: logpool's writers connect
before they have a message and may stay quiet for long; silent peers are bounded by
max_connections instead (a new connection takes the place of one that never sent a byte).
An unexpected error while serving one connection (a bug) drops that connection, is counted
and logged once; the others are served on.

Stopping is graceful: the listener closes, and for unix sockets each connection is shut
down for reading and then drained, so every byte the kernel accepted from a writer is
either written out here or refused to the writer (EPIPE), which then resends it. TCP has no
such handshake: bytes in flight when a TCP receiver stops can be lost.
"""
import collections
import errno
import os
import select
import selectors
import socket
import ssl
import threading
import time
import traceback

from logpool.receive.connection import Connection, make_room_victim
from logpool.receive.http import HttpProtocol
from logpool.receive.listen import address_of, listen_socket
from logpool.receive.options import ReceiveOptions, ReceiverStats
from logpool.receive.output import Output, log
from logpool.receive.relp import RelpProtocol
from logpool.receive.stream import StreamProtocol

READ_SIZE = 1 << 18
SEND_SIZE = 1 << 18
ACCEPT_RETRY_S = 0.5  # out of descriptors: accept again this often (or when one frees up)
TLS_SCHEMES = ("tls", "relp+tls", "https")
WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
_WAKE, _LISTENER = "wake", "listener"


class Receiver:
    """Runs in its own thread (start/stop) or in the caller's (serve_forever)."""

    PROTOCOLS = {"relp": RelpProtocol, "relp+tls": RelpProtocol, "http": HttpProtocol,
                 "https": HttpProtocol}

    def __init__(self, listen, out, tls=None, clock=time.monotonic, **options):
        self.options = ReceiveOptions(**options)
        self.framing = self.options.framing
        self.clock = clock
        self.scheme, self.sock, self.path = listen_socket(listen, self.options.mode)
        if (self.scheme in TLS_SCHEMES) != (tls is not None):
            self.sock.close()
            raise ValueError(f"a {self.scheme}:// listener needs a certificate "
                             f"(tls=server_tls_context())" if tls is None else
                             f"{self.scheme}:// is not a TLS scheme; a certificate was given")
        self.protocol = self.PROTOCOLS.get(self.scheme, StreamProtocol)
        self.tls = tls
        self.datagram = self.sock.type == socket.SOCK_DGRAM
        self.url = address_of(self.scheme, self.sock, self.path)
        self.out = out
        self.output = Output(out, self._write_failed)
        self.max_connections = self.options.connection_limit()
        self.stats = ReceiverStats()
        self._lock = threading.Lock()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.sock, selectors.EVENT_READ, _LISTENER)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        self._stopping = False
        self._actions = collections.deque()  # (action, done event) for the loop's thread
        self._thread = None
        self.connections = set()
        self._accept_paused_at = None
        self._swept_at = clock()
        self._reported = set()  # what was logged once: "write", "internal", "full"

    # -- lifecycle --

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

    def run_in_loop(self, action, timeout=10):
        """Run action() in the receiver's thread, which owns the connections; wait for it."""
        done = threading.Event()
        self._actions.append((action, done))
        self._wake()
        if not done.wait(timeout):
            raise TimeoutError("the receiver's thread did not run the action")

    def _wake(self):
        try:
            self._wake_w.send(b"x")
        except OSError:  # full (a wake-up is pending anyway) or closed (stopped)
            pass

    def snapshot(self):
        with self._lock:
            return ReceiverStats(**vars(self.stats))

    def count(self, **deltas):
        with self._lock:
            for name, delta in deltas.items():
                setattr(self.stats, name, getattr(self.stats, name) + delta)

    # -- the output --

    def write(self, data):
        """Write whole messages out (no buffer: see output.py); False when the output
        refused them, and then nothing of them is kept."""
        return self.output.write(data)

    commit = write  # written is committed: an acknowledgement may follow

    def _write_failed(self, exc):
        self.count(write_errors=1)
        self._log_once("write", f"cannot write the output: {exc}; nothing more is "
                       f"acknowledged until it can")

    def _log_once(self, what, text):
        if what not in self._reported:
            self._reported.add(what)
            log(text)

    # -- the loop --

    def serve_forever(self):
        while not self._stopping:
            self._housekeeping()
            for key, events in self._sel.select(timeout=self._select_timeout()):
                if key.data is _WAKE:
                    self._run_actions()
                elif key.data is _LISTENER:
                    if self.datagram:
                        self.protocol.read_datagrams(self)
                    else:
                        self._accept()
                elif key.data.alive:
                    try:
                        self._service(key.data, events)
                    except Exception as exc:  # noqa: BLE001 — one peer never ends the loop
                        self._internal_error(key.data, exc)
        self._shutdown()

    def _internal_error(self, conn, exc):
        """A bug met while serving conn: drop conn only; count it, log the first one."""
        self.count(internal_errors=1)
        self._log_once("internal", "internal error serving a connection (dropped; still "
                       "serving the others; logged once):\n" + "".join(
                           traceback.format_exception(type(exc), exc, exc.__traceback__)))
        try:
            self.drop(conn)  # its descriptor is closed before its protocol is asked anything
        except Exception:  # noqa: BLE001
            pass

    def _run_actions(self):
        try:
            self._wake_r.recv(64)
        except BlockingIOError:
            pass
        while self._actions:
            action, done = self._actions.popleft()
            action()
            done.set()

    def _select_timeout(self):
        if self._accept_paused_at is not None:
            return ACCEPT_RETRY_S
        return min(1.0, self.options.handshake_timeout / 2, self.options.idle_timeout / 2)

    def _housekeeping(self):
        """Accept again after running out of descriptors; hang up on connections idle too
        long or not done opening in time (a peer must not hold a descriptor forever)."""
        now = self.clock()
        if self._accept_paused_at is not None and now - self._accept_paused_at >= ACCEPT_RETRY_S:
            self._resume_accepting()
        if now - self._swept_at < self._select_timeout():
            return
        self._swept_at = now
        opts = self.options
        for conn in list(self.connections):
            opening = conn.handshaking or conn.opening
            if (opening and now - conn.accepted_at >= opts.handshake_timeout
                    or now - conn.active_at >= opts.idle_timeout):
                self.count(timeouts=1)
                self.drop(conn)

    def _resume_accepting(self):
        if self._accept_paused_at is not None and not self._stopping:
            self._accept_paused_at = None
            self._sel.register(self.sock, selectors.EVENT_READ, _LISTENER)

    def _accept(self):
        while True:
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EMFILE/ENFILE/ENOBUFS/ENOMEM: the pending connection stays queued; stop
                # polling the listener (it would spin) until a descriptor frees up.
                self.count(accept_errors=1)
                if self.stats.accept_errors == 1 or exc.errno not in (errno.EMFILE,
                                                                      errno.ENFILE):
                    log(f"accept failed: {exc}; still serving, accepting again when "
                        f"descriptors free up")
                self._sel.unregister(self.sock)
                self._accept_paused_at = self.clock()
                return
            if len(self.connections) >= self.max_connections and not self._make_room():
                sock.close()  # full of senders heard from lately: this one waits its turn
                continue
            sock.setblocking(False)
            if self.tls is not None:  # the handshake runs in the loop, step by step
                try:
                    sock = self.tls.wrap_socket(sock, server_side=True,
                                                do_handshake_on_connect=False)
                except OSError:  # the peer is gone already
                    sock.close()
                    continue
            conn = Connection(sock, self.clock(), handshaking=self.tls is not None)
            conn.proto = self.protocol(self, conn)
            self.connections.add(conn)
            self._interest(conn)
            self.count(connections=1)

    def _make_room(self):
        """At max_connections: drop the connection a new one replaces (True), or count the
        new one turned away (False)."""
        victim = make_room_victim(self.connections, self.clock(),
                                  self.options.handshake_timeout)
        self._log_once("full", f"{self.max_connections} connections (--max-connections): "
                       f"new ones replace silent ones, or are closed")
        if victim is None:
            self.count(turned_away=1)
            return False
        self.count(evicted=1)
        self.drop(victim)
        return True

    def reopening(self, conn):
        """conn waits for a new opening (HTTP: the next request head): a new deadline."""
        conn.opening, conn.accepted_at = True, self.clock()

    def _service(self, conn, events):
        if conn.handshaking and not self._handshake(conn):
            return
        if events & selectors.EVENT_WRITE and conn.out:
            if not self.send(conn):
                return
        if events & selectors.EVENT_READ or conn.handshake_wants_write:
            conn.handshake_wants_write = False
            self.read(conn)

    def _handshake(self, conn):
        """True once the TLS handshake is done; False while it needs more, or failed."""
        try:
            conn.sock.do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as exc:
            conn.handshake_wants_write = isinstance(exc, ssl.SSLWantWriteError)
            self._interest(conn)
            return False
        except (ssl.SSLError, OSError):
            self.count(tls_failures=1)
            self.drop(conn)
            return False
        conn.handshaking = False
        conn.handshake_wants_write = True  # read at once: the peer may have sent data
        if conn.sock.session_reused:
            self.count(tls_resumed=1)
        self._interest(conn)
        return True

    def read(self, conn, drain=False):
        """Read what is there (all of it when draining). False once the connection is gone."""
        tls = self.tls is not None
        while not conn.closing:
            try:
                data = conn.sock.recv(READ_SIZE)
            except WOULD_BLOCK:
                break
            except OSError:
                data = b""
            if not data:
                self.drop(conn)
                return False
            conn.active_at, conn.heard = self.clock(), True
            if not conn.proto.feed(data):
                self.drop(conn)
                return False
            # TLS may hold decrypted bytes that poll() cannot see: take them now.
            if not drain and not (tls and conn.sock.pending()):
                break
        return self.send(conn)

    def send(self, conn):
        """Send what replies the peer takes now; drop a peer that leaves too many unread."""
        while conn.out:
            try:
                sent = conn.sock.send(bytes(conn.out[:SEND_SIZE]))
            except WOULD_BLOCK:
                break
            except OSError:
                self.drop(conn)
                return False
            del conn.out[:sent]
        if len(conn.out) > self.options.max_reply_backlog:
            self.count(slow_readers=1)
            self.drop(conn)
            return False
        if conn.closing and not conn.out:
            self.drop(conn)
            return False
        self._interest(conn)
        return True

    def _interest(self, conn):
        if conn.handshaking:
            events = selectors.EVENT_WRITE if conn.handshake_wants_write else selectors.EVENT_READ
        else:
            events = (0 if conn.closing else selectors.EVENT_READ) | \
                (selectors.EVENT_WRITE if conn.out else 0)
        if events == conn.events:
            return
        if conn.events == 0:
            self._sel.register(conn.sock, events, conn)
        elif events == 0:
            self._sel.unregister(conn.sock)
        else:
            self._sel.modify(conn.sock, events, conn)
        conn.events = events

    def drop(self, conn):
        """Hang up on conn now (its unread bytes and unsent replies with it)."""
        if not conn.alive:
            return
        conn.alive = False
        self.connections.discard(conn)
        if conn.events:
            self._sel.unregister(conn.sock)
            conn.events = 0
        conn.sock.close()
        self._resume_accepting()
        if conn.proto is not None and conn.proto.torn():
            self.count(torn=1)  # a descriptor is free again

    def _shutdown(self):
        if self._accept_paused_at is None:
            self._sel.unregister(self.sock)
        self._accept_paused_at = -1.0  # never accept again
        if self.datagram:
            self.protocol.read_datagrams(self)  # what is queued now
        if self.sock.family == socket.AF_UNIX:
            path = self.sock.getsockname()
            self.sock.close()
            try:
                os.unlink(path)
            except OSError:
                pass
        else:
            self.sock.close()
        for conn in list(self.connections):
            self._drain(conn)
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def _drain(self, conn):
        if conn.sock.family == socket.AF_UNIX and not conn.handshaking:
            # Writers now get EPIPE; what they wrote before is still queued: drain it.
            try:
                conn.sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass
        deadline = time.monotonic() + 2.0
        while (conn.alive and not conn.handshaking and not conn.closing
               and time.monotonic() < deadline):
            if self.read(conn, drain=True) and conn.sock.family != socket.AF_UNIX:
                break  # TCP: take what is queued now, nothing more is promised
            if conn.alive:
                select.select([conn.sock], [], [], 0.05)
        self.drop(conn)
