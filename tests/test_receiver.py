"""`logpool receive` against hostile clients: each test runs a real `python -m logpool
receive` process and talks to it over real sockets, as a broken or malicious peer would."""
import http.client
import re
import resource
import signal
import socket
import ssl
import subprocess
import threading
import time
import zlib

import pytest

from conftest import PYTHON, ROOT, ReceiveProcess, wait_for
from logpool.protocols.relp import parse_frame

DEADLINE_S = 10  # every wait on the receiver ends; a stall in the old receiver was 5 s+


def host_port(url):
    rest = url.split("://", 1)[1].split("/", 1)[0]
    host, port = rest.rsplit(":", 1)
    return host.strip("[]"), int(port)


def connect(url, timeout=DEADLINE_S):
    s = socket.create_connection(host_port(url), timeout=timeout)
    return s


def read_response(sock):
    """(status, body) of the next HTTP response on sock; the socket's timeout bounds it."""
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    return resp.status, resp.read()


def post(sock, body, path="/ingest", headers=()):
    head = [f"POST {path} HTTP/1.1", "Host: localhost", *headers]
    if not any(h.lower().startswith(("content-length", "transfer-encoding")) for h in headers):
        head.append(f"Content-Length: {len(body)}")
    sock.sendall("\r\n".join(head).encode() + b"\r\n\r\n" + body)
    return read_response(sock)


