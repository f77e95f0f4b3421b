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


@pytest.mark.parametrize("status", [400, 413])
def test_a_batch_refused_for_good_is_dropped_counted_and_logged(scripted, pools, capfd,
                                                                status):
    server = scripted([200, status])
    pool = pools({"sinks": [{"url": server.url, "http_max_body_bytes": 2048}], **FAST})
    n = 200
    log_numbered(pool, n)
    st = pool.stats(0)
    kept = seqs(server.kept)
    assert st["dropped_rejected"] > 0 and st["sent_messages"] + st["dropped_rejected"] == n
    assert len(kept) == st["sent_messages"] and kept == sorted(kept)  # the rest, in order
    missing = sorted(set(range(n)) - set(kept))  # exactly one batch, the refused one
    assert missing == list(range(missing[0], missing[0] + len(missing)))
    assert len(missing) == st["dropped_rejected"]
    err = capfd.readouterr().err
    assert f"refused a batch of {st['dropped_rejected']} messages for good (HTTP {status}" in err
    assert "refused by the test" in err
    assert 'reason="rejected"' in pool.metrics()


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
    ({"url": "http://h/x", "http_concurrency": 4}, "http_concurrency: must be 1"),
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
