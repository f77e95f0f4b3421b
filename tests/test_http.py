"""HTTP(S) sinks against real HTTP servers in this process: `logpool receive`'s collector, and
a scripted one (the standard library's server) that answers what a test says: 503, 429 with
Retry-After, 400, 413, slowly, or closing mid-body."""
import gzip
import http.server
import json
import threading
import time

import pytest

import logpool
from conftest import message, parse_line, wait_for
from httppeer import (CLOSE, HANG, TRICKLE, assert_logged, interim, response,
                      wait_for_log)
from logpool.receive import decode_http_body, server_tls_context

FAST = {"retry_interval_ms": 10, "max_retry_interval_ms": 5000, "periodic_flush_ms": 10}


def seqs(lines):
    return [parse_line(line + b"\n")[1] for line in lines]


@pytest.mark.parametrize("fmt, compression", [("ndjson", "none"), ("ndjson", "gzip"),
                                              ("ndjson", "zstd"), ("json_array", "gzip")])
def test_batches_arrive_once_in_order_with_headers_and_one_connection(receiver, pools, fmt,
                                                                      compression):
    r = receiver("http://127.0.0.1:0/ingest")
    pool = pools({"sinks": [{"url": r.url, "http_format": fmt, "http_compression": compression,
                             "http_headers": {"X-Scope-OrgID": "tenant-1",
                                              "Authorization": "Bearer s3cret"},
                             "http_max_body_bytes": 64 * 1024}]})
    n = 5000
    for i in range(n):
        pool.log(0, json.dumps({"seq": i, "pad": "x" * (i % 300)}).encode() + b"\n")
    pool.flush(timeout=30)
    got = [json.loads(line)["seq"] for line in r.output.lines()]
    assert got == list(range(n))  # once each, in order
    st = pool.stats(0)
    assert st["sent_messages"] == n and st["connects"] == 1  # one kept-alive connection
    assert len(r.requests) > 10  # a 64 KiB cap split the backlog into many requests
    method, path, headers = r.requests[0]
    assert (method, path) == ("POST", "/ingest")
    assert headers["X-Scope-OrgID"] == "tenant-1" and headers["Authorization"] == "Bearer s3cret"
    assert headers["Content-Type"] == ("application/json" if fmt == "json_array"
                                       else "application/x-ndjson")
    assert headers.get("Content-Encoding", "none") == compression


