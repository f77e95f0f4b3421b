"""The connection every socket transport composes (stream, datagram, RELP, HTTP, forward):
name resolution within the connect deadline, connect with failover over the whole opening
exchange (socket connect, TLS handshake, the protocol's own open, given as `opening`), TLS
as an option (verification, SNI, session resumption across reconnects, close_notify), and
the waits of the opening exchange, each with the connect deadline and ended by the stop
flag. A transport owns one Connection for the life of its writer and decides what goes
over it; the Connection knows no protocol.
"""
import errno
import os
import select
import socket
import threading
import time

from logpool.transports.contract import (SLICE_S, HandshakeError, Outcome, Stopped,
                                         wait_io)
from logpool.transports.tls import handshake, read_nonblocking


class Collectors:
    """A sink's collectors in failover order, the one in use (tried first at the next
    connect) and, per collector, [connects, connect failures] for metrics."""

    def __init__(self, sink):
        self.all = sink.collectors or ((sink.url, sink.scheme, sink.address),)
        self.current = 0
        self.stats = {url: [0, 0] for url, _, _ in self.all}

    @property
    def url(self):
        return self.all[self.current][0]

    @property
    def address(self):
        return self.all[self.current][2]

    def next(self):
        """The collector in use failed: the next connect starts with the next one."""
        self.current = (self.current + 1) % len(self.all)

    def try_each(self, connect_one, after_failure):
        """connect_one() (the whole opening exchange) against each collector in failover
        order, from the current one; the first that works stays current. Returns
        Outcome.opened with the (url, error) of those that failed before it; raises the last
        failure when none works. after_failure() cleans up after each failed attempt."""
        last, skipped = None, []
        for _ in range(len(self.all)):
            url = self.url
            try:
                connect_one()
                self.stats[url][0] += 1
                return Outcome.opened(skipped)
            except Stopped:
                raise
            except OSError as exc:
                self.stats[url][1] += 1
                after_failure()
                skipped.append((url, exc))
                last = exc if len(self.all) == 1 else type(exc)(
                    exc.errno, f"{url}: {exc.strerror or exc}")
                self.next()
        raise last


class Connection:
    """One socket to the collector in use (``sock``; None: not connected)."""

    def __init__(self, sink, collectors, tls=None, faults=None, prepare=None):
        self.sink = sink
        self.collectors = collectors
        self.tls = tls  # TlsConfig, or None: plain
        self.faults = faults
        self.prepare = prepare  # prepare(sock, family) before connect (socket options)
        self.sock = None
        self.session = None  # the TLS session, offered again at the next handshake
        self.resumed = False  # the last handshake resumed a session

    def announce(self):
        if self.tls is not None and not self.tls.verify:
            return (f"{self.sink.url}: TLS certificate verification is off (verify = false): "
                    f"the collector's identity is not checked")
        return None

    def open(self, should_stop, opening=None):
        """Connect to the first collector whose whole opening exchange completes within
        connect_timeout_ms: socket, TLS, then opening(should_stop, deadline) (the protocol's
        own, over this connection). Returns Outcome.opened (the collectors that failed
        first); raises OSError (HandshakeError: TLS refused) or Stopped."""
        def connect_one():
            deadline = time.monotonic() + self.sink.connect_timeout_ms / 1000
            connect_socket(self.sink, self.collectors.address, should_stop, deadline,
                           self.faults, self.prepare,
                           lambda sock, family: self._established(sock, family, should_stop,
                                                                  deadline, opening))
        opened = self.collectors.try_each(connect_one, self.close)
        if self.tls is not None:
            self.resumed = self.sock.session_reused
            self.session = self.sock.session
        return opened

    def _established(self, sock, family, should_stop, deadline, opening):
        if family in (socket.AF_INET, socket.AF_INET6) and \
                self.sink.socket_type == socket.SOCK_STREAM:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:
            sock = handshake(sock, self.sink, self.tls,
                             self.tls.server_name or self.collectors.address[0], self.session,
                             deadline, should_stop)
        self.sock = sock
        if opening is not None:
            try:
                opening(should_stop, deadline)
            except BaseException:
                self.sock = None  # (connect_socket closes it)
                raise
        return sock

    # -- the opening exchange: within the connect deadline, ended by stop --

    def send_all(self, data, should_stop, deadline, what):
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view):]
            except would_block():
                self.wait(select.POLLOUT, should_stop, deadline, what)

    def wait(self, events, should_stop, deadline, what):
        wait_io(self.sock, events, deadline, should_stop,
                f"{what} (connect_timeout_ms {self.sink.connect_timeout_ms})")

    # -- a stream --

    def send(self, views):
        """Bytes of `views` handed to the kernel (several chunks per sendmsg; over TLS one
        chunk per call: a retry after "want write" passes the same bytes again, as OpenSSL
        requires, and pending chunks never change)."""
        if self.tls is None:
            return self.sock.sendmsg(views, (), socket.MSG_NOSIGNAL)
        import ssl
        try:
            return self.sock.send(views[0])
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            raise BlockingIOError(errno.EAGAIN, "TLS: would block") from None

    def peer_closed(self):
        """For a collector that never talks back: readable means EOF or reset (its chatter
        is read and ignored; over TLS reading also takes in session tickets and alerts)."""
        if self.tls is not None:
            try:
                while (data := read_nonblocking(self.sock)) is not None:
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

    def wait_ready(self, events, timeout_s):
        """Wait for `events` at most timeout_s. True when the connection reported an error
        or a hang-up."""
        poller = select.poll()
        poller.register(self.sock, events)
        ready = poller.poll(timeout_s * 1000)
        return bool(ready and ready[0][1] & (select.POLLERR | select.POLLHUP))

    def close(self):
        if self.sock is None:
            return
        if self.tls is not None:
            if self.sock.session is not None:
                self.session = self.sock.session  # with the tickets that came since
            try:  # close_notify, so the collector sees a clean end, not a truncation
                self.sock.unwrap()
            except (OSError, ValueError):
                pass  # sent, or the connection is already gone: nothing to wait for
        try:
            self.sock.close()
        except OSError:
            pass
        self.sock = None


