import io
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import zlib

import pytest

import logpool
from logpool import _binding
from logpool.receive import Receiver
from logpool.receive.http import HttpProtocol

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable


from logpool.tools.nginx import wait_for as _wait_for  # noqa: E402


# The scripted HTTP collector's fixture (`peer`), for test_http.py and the backend formats'
# tests (test_backends.py, test_<format>.py); a real nginx with the native module (`nginx`),
# for the module's tests.
pytest_plugins = ("httppeer", "nativenginx")

def wait_for(predicate, timeout=30.0, interval=0.005, what="condition"):
    """Poll a condition until it holds or the deadline passes (no blind sleeps). The
    deadline only bounds a failure: a loaded 2-core CI machine must not fail a good run."""
    return _wait_for(predicate, timeout=timeout, interval=interval, what=what)


def sock_path(tmp_path, name="sink.sock"):
    # sun_path is limited to 107 bytes; pytest's tmp_path can be long.
    path = str(tmp_path / name)
    if len(path) > 100:
        short = os.path.join("/tmp", f"lp-{os.getpid()}-{abs(hash(path)) % 10**8}")
        os.makedirs(short, exist_ok=True)
        path = os.path.join(short, name)
    return path


class LockedBytes(io.RawIOBase):
    """What an in-process receiver wrote; readable while it runs."""

    def __init__(self):
        self._buf = bytearray()
        self._lock = threading.Lock()

    def writable(self):
        return True

    def write(self, data):
        with self._lock:
            self._buf += data
        return len(data)

    def getvalue(self):
        with self._lock:
            return bytes(self._buf)

    def lines(self):
        return self.getvalue().splitlines()


class RecordingHttp(HttpProtocol):
    def received(self, method, target, headers):
        self.receiver.requests.append((method, target, dict(headers)))


class ProbedReceiver(Receiver):
    """The shipped Receiver plus the seams tests need: every HTTP request's head
    (`requests`), reading stopped (`pause_reading`), connections reset (`drop_connections`)."""
    PROTOCOLS = {**Receiver.PROTOCOLS, "http": RecordingHttp, "https": RecordingHttp}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.requests = []  # (method, target, headers)

    def pause_reading(self):
        """Stop reading connections (the writers' sends then stall) until they are dropped.
        Returns once the receiver's thread has stopped reading."""
        def unregister_all():
            for conn in self.connections:
                if conn.events:
                    self._sel.unregister(conn.sock)
                    conn.events = 0
        self.run_in_loop(unregister_all)

    def drop_connections(self):
        """Close every connection now, unread bytes and all (the peer gets a reset): a
        collector that crashes, as far as its writers can tell. Returns once they are."""
        def drop_all():
            for conn in list(self.connections):
                self.drop(conn)
        self.run_in_loop(drop_all)


@pytest.fixture
def receiver(tmp_path):
    """A real collector on a unix socket, in a thread of this process."""
    started = []

    def start(listen=None, **options):
        out = LockedBytes()
        r = ProbedReceiver(listen or "unix:" + sock_path(tmp_path, f"r{len(started)}.sock"),
                           out, **options)
        r.output = out
        r.start()
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()


class ReceiveProcess:
    """`python -m logpool receive` as a real separate process."""

    def __init__(self, listen, out_path, args=()):
        self.listen = listen
        self.out_path = out_path
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "logpool", "receive", "--listen", listen, "--out", out_path,
             *args],
            stderr=subprocess.PIPE, text=True, cwd=ROOT)
        line = self.proc.stderr.readline()
        if "listening on" not in line:
            raise AssertionError(f"receiver did not start: {line!r} {self.proc.stderr.read()}")
        self.url = line.rsplit(" ", 1)[1].strip()

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=15)
        self.summary = self.proc.stderr.read()
        self.proc.stderr.close()
        return self.proc.returncode

    def lines(self):
        with open(self.out_path, "rb") as f:
            return f.read().splitlines()

    def complete_lines(self):
        """Lines up to the last newline: a SIGKILL can cut the receiver's own write() to its
        output file short, leaving a partial last line that logpool never sent that way."""
        with open(self.out_path, "rb") as f:
            data = f.read()
        return data[:data.rfind(b"\n") + 1].splitlines()