class Scripted:
    """An HTTP collector that answers each request by the next entry of `script` (then 200):
    an int status, ("retry_after", status, value), "slow" (answer after `slow_s`), or
    "cut" (read part of the body, then close). Only 2xx answers keep the messages."""

    def __init__(self, script, slow_s=1.0):
        self.script, self.slow_s = list(script), slow_s
        self.kept, self.requests, self.lock = [], [], threading.Lock()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                owner.handle(self)

            do_PUT = do_POST

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/logs"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def handle(self, request):
        with self.lock:
            step = self.script.pop(0) if self.script else 200
            self.requests.append((time.monotonic(), step))
        length = int(request.headers["Content-Length"])
        if step == "cut":
            request.rfile.read(length // 2)
            request.close_connection = True
            request.connection.close()
            return
        body = request.rfile.read(length)
        if step == "slow":
            time.sleep(self.slow_s)
            step = 200
            body = b""  # it answers too late: the sender gave up and sends again
        status, extra = (step[1], {"Retry-After": step[2]}) if isinstance(step, tuple) else (
            step, {})
        text = b"" if status < 300 else b'{"error": "refused by the test"}'
        if 200 <= status < 300 and body:
            messages = decode_http_body(body, request.headers.get("Content-Encoding", ""),
                                        request.headers.get("Content-Type", ""))
            with self.lock:
                self.kept.extend(messages)
        request.send_response(status)
        for k, v in extra.items():
            request.send_header(k, v)
        request.send_header("Content-Length", str(len(text)))
        request.end_headers()
        request.wfile.write(text)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted():
    made = []

    def make(script, **kwargs):
        s = Scripted(script, **kwargs)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def log_numbered(pool, n):
    for i in range(n):
        pool.log(0, message(0, i))
    pool.flush(timeout=60)


@pytest.mark.parametrize("script", [[503, 503], [408, 500], ["cut"], ["slow"]],
                         ids=["503", "408-500", "cut-mid-body", "slow"])
def test_retryable_failures_lose_and_duplicate_nothing(scripted, pools, script):
    server = scripted(script, slow_s=1.0)
    pool = pools({"sinks": [{"url": server.url, "http_max_body_bytes": 4096}],
                  "send_timeout_ms": 300, **FAST})
    log_numbered(pool, 300)
    assert seqs(server.kept) == list(range(300))  # in order, nothing twice, nothing lost
    st = pool.stats(0)
    assert st["sent_messages"] == 300 and st["write_errors"] >= 1 and st["dropped_rejected"] == 0


def test_429_retry_after_is_honoured(scripted, pools):
    server = scripted([("retry_after", 429, "1")])
    pool = pools({"sinks": [{"url": server.url}], **FAST})
    log_numbered(pool, 10)
    (refused_at, _), (retried_at, _) = server.requests[:2]
    assert retried_at - refused_at >= 0.9  # backoff alone would have retried in ~10 ms
    assert seqs(server.kept) == list(range(10))


def test_retry_after_as_an_http_date_is_capped_by_max_retry_interval(scripted, pools):
    from email.utils import formatdate
    server = scripted([("retry_after", 503, formatdate(time.time() + 3600, usegmt=True))])
    pool = pools({"sinks": [{"url": server.url}], **{**FAST, "max_retry_interval_ms": 500}})
    log_numbered(pool, 5)
    (refused_at, _), (retried_at, _) = server.requests[:2]
    assert 0.2 <= retried_at - refused_at < 5  # an hour asked for, the cap (0.5 s) applied
    assert seqs(server.kept) == list(range(5))


@pytest.mark.parametrize("status", [400, 422])
def test_a_refusal_naming_no_record_is_narrowed_and_loses_nothing_good(scripted, pools,
                                                                       status):
    # One request refused with a 4xx that names no record: split and sent again as halves,
    # which the collector takes: nothing is rejected, nothing stored twice, in order.
    server = scripted([200, status])
    pool = pools({"sinks": [{"url": server.url, "http_max_body_bytes": 2048}], **FAST})
    n = 200
    log_numbered(pool, n)
    st = pool.stats(0)
    assert seqs(server.kept) == list(range(n))
    assert st["dropped_rejected"] == 0 and st["sent_messages"] == n
    assert st["retried_messages"] > 0 and st["resent_messages"] == 0


@pytest.mark.parametrize("status", [400, 422])
def test_a_record_refused_for_ever_is_rejected_alone_and_logged(peer, pools, capfd, status):
    # The collector refuses every request that holds the poison record, naming no record.
    def answer(request):
        if b"poison" in request.body:
            return [response(status, "refused by the test")]
        return [response(200)]
    server = peer(answer)
    pool = pools({"sinks": [{"url": server.url + "/in"}], **FAST})
    lines = [message(0, i) for i in range(100)]
    lines[37] = b"poison\n"
    for line in lines:
        pool.log(0, line)
    pool.flush(timeout=30)
    kept = [parse_line(line + b"\n")[1] for r in server.requests if b"poison" not in r.body
            for line in r.body.splitlines()]
    assert kept == [i for i in range(100) if i != 37]  # every good record once, in order
    st = pool.stats(0)
    assert st["dropped_rejected"] == 1 and st["sent_messages"] == 99
    refused = sum(1 for r in server.requests if b"poison" in r.body)
    assert refused <= 2 * (100).bit_length() + 2  # the bound: about 2*log2(batch) requests
    err = wait_for_log(capfd, "refused by the test")
    assert f"refused a batch of 1 message for good (HTTP {status}" in err
    assert 'reason="rejected"' in pool.metrics()


def test_a_record_refused_alone_first_is_judged_against_the_next_pending_messages(peer, pools):
    # The first request holds the refused record alone (it fills http_max_body_bytes) and
    # nothing has succeeded yet: it is not rejected on that answer; the messages after it
    # go first, succeed, and then it is refused alone again right after a success:
    # rejected, and only it.
    def answer(request):
        if b"poison" in request.body or not request.body:
            return [response(400, "refused by the test")]
        return [response(200)]
    server = peer(answer)
    pool = pools({"sinks": [{"url": server.url + "/in", "http_max_body_bytes": 1024}],
                  **{**FAST, "periodic_flush_ms": 300}})  # one take: all 21 pending
    pool.log(0, b"poison " + b"p" * 1000 + b"\n")
    for i in range(20):
        pool.log(0, message(0, i))
    pool.flush(timeout=30)
    kept = [parse_line(line + b"\n")[1] for r in server.requests if b"poison" not in r.body
            for line in r.body.splitlines()]
    assert sorted(kept) == list(range(20))  # each once
    st = pool.stats(0)
    assert st["dropped_rejected"] == 1 and st["sent_messages"] == 20
    # Refused alone, then the messages after it taken, then refused alone again right after
    # that success: the probe after it (a request without data, which this collector also
    # refuses) leaves that verdict standing.
    assert [(b"poison" in r.body, bool(r.body)) for r in server.requests][:4] == [
        (True, True), (False, True), (True, True), (False, False)]


def test_a_good_record_refused_alone_as_an_outage_begins_is_not_rejected(peer, pools):
    # Requests of two messages. The first is refused once (naming no record): narrowed, its
    # first message goes through, and just then the collector starts refusing everything:
    # the second message is refused alone right after a success. The next request is
    # refused too, so that refusal proves nothing about the message: nothing is rejected,
    # and everything arrives once the collector recovers.
    seen = []

    def answer(request):
        seen.append(request.body)
        if len(seen) == 1 or 3 <= len(seen) <= 12:
            return [response(400, "refused by the test")]
        return [response(200)]
    server = peer(answer)
    pool = pools({"sinks": [{"url": server.url + "/in", "http_max_body_bytes": 1024}],
                  **{**FAST, "periodic_flush_ms": 300}})  # one take: all 10 pending
    for i in range(10):
        pool.log(0, message(0, i, length=450))
    pool.flush(timeout=30)
    kept = [parse_line(line + b"\n")[1] for i, body in enumerate(seen)
            if i == 1 or i >= 12 for line in body.splitlines()]
    assert sorted(kept) == list(range(10))  # each once
    assert seen[2].count(b"\n") == 1  # the second message alone, refused right after a success
    st = pool.stats(0)
    assert st["dropped_rejected"] == 0 and st["sent_messages"] == 10


def test_put_and_a_path_with_a_query(scripted, pools):
    server = scripted([])
    pool = pools({"sinks": [{"url": server.url + "?tenant=a", "http_method": "PUT"}]})
    log_numbered(pool, 3)
    assert seqs(server.kept) == [0, 1, 2]


def test_https_verifies_and_presents_a_client_certificate(receiver, pools, test_ca):
    server_ctx = server_tls_context(*test_ca.issue("server"), client_ca_file=test_ca.ca_file)
    r = receiver("https://127.0.0.1:0/ingest", tls=server_ctx)
    client_cert, client_key = test_ca.issue("client", client=True)
    pool = pools({"sinks": [{"url": r.url, "ca_file": test_ca.ca_file, "server_name": "localhost",
                             "cert_file": client_cert, "key_file": client_key}]})
    log_numbered(pool, 100)
    assert seqs(r.output.lines()) == list(range(100))
    # An unknown CA is refused: nothing sent, counted.
    other = pools({"sinks": [{"url": r.url}], **FAST})
    other.log(0, b"never\n")
    wait_for(lambda: other.stats(0)["tls_handshake_failures"] > 0, what="a refused handshake")
    assert other.stats(0)["sent_messages"] == 0


@pytest.mark.parametrize("sink, text", [
    ({"url": "http://h/x", "http_format": "xml"}, "http_format: must be 'ndjson' or"),
    ({"url": "http://h/x", "http_compression": "br"}, "http_compression: must be"),
    ({"url": "http://h/x", "http_method": "GET"}, "http_method: must be 'POST' or 'PUT'"),
    ({"url": "http://h/x", "http_headers": {"Content-Type": "x"}}, "set by logpool"),
    ({"url": "http://h/x", "http_headers": {"X-A": "a\r\nX-B: b"}}, "not a valid header"),
    ({"url": "http://h/x", "http_headers": {"X-Token": "caf\u00e9\u20ac"}},
     "http_headers: header 'X-Token': its value is not Latin-1"),
    ({"url": "http://h/x", "http_headers": {"X-Token": "a\0b"}},
     "http_headers: header 'X-Token': its value holds a control character"),
    ({"url": "http://h/x", "http_headers": {"X-Token": "a\x01b"}},
     "http_headers: header 'X-Token': its value holds a control character"),
    ({"url": "http://h/x", "http_headers": {"X-Tok\u00e9n": "a"}}, "not a valid header name"),
    ({"url": "http://h/x", "http_concurrency": 1}, "http_concurrency: no longer a key"),
    ({"url": "http://user:pw@h/x"}, "no credentials"),
    ({"url": "http://h/x", "framing": "newline"}, "frames messages by http_format"),
    ({"url": "http://h/x", "max_message_size": 2 << 20}, "larger than http_max_body_bytes"),
    ({"url": "tcp://h:1", "http_method": "PUT"}, "only http:// and https:// sinks take"),
])
def test_http_config_errors_name_the_key(sink, text):
    with pytest.raises(logpool.ConfigError) as exc:
        logpool.config.parse({"sinks": [sink]})
    assert text in str(exc.value)


def test_decode_http_body_reads_what_the_sink_sends():
    body = gzip.compress(b'{"a":1}\n{"b":2}\n')
    assert decode_http_body(body, "gzip", "application/x-ndjson") == [b'{"a":1}', b'{"b":2}']
    # a JSON array's elements as they were sent, never re-serialised
    assert decode_http_body(b'[{"a": 1}, 2]', "", "application/json") == [b'{"a": 1}', b"2"]
    with pytest.raises(ValueError):
        decode_http_body(b"[1, oops]", "", "application/json")


# -- HTTP answers, against a scripted raw-socket collector (tests/httppeer.py) -----------------



def lines_of(requests):
    """The messages an ndjson collector took, from the requests it answered 2xx."""
    return [line for r in requests for line in r.body.splitlines()]


def answering(first, then=None):
    """An answer function: the steps of `first` (a list of step lists) for the first
    requests, then `then` (default 200) for every later one."""
    script = list(first)
    lock = threading.Lock()
    ok = then or [response(200)]

    def answer(request):
        with lock:
            steps = script.pop(0) if script else ok
        request_ok = steps is ok or steps[-1:] == [response(200)]
        answer.ok.append(request_ok)
        return steps
    answer.ok = []
    return answer


def delivered(server):
    """Messages of the requests answered 200, in order."""
    return seqs([line for r, ok in zip(list(server.requests), server.answer.ok) if ok
                 for line in r.body.splitlines()])


def test_interim_1xx_answers_are_skipped_not_taken_as_the_answer(peer, pools):
    # 103 Early Hints and 100 Continue before a 500: the 500 is the answer (retried), then
    # interim answers before the 200s. Taking a 1xx as final would count the batch wrongly.
    early = interim(103, {"Link": "</style.css>; rel=preload"}) + interim(100)
    server = peer(answering([[early + response(500)]], then=[early + response(200)]))
    pool = pools({"sinks": [{"url": server.url + "/in", "http_max_body_bytes": 4096}], **FAST})
    log_numbered(pool, 100)
    assert delivered(server) == list(range(100))
    st = pool.stats(0)
    assert st["sent_messages"] == 100 and st["dropped_rejected"] == 0
    assert st["write_errors"] == 1  # the 500, and only it


@pytest.mark.parametrize("status", [301, 302, 401, 403, 404])
def test_configuration_answers_keep_the_data_log_once_and_retry(peer, pools, capfd, status):
    refusals = 4
    server = peer(answering([[response(status, "not here", {"Location": "/elsewhere"})]]
                            * refusals))
    pool = pools({"sinks": [{"url": server.url + "/in"}], **FAST})
    log_numbered(pool, 20)
    assert delivered(server) == list(range(20))  # kept through every refusal
    st = pool.stats(0)
    assert st["dropped_rejected"] == 0 and st["sent_messages"] == 20
    assert st["write_errors"] == refusals
    err = capfd.readouterr().err
    assert err.count(f"HTTP {status}") == 1, err  # once, not per retry
    assert "the data is kept" in err


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_retry_statuses_send_the_same_batch_again(peer, pools, status):
    server = peer(answering([[response(status, headers={"Retry-After": "0"})]] * 2))
    pool = pools({"sinks": [{"url": server.url + "/in"}], **FAST})
    log_numbered(pool, 30)
    assert delivered(server) == list(range(30))
    first, second = server.requests[0].body, server.requests[1].body
    assert first == second  # the same batch, byte for byte
    st = pool.stats(0)
    # Refused twice: nothing was stored, so these are retries, never possible duplicates.
    assert st["dropped_rejected"] == 0 and st["retried_messages"] >= 2 * len(
        first.splitlines()) and st["resent_messages"] == 0


def test_413_halves_the_batch_and_only_a_single_message_is_rejected(peer, pools, capfd):
    # The collector takes at most 8 messages per request, and never the "poison" one.
    def answer(request):
        lines = request.body.splitlines()
        ok = len(lines) <= 8 and not any(b"poison" in line for line in lines)
        answer.ok.append(ok)
        return [response(200) if ok else response(413, "Payload Too Large")]
    answer.ok = []
    server = peer(answer)
    pool = pools({"sinks": [{"url": server.url + "/in"}], **{**FAST,
                                                             "periodic_flush_ms": 1000}})
    for i in range(60):
        pool.log(0, message(0, i) if i != 37 else b"poison\n")
    pool.flush(timeout=60)
    got = seqs([line for r, ok in zip(server.requests, answer.ok) if ok
                for line in r.body.splitlines()])
    assert got == [i for i in range(60) if i != 37]  # in order, once each
    st = pool.stats(0)
    assert st["dropped_rejected"] == 1 and st["sent_messages"] == 59
    assert max(len(r.body.splitlines()) for r in server.requests) > 8  # it did split
    assert_logged(capfd, "refused a batch of 1 message for good (HTTP 413")


GARBAGE = {
    "garbage-status-line": b"HTPT/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    "status-line-oversized": b"HTTP/1.1 200 " + b"O" * 20000 + b"\r\n\r\n",
    "header-oversized": b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
    "too-many-headers": b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 500 + b"\r\n",
    "bad-content-length": b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
    "bad-chunk-size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "status-999": b"HTTP/1.1 999 What\r\nContent-Length: 0\r\n\r\n",
    "interim-forever": b"HTTP/1.1 103 Early\r\n\r\n" * 50,
}


@pytest.mark.parametrize("garbage", sorted(GARBAGE))
def test_an_answer_not_understood_keeps_the_data(peer, pools, capfd, garbage):
    server = peer(answering([[GARBAGE[garbage], CLOSE]]))
    pool = pools({"sinks": [{"url": server.url + "/in"}], **FAST})
    log_numbered(pool, 25)
    assert delivered(server) == list(range(25))  # nothing dropped
    st = pool.stats(0)
    assert st["dropped_rejected"] == 0 and st["write_errors"] == 1
    assert st["resent_messages"] == len(server.requests[0].body.splitlines())  # sent again
    assert_logged(capfd, "kept and sent again")


def test_close_in_the_middle_of_the_answer_keeps_the_data(peer, pools):
    server = peer(answering([[b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf", CLOSE]]))
    pool = pools({"sinks": [{"url": server.url + "/in"}], **FAST})
    log_numbered(pool, 10)
    assert delivered(server) == list(range(10))
    assert pool.stats(0)["write_errors"] == 1


def test_a_trickled_answer_is_bounded_by_send_timeout_for_the_whole_answer(peer, pools,
                                                                          capfd):
    # One byte every 0.5 s of a 1 MB body: each recv returns in time, the answer never ends.
    trickle = [b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n", TRICKLE]
    server = peer(answering([trickle]))
    pool = pools({"sinks": [{"url": server.url + "/in"}], "send_timeout_ms": 1500, **FAST})
    start = time.monotonic()
    log_numbered(pool, 10)
    took = time.monotonic() - start
    assert delivered(server) == list(range(10))
    assert len(server.requests) == 2
    # The first answer was given up at send_timeout_ms (whatever the machine's speed, it
    # cannot end earlier: the body never completes), not held for ever.
    assert took >= 1.5
    assert_logged(capfd, "no complete answer within send_timeout_ms")


@pytest.mark.parametrize("hostile", ["trickle", "hang"])
def test_close_ends_a_wait_on_a_hostile_collector_within_its_timeout(peer, hostile):
    steps = [b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n", TRICKLE] if (
        hostile == "trickle") else [HANG]
    server = peer(lambda request: steps)
    before = set(threading.enumerate())
    pool = logpool.Pool({"sinks": [{"url": server.url + "/in"}], "send_timeout_ms": 60000,
                         **FAST})
    for i in range(5):
        pool.log(0, message(0, i))
    wait_for(lambda: server.requests, what="the request")
    writers = [t for t in set(threading.enumerate()) - before
               if t.name.startswith("logpool-writer")]
    assert writers
    start = time.monotonic()
    abandoned = pool.close(timeout=1)
    took = time.monotonic() - start
    assert abandoned == 5
    # Its timeout plus slack for a loaded machine (the writer's slices, thread joins), far
    # below send_timeout_ms (60 s), which is what a close that waited on the collector takes.
    assert 0.9 <= took < 10, took
    for t in writers:  # the writer leaves (its last step after close returned): no leak
        t.join(timeout=0.5)
        assert not t.is_alive()


@pytest.mark.parametrize("framing", ["content-length", "chunked", "until-close"])
def test_an_oversized_answer_body_is_not_read_beyond_the_limit(peer, pools, framing):
    # 200 with a body announced (or streamed) far beyond what is kept: the transport takes
    # the 200, reads at most its limit, and closes that connection instead of reading on.
    head = {"content-length": b"HTTP/1.1 200 OK\r\nContent-Length: 50000000000\r\n\r\n",
            "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"FFFFFFFF\r\n",
            "until-close": b"HTTP/1.1 200 OK\r\n\r\n"}[framing]
    server = peer(answering([[head + b"y" * (256 * 1024), HANG]]))
    pool = pools({"sinks": [{"url": server.url + "/in", "http_max_body_bytes": 2048}],
                  "send_timeout_ms": 60000, **FAST})
    log_numbered(pool, 200)
    assert seqs(lines_of(server.requests)) == list(range(200))  # each once: all were 200
    st = pool.stats(0)
    assert st["sent_messages"] == 200 and st["write_errors"] == 0 and st["resent_messages"] == 0
    assert server.connections >= 2  # the first connection was given up, not drained


@pytest.mark.parametrize("fmt, compression", [("ndjson", "none"), ("json_array", "none"),
                                              ("json_array", "gzip"), ("loki", "none"),
                                              ("elasticsearch", "zstd")])
def test_http_max_body_bytes_holds_on_the_wire(peer, pools, fmt, compression):
    server = peer(lambda request: [response(200, '{"errors": false}')
                                   if fmt == "elasticsearch" else response(204)])
    limit = 1024
    pool = pools({"sinks": [{"url": server.url + "/", "http_format": fmt,
                             "http_compression": compression, "http_max_body_bytes": limit}],
                  **{**FAST, "periodic_flush_ms": 500}})
    for i in range(300):
        pool.log(0, message(0, i, size=i % 200))
    pool.flush(timeout=60)
    assert pool.stats(0)["sent_messages"] == 300
    assert max(r.raw_length for r in server.requests) <= limit  # on the wire
    if compression == "none":  # (compressed, the messages total at most the limit)
        assert max(r.raw_length for r in server.requests) > limit // 2  # and used


def test_a_message_too_large_once_encoded_is_dropped_not_wedged(peer, pools, capfd):
    server = peer(lambda request: [response(200)])
    pool = pools({"sinks": [{"url": server.url + "/in", "http_format": "json_array",
                             "http_max_body_bytes": 1024}], **FAST})
    pool.log(0, b"x" * 1024)  # fits max_message_size (1024), not "[" + it + "]"
    pool.log(0, message(0, 1))
    pool.flush(timeout=30)
    st = pool.stats(0)
    assert st["dropped_unsendable"] == 1 and st["sent_messages"] == 1
    assert_logged(capfd, "http_max_body_bytes 1024")


def test_a_collector_that_never_answers_fails_over_to_the_next(peer, pools):
    # The first collector accepts and reads the request, then never answers: after
    # send_timeout_ms the writer moves to the second, which gets everything once.
    hung = peer(lambda request: [HANG])
    good = peer(answering([]))
    pool = pools({"sinks": [{"url": [hung.url + "/in", good.url + "/in"], "name": "fo"}],
                  "send_timeout_ms": 500, **FAST})
    log_numbered(pool, 50)
    assert delivered(good) == list(range(50))
    assert len(hung.requests) >= 1
    assert pool.stats(0)["sent_messages"] == 50


def test_header_values_with_tab_and_latin_1_are_sent_as_given(peer, pools):
    server = peer(answering([]))
    pool = pools({"sinks": [{"url": server.url + "/in", "http_headers": {
        "X-Tab": "a\tb", "X-Latin": "caf\u00e9"}}], **FAST})
    log_numbered(pool, 1)
    headers = server.requests[0].headers
    assert headers["x-tab"] == "a\tb" and headers["x-latin"] == "caf\u00e9"