def would_block():
    """The exceptions of a non-blocking socket with nothing to do now (ssl's only once a TLS
    sink exists: plain workers never import ssl)."""
    import ssl
    return (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


def resolve(sink, address, deadline, should_stop, faults=None):
    """[(family, sockaddr)] of the sink, resolved within the connect deadline. getaddrinfo
    cannot be interrupted: it runs in a helper thread that is left behind (it ends on its
    own) when the deadline passes or the pool closes."""
    if sink.address_kind == "path":  # (address.PATH)
        return [(socket.AF_UNIX, address)]
    host, port = address[:2]
    delay = faults.resolve_delay_s if faults is not None and faults.hit("resolve_delay") else 0
    done = threading.Event()
    answer = {}

    def lookup():
        try:
            if delay:
                time.sleep(delay)  # the injected slow resolver
            answer["infos"] = socket.getaddrinfo(host, port, type=sink.socket_type)
        except UnicodeError as exc:  # a name IDNA cannot encode
            answer["error"] = OSError(errno.EINVAL, f"bad host name {host!r}: {exc}")
        except OSError as exc:
            answer["error"] = OSError(exc.errno or errno.EHOSTUNREACH,
                                      f"cannot resolve {host!r}: {exc.strerror or exc}")
        finally:
            done.set()

    threading.Thread(target=lookup, name="logpool-resolve", daemon=True).start()
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


def connect_socket(sink, address, should_stop, deadline, faults=None, prepare=None,
                   established=None):
    """A connected non-blocking socket to the first address `address` resolves to that
    answers (names are resolved again at every connect).
    prepare(sock, family) runs before connect; established(sock, family) after it and may
    return another object (a TLS socket); a HandshakeError it raises ends the search."""
    last_error = None
    for family, sockaddr in resolve(sink, address, deadline, should_stop, faults):
        sock = socket.socket(family, sink.socket_type)
        try:
            sock.setblocking(False)
            if prepare is not None:
                prepare(sock, family)
            rc = sock.connect_ex(sockaddr)
            if rc in (errno.EINPROGRESS, errno.EALREADY):
                wait_io(sock, select.POLLOUT, deadline, should_stop,
                        f"connect (connect_timeout_ms {sink.connect_timeout_ms})")
                rc = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if rc != 0:
                raise OSError(rc, os.strerror(rc))
            return established(sock, family) if established is not None else sock
        except HandshakeError:
            raise  # the next address would present the same certificate
        except Stopped:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            last_error = exc
            if time.monotonic() >= deadline:
                break  # the next address would only report the spent deadline
    raise last_error