@pytest.fixture
def receive_process(tmp_path):
    procs = []

    def start(listen=None, out_path=None, args=()):
        p = ReceiveProcess(listen or "unix:" + sock_path(tmp_path, "proc.sock"),
                           out_path or str(tmp_path / "received.log"), args)
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.proc.poll() is None:
            p.stop(signal.SIGKILL)


@pytest.fixture
def test_ca(tmp_path):
    """A CA made for this test: .ca_file, .issue(label, names, client, expired)."""
    from tlsca import TestCA
    return TestCA(str(tmp_path))


@pytest.fixture
def pools():
    """Pools made through this fixture are closed at the end of the test."""
    made = []

    def make(config):
        p = logpool.Pool(config)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close(timeout=0.5)


def message(sink, seq, size=None, length=None):
    """A self-checking line: sink, sequence, crc32 of the payload, payload. `size` is the
    payload's length, `length` the whole line's."""
    payload = (b"%d-%d:" % (sink, seq)) * 4
    if length is not None:
        size = length - len(b"%d %d 00000000 \n" % (sink, seq))
    if size is not None:
        payload = (payload * (size // max(1, len(payload)) + 1))[:max(0, size)]
    return b"%d %d %08x %s\n" % (sink, seq, zlib.crc32(payload), payload)


def octet_frames(data):
    """RFC 6587 octet-counted frames -> messages; the whole input must be frames."""
    out, pos = [], 0
    while pos < len(data):
        space = data.index(b" ", pos)
        size = int(data[pos:space])
        out.append(data[space + 1:space + 1 + size])
        pos = space + 1 + size
    assert pos == len(data), "a torn frame was written out"
    return out


def steady_producer(pool, n, size=lambda i: i % 300):
    """A thread logging message(0, i) for i < n as a steady stream rather than one burst;
    returns (thread, event set once half of them are logged)."""
    half = threading.Event()

    def produce():
        for i in range(n):
            pool.log(0, message(0, i, size=size(i)))
            if i == n // 2:
                half.set()
            if i % 200 == 0:
                time.sleep(0.001)

    t = threading.Thread(target=produce)
    t.start()
    return t, half


LINE = re.compile(rb"^(\d+) (\d+) ([0-9a-f]{8}) (.*)$", re.S)


def parse_line(line):
    """(sink, seq) of an intact line; AssertionError for a damaged one."""
    m = LINE.match(line[:-1] if line.endswith(b"\n") else line)
    assert m is not None, f"damaged line {line[:80]!r}"
    assert int(m.group(3), 16) == zlib.crc32(m.group(4)), f"bad checksum {line[:80]!r}"
    return int(m.group(1)), int(m.group(2))


class Load:
    """wrk against a real nginx for as long as the test needs rather than for a fixed time:
    the test waits until the access log holds enough requests, then stops it. A fixed
    duration makes the amount of work depend on the machine: a slow one may not reach what
    the test needs, a fast one may produce more than a fixed capacity holds (issue 22: 300,000
    lines in 3 s outran the Kafka mock's retention). Use as a context manager: wrk never
    outlives the test."""

    def __init__(self, ng, connections=8):
        from logpool.tools.nginx import wrk
        self.ng = ng
        self.proc = wrk(ng.port, seconds=600, connections=connections)  # an upper bound only

    def requests(self):
        """Requests nginx has logged so far (the harness's readiness probe included)."""
        try:
            with open(self.ng.access_log, "rb") as f:
                return f.read().count(b"\n")
        except FileNotFoundError:
            return 0

    def wait_requests(self, n, what="requests"):
        """Waits until at least n requests are logged; returns how many are."""
        return wait_for(lambda: (lambda c: c >= n and c)(self.requests()), timeout=120,
                        interval=0.01, what=f"{n} {what}")

    def stop(self):
        """Stops wrk (SIGINT: it prints its figures and exits 0); returns its output."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        output, _ = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, output
        return output

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            if exc[0] is None:
                self.stop()
            else:
                self.proc.kill()
                self.proc.communicate(timeout=60)


def lua_cdef():
    return _binding.cdef_block(logpool.paths.header_path())


def luajit_binary():
    path = shutil.which("luajit")
    assert path, "the luajit binary (Debian package luajit2) is required: run `make deps`"
    return path