def hung_up(sock):
    """True once the peer closed (EOF or reset); raises socket.timeout past the deadline."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.fixture
def tls_args(test_ca):
    cert, key = test_ca.issue("server")
    return ["--cert-file", cert, "--key-file", key]


@pytest.fixture
def client_tls(test_ca):
    ctx = ssl.create_default_context(cafile=test_ca.ca_file)
    return ctx


# -- HTTPS: the handshake runs in the loop, per connection ----------------------------------

def test_an_idle_tcp_client_on_https_blocks_no_one_and_sigterm_stops_the_receiver(
        receive_process, tls_args, client_tls):
    rp = receive_process("https://127.0.0.1:0/ingest", args=tls_args)
    idle = connect(rp.url)  # connects, never starts its TLS handshake
    conn = http.client.HTTPSConnection("localhost", host_port(rp.url)[1], context=client_tls,
                                       timeout=DEADLINE_S)
    started = time.monotonic()
    conn.request("POST", "/ingest", body=b'{"a":1}\n',
                 headers={"Content-Type": "application/x-ndjson"})
    assert conn.getresponse().status == 200
    # Not after the idle client's handshake deadline (10 s by default); the rest of that
    # is slack for a loaded machine.
    assert time.monotonic() - started < 8
    assert rp.lines() == [b'{"a":1}']
    rp.proc.terminate()  # with the idle client still connected
    assert rp.proc.wait(timeout=DEADLINE_S) == 0
    idle.close()
    conn.close()


# -- HTTP: what a request announces is bounded ----------------------------------------------

@pytest.mark.parametrize("length, status", [("-1", 400), ("+5", 400), ("0x10", 400),
                                            ("99999999999999", 413)])
def test_a_content_length_not_a_size_or_past_the_limit_is_refused_at_once(
        receive_process, length, status):
    rp = receive_process("http://127.0.0.1:0/ingest")
    with connect(rp.url) as s:
        got, _ = post(s, b"", headers=[f"Content-Length: {length}"])  # no body follows
        assert got == status
        assert hung_up(s)  # an error answer ends the connection
    assert rp.stop() == 0 and rp.lines() == []


def bomb(encoding, size=256 << 20):
    """`size` zero bytes compressed: a few hundred KiB on the wire."""
    piece = bytes(1 << 20)
    if encoding == "gzip":
        c = zlib.compressobj(9, zlib.DEFLATED, 31)
        return b"".join(c.compress(piece) for _ in range(size >> 20)) + c.flush()
    import zstandard
    c = zstandard.ZstdCompressor().compressobj()
    return b"".join(c.compress(piece) for _ in range(size >> 20)) + c.flush()


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_a_compression_bomb_is_refused_with_413_and_memory_stays_bounded(
        receive_process, encoding):
    rp = receive_process("http://127.0.0.1:0/ingest")
    body = bomb(encoding)
    assert len(body) < 1 << 20
    with connect(rp.url) as s:
        status, _ = post(s, body, headers=["Content-Type: application/x-ndjson",
                                           f"Content-Encoding: {encoding}"])
    assert status == 413
    # The default limit is 16 MiB decoded: the 256 MiB the bomb holds are never inflated.
    assert peak_rss_kib(rp.proc.pid) < 120 * 1024
    assert rp.stop() == 0 and rp.lines() == []
    assert "1 oversized" in rp.summary


def chunked(*pieces):
    return b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\nX-T: 1\r\n\r\n"


def test_a_chunked_request_is_decoded_and_written_and_bounded(receive_process):
    rp = receive_process("http://127.0.0.1:0/ingest", args=["--max-message-size", "4096"])
    with connect(rp.url) as s:
        status, _ = post(s, chunked(b'{"seq":1}\n{"se', b'q":2}\n'),
                         headers=["Transfer-Encoding: chunked"])
        assert status == 200
        wait_for(lambda: rp.lines() == [b'{"seq":1}', b'{"seq":2}'], timeout=DEADLINE_S,
                 what="the chunked request's messages")
        status, _ = post(s, b'{"seq":3}\n', headers=["Content-Length: 10"])
        assert status == 200  # the connection stays usable after a chunked request
    with connect(rp.url) as s:
        status, _ = post(s, chunked(b"x" * 3000, b"y" * 3000),
                         headers=["Transfer-Encoding: chunked"])
        assert status == 413
    with connect(rp.url) as s:
        status, _ = post(s, b"", headers=["Transfer-Encoding: gzip, chunked"])
        assert status == 501
    assert rp.stop() == 0
    assert rp.lines() == [b'{"seq":1}', b'{"seq":2}', b'{"seq":3}']


def test_a_post_to_another_path_is_answered_404_and_not_written(receive_process):
    rp = receive_process("http://127.0.0.1:0/ingest")
    with connect(rp.url) as s:
        assert post(s, b"elsewhere\n", path="/other")[0] == 404
    with connect(rp.url) as s:
        assert post(s, b"here\n", path="/ingest?tenant=1")[0] == 200
    assert rp.stop() == 0
    assert rp.lines() == [b"here"]


def test_json_array_elements_are_written_as_they_were_sent(receive_process):
    rp = receive_process("http://127.0.0.1:0/ingest")
    body = '[ {"n": 1.0e3, "n": 2}, 1e400,\n"caf\u00e9 \\u00e9", [1,2] ]'.encode()
    with connect(rp.url) as s:
        assert post(s, body, headers=["Content-Type: application/json"])[0] == 200
        assert post(s, b"[1, NaN]", headers=["Content-Type: application/json"])[0] == 400
    assert rp.stop() == 0
    assert rp.lines() == [b'{"n": 1.0e3, "n": 2}', b"1e400", '"caf\u00e9 \\u00e9"'.encode(),
                          b"[1,2]"]


# -- every protocol: the same deadlines -----------------------------------------------------

# (listen, what the client sends: activity, never a finished opening nor a TLS record)
OPENINGS = [("tls://127.0.0.1:0", b""), ("relp://127.0.0.1:0", b"1 op"),
            ("relp+tls://127.0.0.1:0", b""), ("http://127.0.0.1:0/ingest", b"POST /ingest "),
            ("https://127.0.0.1:0/ingest", b"")]


@pytest.mark.parametrize("listen, partial", OPENINGS)
def test_a_client_that_never_opens_is_hung_up_on_after_the_handshake_timeout(
        receive_process, tls_args, listen, partial):
    args = ["--handshake-timeout", "0.5", "--idle-timeout", "60"]
    rp = receive_process(listen, args=args + (tls_args if "tls" in listen or "https" in listen
                                              else []))
    with connect(rp.url) as s:
        started = time.monotonic()
        if partial:
            s.sendall(partial)
        assert hung_up(s)
        assert 0.4 <= time.monotonic() - started < 5
    assert rp.stop() == 0
    assert "1 timed out" in rp.summary


def relp_reply(s):
    """(txnr, command, data) of the next RELP frame from the receiver (the shared codec)."""
    buf = bytearray()
    while (frame := parse_frame(buf, 0)) is None:
        data = s.recv(4096)
        assert data, "the receiver closed the session"
        buf += data
    assert frame[3] == len(buf), "one frame at a time"
    return frame[:3]


def relp_open(s):
    s.sendall(b"1 open 0\n")
    txnr, command, data = relp_reply(s)
    assert (txnr, command) == (1, b"rsp") and data.startswith(b"200 OK")


def http_request(s):
    assert post(s, b"x\n")[0] == 200


@pytest.mark.parametrize("listen, opening", [
    ("tcp://127.0.0.1:0", lambda s: s.sendall(b"x\n")),
    ("relp://127.0.0.1:0", relp_open),
    ("http://127.0.0.1:0/ingest", http_request)])
def test_a_silent_client_is_hung_up_on_after_the_idle_timeout(receive_process, listen,
                                                               opening):
    rp = receive_process(listen, args=["--handshake-timeout", "60", "--idle-timeout", "0.5"])
    with connect(rp.url) as s:
        opening(s)
        started = time.monotonic()
        assert hung_up(s)
        assert 0.4 <= time.monotonic() - started < 5
    assert rp.stop() == 0
    assert "1 timed out" in rp.summary
    assert rp.lines() == [b"x"] or listen.startswith("relp")


def test_options_are_checked_the_same_way_for_every_protocol(tmp_path):
    for listen in ("tcp://127.0.0.1:0", "relp://127.0.0.1:0", "http://127.0.0.1:0/x"):
        for bad in (["--idle-timeout", "0"], ["--handshake-timeout", "nan"],
                    ["--max-message-size", "0"], ["--max-reply-backlog", "10"],
                    ["--max-connections", "0"]):
            result = subprocess.run([PYTHON, "-m", "logpool", "receive", "--listen", listen,
                                     "--out", str(tmp_path / "o"), *bad], cwd=ROOT,
                                    capture_output=True, text=True, timeout=30)
            assert result.returncode == 2, (listen, bad, result.stderr)
            assert bad[0][2:].replace("-", "_") in result.stderr, result.stderr


# -- RELP: acknowledged means written; a peer that never reads holds no one up -------------

def test_relp_never_acknowledges_a_message_it_could_not_write(receive_process):
    rp = receive_process("relp://127.0.0.1:0", out_path="/dev/full")
    with connect(rp.url) as s:
        relp_open(s)
        s.sendall(b"2 syslog 5 hello\n3 syslog 5 world\n")
        reply = b""
        while True:  # everything until the receiver closes the session
            data = s.recv(4096)
            if not data:
                break
            reply += data
    assert b"200 OK" not in reply
    assert reply.startswith(b"2 rsp ") and b" 500 " in reply
    rp.stop()
    assert "write errors" in rp.summary and " 0 write errors" not in rp.summary
    assert rp.proc.returncode != 0


def test_a_relp_client_that_never_reads_replies_is_dropped_and_stalls_no_one(
        receive_process):
    rp = receive_process("relp://127.0.0.1:0")
    outcome = {}

    def hostile():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # takes almost no replies
        s.settimeout(DEADLINE_S)
        s.connect(host_port(rp.url))
        s.sendall(b"1 open 0\n")
        batch = b"".join(b"%d syslog 1 h\n" % t for t in range(2, 10002))
        sent = 0
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                s.sendall(batch)
                sent += len(batch)
            outcome["error"] = None
        except OSError as exc:  # reset: the receiver dropped it (or a send timed out)
            outcome["error"] = exc
        outcome["sent"] = sent
        s.close()

    t = threading.Thread(target=hostile, daemon=True)
    with connect(rp.url) as good:
        relp_open(good)
        t.start()
        slowest, txnr = 0.0, 2
        while t.is_alive():
            started = time.monotonic()
            good.sendall(b"%d syslog 4 good\n" % txnr)
            assert relp_reply(good) == (txnr, b"rsp", b"200 OK")
            slowest = max(slowest, time.monotonic() - started)
            txnr += 1
        t.join()
    assert isinstance(outcome["error"], (ConnectionResetError, BrokenPipeError)), outcome
    assert outcome["sent"] > 1 << 20  # more than the default backlog before the drop
    assert slowest < 2.5, f"a good client waited {slowest:.1f} s for one acknowledgement"
    assert rp.stop() == 0
    assert "1 slow readers dropped" in rp.summary
    assert rp.lines().count(b"good") == txnr - 2


def test_a_relp_frame_announcing_more_than_the_limit_is_refused_before_its_data(
        receive_process):
    rp = receive_process("relp://127.0.0.1:0", args=["--max-message-size", "4096"])
    with connect(rp.url) as s:
        relp_open(s)
        s.sendall(b"2 syslog 4097 ")  # the header alone: no data follows
        assert hung_up(s)
    assert rp.stop() == 0
    assert "1 oversized" in rp.summary and rp.lines() == []


def test_an_http_client_that_pipelines_without_reading_answers_is_dropped(receive_process):
    rp = receive_process("http://127.0.0.1:0/ingest", args=["--max-reply-backlog", "65536"])
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # takes almost no answers
    s.settimeout(DEADLINE_S)
    s.connect(host_port(rp.url))
    request = b"POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nh\n" * 1000
    deadline = time.monotonic() + 60
    with pytest.raises((ConnectionResetError, BrokenPipeError)):
        while time.monotonic() < deadline:
            s.sendall(request)
    s.close()
    with connect(rp.url) as good:  # the others are served as before
        assert post(good, b"good\n")[0] == 200
    assert rp.stop() == 0
    assert "1 slow readers dropped" in rp.summary
    assert rp.lines()[-1] == b"good"


# -- a hostile request costs its own connection, never the collector ------------------------

def test_a_json_array_nested_too_deep_is_refused_with_400_and_the_collector_serves_on(
        receive_process):
    rp = receive_process("http://127.0.0.1:0/ingest")
    with connect(rp.url) as s:
        status, _ = post(s, b"[" * 200_000 + b"]" * 200_000,
                         headers=["Content-Type: application/json"])
        assert status == 400
    with connect(rp.url) as s:
        assert post(s, b'[{"a":1}]', headers=["Content-Type: application/json"])[0] == 200
    assert rp.stop() == 0
    assert rp.lines() == [b'{"a":1}']


@pytest.mark.parametrize("target", [b"//[x", b"http://[::1/ingest"])
def test_a_request_target_that_is_not_a_url_is_answered_400(receive_process, target):
    rp = receive_process("http://127.0.0.1:0/ingest")
    with connect(rp.url) as s:
        s.sendall(b"POST %s HTTP/1.1\r\nContent-Length: 4\r\n\r\nabc\n" % target)
        assert read_response(s)[0] == 400
        assert hung_up(s)
    with connect(rp.url) as s:
        assert post(s, b"good\n")[0] == 200
    assert rp.stop() == 0
    assert rp.lines() == [b"good"]


def test_an_unexpected_error_in_one_connection_drops_it_and_no_other(receiver):
    from logpool.receive.stream import StreamProtocol

    class Broken(StreamProtocol):  # a bug that only this peer's bytes reach
        def feed(self, data):
            if b"boom" in data:
                raise RuntimeError("a bug in a protocol handler")
            return super().feed(data)

    r = receiver("tcp://127.0.0.1:0")
    r.protocol = Broken
    with connect(r.url) as good, connect(r.url) as bad:
        good.sendall(b"before\n")
        wait_for(lambda: r.output.lines() == [b"before"], timeout=DEADLINE_S,
                 what="the good client's first line")
        bad.sendall(b"boom\n")
        assert hung_up(bad)  # only the connection that hit the bug
        bad.close()
        with connect(r.url) as bad2:
            bad2.sendall(b"boom again\n")
            assert hung_up(bad2)
        good.sendall(b"after\n")
        wait_for(lambda: r.output.lines() == [b"before", b"after"], timeout=DEADLINE_S,
                 what="the good client served after the errors")
    assert r.snapshot().internal_errors == 2
    assert r._thread.is_alive()


def test_a_gzip_body_of_many_members_is_refused_and_stalls_no_one(receive_process):
    import gzip
    rp = receive_process("http://127.0.0.1:0/ingest")
    member = gzip.compress(b"", mtime=0)
    body = member * (((16 << 20) - 1) // len(member))  # quadratic: minutes of CPU before
    with connect(rp.url) as hostile:
        hostile.sendall(b"POST /ingest HTTP/1.1\r\nContent-Encoding: gzip\r\n"
                        b"Content-Length: %d\r\n\r\n" % len(body) + body)
        with connect(rp.url) as good:  # served while (or after) the body is looked at
            assert post(good, b"good\n")[0] == 200
        assert read_response(hostile)[0] == 400
    with connect(rp.url) as s:  # a few members are fine
        gz = gzip.compress(b"a\n", mtime=0) + member + gzip.compress(b"b\n", mtime=0)
        assert post(s, gz, headers=["Content-Encoding: gzip"])[0] == 200
    assert rp.stop() == 0
    assert rp.lines() == [b"good", b"a", b"b"]


# -- RELP: nothing before "open" -------------------------------------------------------------

@pytest.mark.parametrize("first", [b"7 syslog 5 hello\n8 syslog 5 world\n",
                                   b"7 syslog 5 hello\n1 open 0\n8 syslog 5 world\n"])
def test_relp_commands_before_open_are_refused_with_500_and_the_session_closed(
        receive_process, first):
    rp = receive_process("relp://127.0.0.1:0")
    with connect(rp.url) as s:
        s.sendall(first)
        reply = b""
        while data := s.recv(4096):  # everything until the receiver closes the session
            reply += data
    assert reply.startswith(b"7 rsp ") and b" 500 " in reply and b"200 OK" not in reply
    with connect(rp.url) as s:  # an opened session is served as before
        relp_open(s)
        s.sendall(b"2 syslog 4 good\n")
        assert relp_reply(s) == (2, b"rsp", b"200 OK")
    assert rp.stop() == 0
    assert rp.lines() == [b"good"]


# -- descriptors: silent peers cannot lock senders out ---------------------------------------

def limited_receiver(listen, out_path, limits):
    """`logpool receive` (a conftest.ReceiveProcess) under resource limits: [(RLIMIT_*,
    soft)]. Its stderr is a pipe, which no RLIMIT_FSIZE limits."""
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not a signal, past FSIZE
        for which, soft in limits:
            resource.setrlimit(which, (soft, resource.getrlimit(which)[1]))
    rp = ReceiveProcess.__new__(ReceiveProcess)
    rp.listen, rp.out_path = listen, str(out_path)
    rp.proc = subprocess.Popen([PYTHON, "-m", "logpool", "receive", "--listen", listen,
                                "--out", str(out_path)], stderr=subprocess.PIPE, text=True,
                               cwd=ROOT, preexec_fn=preexec)
    line = rp.proc.stderr.readline()
    assert "listening on" in line, line + rp.proc.stderr.read()
    rp.url = line.rsplit(" ", 1)[1].strip()
    return rp


def test_silent_connections_cannot_lock_a_sender_out_under_a_low_descriptor_limit(tmp_path):
    out = tmp_path / "out.log"
    rp = limited_receiver("tcp://127.0.0.1:0", out, [(resource.RLIMIT_NOFILE, 48)])
    silent = []
    try:
        silent = [connect(rp.url) for _ in range(60)]  # more than the descriptors it has
        with connect(rp.url) as good:
            good.sendall(b"a line from a well-behaved sender\n")
            wait_for(lambda: out.exists() and b"well-behaved" in out.read_bytes(),
                     timeout=DEADLINE_S, what="the sender's line, with silent peers around")
        assert rp.proc.poll() is None
    finally:
        for c in silent:
            c.close()
        rp.stop()
    assert "accept failed" not in rp.summary, rp.summary  # room was made in time
    assert re.search(r"[1-9]\d* evicted", rp.summary), rp.summary


def test_max_connections_evicts_the_silent_before_the_active(receive_process):
    rp = receive_process("tcp://127.0.0.1:0", args=["--max-connections", "3"])
    with connect(rp.url) as active:
        active.sendall(b"active 1\n")
        wait_for(lambda: rp.lines() == [b"active 1"], timeout=DEADLINE_S, what="line 1")
        silent = [connect(rp.url) for _ in range(2)]  # now full: active + 2 silent
        with connect(rp.url) as sender:  # evicts the oldest silent one, not `active`
            assert hung_up(silent[0])
            sender.sendall(b"sender\n")
            wait_for(lambda: b"sender" in rp.lines(), timeout=DEADLINE_S, what="sender")
            active.sendall(b"active 2\n")
            wait_for(lambda: b"active 2" in rp.lines(), timeout=DEADLINE_S, what="line 2")
        for c in silent:
            c.close()
    assert rp.stop() == 0
    assert "1 evicted" in rp.summary


def test_an_idle_keep_alive_http_connection_gets_the_handshake_timeout_for_its_next_head(
        receive_process):
    rp = receive_process("http://127.0.0.1:0/ingest",
                         args=["--handshake-timeout", "0.5", "--idle-timeout", "60"])
    with connect(rp.url) as s:
        assert post(s, b"x\n")[0] == 200
        s.sendall(b"POST /ingest HTTP/1.1\r\n")  # the next head, never finished
        assert hung_up(s)  # long before the idle timeout
    assert rp.stop() == 0
    assert "1 timed out" in rp.summary and rp.lines() == [b"x"]


# -- the output: refused bytes are not written later -----------------------------------------

def test_a_message_the_output_refused_is_written_once_when_the_sender_resends(tmp_path):
    """The disk fills (RLIMIT_FSIZE here), the RELP sender gets an error and resends once
    there is room: the output holds each message once and no piece of the refused one."""
    out = tmp_path / "out.log"
    first, second = b"a" * 60, b"b" * 80
    rp = limited_receiver("relp://127.0.0.1:0", out, [(resource.RLIMIT_FSIZE, 100)])
    try:
        with connect(rp.url) as s:
            relp_open(s)
            s.sendall(b"2 syslog 60 %s\n" % first)
            assert relp_reply(s) == (2, b"rsp", b"200 OK")
            s.sendall(b"3 syslog 80 %s\n" % second)  # 39 of its 81 bytes would fit
            txnr, _, data = relp_reply(s)
            assert txnr == 3 and data.startswith(b"500")
            assert hung_up(s)
        resource.prlimit(rp.proc.pid, resource.RLIMIT_FSIZE,
                         (resource.RLIM_INFINITY, resource.RLIM_INFINITY))  # room again
        with connect(rp.url) as s:
            relp_open(s)
            s.sendall(b"2 syslog 80 %s\n" % second)  # the resend
            assert relp_reply(s) == (2, b"rsp", b"200 OK")
            s.sendall(b"3 close 0\n")
            assert relp_reply(s)[:2] == (3, b"rsp")
        assert out.read_bytes() == first + b"\n" + second + b"\n"
    finally:
        rp.stop()
    assert "1 write errors" in rp.summary
