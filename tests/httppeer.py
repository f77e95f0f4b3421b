"""A scripted HTTP/1.1 collector on a real socket, for the HTTP sinks' tests: it parses each
request strictly (request line, headers, Content-Length body; gzip/zstd bodies decoded) and
answers with whatever raw bytes the test's `answer(request)` returns, so a test can answer
what no well-behaved server library would: interim 1xx answers, garbage, oversized headers,
a body trickled one byte at a time, a connection closed mid-answer, or nothing at all.

answer(request) returns a list of steps: bytes (sent as they are), TRICKLE (send one byte
every 0.5 s until the client goes away), HANG (never answer; wait until the peer stops),
CLOSE (close the connection)."""
import gzip
import socket
import threading
import time
from collections import namedtuple

import pytest

Request = namedtuple("Request", "method path headers body raw_length conn")
TRICKLE, HANG, CLOSE = "trickle", "hang", "close"


def response(status, body=b"", headers=None, reason="Test"):
    if isinstance(body, str):
        body = body.encode()
    head = [f"HTTP/1.1 {status} {reason}"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if status >= 200 and status not in (204, 304):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def interim(status, headers=None):
    head = [f"HTTP/1.1 {status} Interim"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode()


class Peer:
    def __init__(self, answer):
        self.answer = answer
        self.requests = []  # Request, in arrival order
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.connections = 0
        self.eofs = 0  # connections the client closed
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self):
        self.listener.settimeout(0.1)
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            with self.lock:
                self.connections += 1
                number = self.connections
            t = threading.Thread(target=self._serve, args=(conn, number), daemon=True)
            t.start()
            self.threads.append(t)

    def _serve(self, conn, number):
        conn.settimeout(0.2)
        buf = bytearray()
        try:
            while not self.stopping.is_set():
                request = self._read_request(conn, buf, number)
                if request is None:
                    with self.lock:
                        self.eofs += 1
                    return
                with self.lock:
                    self.requests.append(request)
                for step in self.answer(request):
                    if step == CLOSE:
                        return
                    if step == HANG:
                        self.stopping.wait()
                        return
                    if step == TRICKLE:
                        while not self.stopping.is_set():
                            conn.sendall(b"x")
                            if self.stopping.wait(0.5):
                                return
                        return
                    conn.sendall(step)
        except OSError:
            with self.lock:
                self.eofs += 1
        finally:
            conn.close()

    def _recv(self, conn, buf):
        while not self.stopping.is_set():
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            if not data:
                return False
            buf += data
            return True
        return False

    def _read_request(self, conn, buf, number):
        while b"\r\n\r\n" not in buf:
            if not self._recv(conn, buf):
                assert not buf, f"a torn request head: {bytes(buf[:80])!r}"
                return None
        head, _, rest = bytes(buf).partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, version = lines[0].split(" ")
        assert version == "HTTP/1.1", lines[0]
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            assert sep and name == name.strip() and name, f"bad header line {line!r}"
            assert name.lower() not in headers, f"header {name} twice"
            headers[name.lower()] = value.strip()
        assert "host" in headers
        length = int(headers["content-length"])
        buf[:] = rest
        while len(buf) < length:
            if not self._recv(conn, buf):
                return None  # cut mid-body by the client
        body = bytes(buf[:length])
        del buf[:length]
        encoding = headers.get("content-encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "zstd":
            import zstandard
            body = zstandard.ZstdDecompressor().decompressobj().decompress(body)
        return Request(method, path, headers, body, length, number)

    def close(self):
        self.stopping.set()
        self.listener.close()
        for t in self.threads:
            t.join(timeout=5)


@pytest.fixture
def peer():
    """make(answer) -> Peer; every peer made is closed at the end of the test."""
    made = []

    def make(answer):
        p = Peer(answer)
        made.append(p)
        return p
    yield make
    for p in made:
        p.close()


def elapsed(start):
    return time.monotonic() - start


def wait_for_log(capfd, text, timeout=30.0):
    """stderr (nginx's error log) once it holds `text`: the writer logs a refusal just after
    it counts it, so a test that reads the counters first waits for the line."""
    seen = ""
    deadline = time.monotonic() + timeout
    while True:
        seen += capfd.readouterr().err
        if text in seen or time.monotonic() >= deadline:
            return seen
        time.sleep(0.01)


def assert_logged(capfd, text):
    seen = wait_for_log(capfd, text)
    assert text in seen, seen
    return seen
