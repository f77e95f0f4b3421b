"""tls:// sinks against a real TLS receiver whose certificates come from a CA made at test
time: verification on by default, refusals counted and logged, recovery, client
certificates, session resumption, and resend semantics identical to TCP."""
import time

import pytest

from conftest import message, parse_line, steady_producer, wait_for
from logpool.receive import server_tls_context
from tlsca import TestCA

FAST_RETRY = {"retry_interval_ms": 20, "max_retry_interval_ms": 200}


def port_of(r):
    return int(r.url.rsplit(":", 1)[1])


def seqs(data):
    return [parse_line(line + b"\n")[1] for line in data.splitlines()]


def test_tls_delivers_everything_in_order_with_verification_on(receiver, pools, test_ca):
    cert, key = test_ca.issue("server")
    r = receiver("tls://127.0.0.1:0", tls=server_tls_context(cert, key))
    # The URL's host is the name checked against the certificate.
    pool = pools({"sinks": [{"url": f"tls://localhost:{port_of(r)}",
                             "ca_file": test_ca.ca_file}]})
    n = 5000
    for i in range(n):
        pool.log(0, message(0, i, size=i % 700))
    pool.flush(timeout=30)
    wait_for(lambda: r.snapshot().messages == n, what="all messages over TLS")
    assert seqs(r.output.getvalue()) == list(range(n))
    st = pool.stats(0)
    assert st["sent_messages"] == st["accepted_messages"] == n
    assert st["connects"] == 1 and st["tls_handshake_failures"] == 0
    assert r.snapshot().tls_failures == 0


BAD_CERTIFICATES = {
    # label: (how the server's certificate is made, what the error line says)
    "unknown CA": (lambda ca, other: other.issue("stranger"),
                   "unable to get local issuer certificate"),
    "wrong name": (lambda ca, other: ca.issue("elsewhere", names=("logs.example.org",)),
                   "Hostname mismatch"),
    "expired": (lambda ca, other: ca.issue("old", expired=True), "certificate has expired"),
}


@pytest.mark.parametrize("problem", sorted(BAD_CERTIFICATES))
def test_a_bad_server_certificate_is_refused_counted_logged_then_fixed(
        tmp_path, receiver, pools, test_ca, capfd, problem):
    make_cert, expected = BAD_CERTIFICATES[problem]
    other_ca = TestCA(str(tmp_path), name="someone else's CA")
    bad = receiver("tls://127.0.0.1:0", tls=server_tls_context(*make_cert(test_ca, other_ca)))
    port = port_of(bad)
    pool = pools({"sinks": [{"url": f"tls://localhost:{port}", "ca_file": test_ca.ca_file}],
                  **FAST_RETRY})
    n = 50
    for i in range(n):
        pool.log(0, message(0, i))
    wait_for(lambda: pool.stats(0)["tls_handshake_failures"] >= 3,
             what="handshakes refused and retried")
    st = pool.stats(0)
    assert st["connects"] == 0 and st["sent_messages"] == 0
    assert st["connect_failures"] >= st["tls_handshake_failures"]
    assert bad.snapshot().messages == 0 and bad.output.getvalue() == b""
    err = capfd.readouterr().err
    assert "TLS handshake failed: server certificate refused" in err and expected in err, err
    assert "server_name 'localhost'" in err and test_ca.ca_file in err

    # The collector's certificate is fixed: the same messages arrive, once each.
    bad.stop()
    good = receiver(f"tls://127.0.0.1:{port}", tls=server_tls_context(*test_ca.issue("good")))
    pool.flush(timeout=30)
    wait_for(lambda: good.snapshot().messages == n, what="delivery after the fix")
    assert seqs(good.output.getvalue()) == list(range(n))
    assert pool.stats(0)["connects"] == 1


def test_verify_false_accepts_any_certificate_only_when_asked(tmp_path, receiver, pools,
                                                              capfd):
    stranger = TestCA(str(tmp_path), name="self-made CA")
    r = receiver("tls://127.0.0.1:0",
                 tls=server_tls_context(*stranger.issue("x", names=("nowhere.example",))))
    pool = pools({"sinks": [{"url": r.url, "verify": False}]})
    for i in range(10):
        pool.log(0, message(0, i))
    pool.flush(timeout=30)
    wait_for(lambda: r.snapshot().messages == 10, what="unverified delivery")
    assert pool.stats(0)["tls_handshake_failures"] == 0
    assert "TLS certificate verification is off" in capfd.readouterr().err


def test_client_certificate_is_presented_and_its_absence_is_reported(
        receiver, pools, test_ca, capfd):
    r = receiver("tls://127.0.0.1:0", tls=server_tls_context(
        *test_ca.issue("server"), client_ca_file=test_ca.ca_file))
    url = f"tls://localhost:{port_of(r)}"
    without = pools({"sinks": [{"url": url, "ca_file": test_ca.ca_file}], **FAST_RETRY})
    without.log(0, message(0, 0))
    wait_for(lambda: without.stats(0)["tls_handshake_failures"] >= 2,
             what="refusal without a client certificate")
    assert without.stats(0)["sent_messages"] == 0
    err = capfd.readouterr().err
    assert "TLS handshake failed" in err and "wants a client certificate" in err, err
    assert r.snapshot().messages == 0

    cert, key = test_ca.issue("nginx-client", names=("nginx-client",), client=True)
    with_cert = pools({"sinks": [{"url": url, "ca_file": test_ca.ca_file,
                                  "cert_file": cert, "key_file": key}]})
    for i in range(100):
        with_cert.log(0, message(0, i))
    with_cert.flush(timeout=30)
    wait_for(lambda: r.snapshot().messages == 100, what="delivery with a client certificate")
    assert seqs(r.output.getvalue()) == list(range(100))


def test_reconnects_resume_the_tls_session(receiver, pools, test_ca):
    r = receiver("tls://127.0.0.1:0", tls=server_tls_context(*test_ca.issue("server")))
    pool = pools({"sinks": [{"url": f"tls://localhost:{port_of(r)}",
                             "ca_file": test_ca.ca_file}], **FAST_RETRY})
    delivered = 0
    for round_ in range(3):
        for i in range(100):
            pool.log(0, message(0, delivered + i))
        pool.flush(timeout=30)
        delivered += 100
        wait_for(lambda: r.snapshot().messages == delivered, what=f"round {round_}")
        r.drop_connections()
        wait_for(lambda: r.snapshot().connections == round_ + 1, what="connection count")
    st = pool.stats(0)
    assert st["connects"] == 3 and st["tls_resumed"] == 2, st
    assert r.snapshot().tls_resumed == 2
    assert seqs(r.output.getvalue()) == list(range(delivered))


@pytest.mark.parametrize("moment", ["idle", "mid-write"])
@pytest.mark.parametrize("scheme", ["tcp", "tls"])
def test_a_dropped_connection_resends_from_the_first_incomplete_message(
        receiver, pools, test_ca, scheme, moment):
    """Same scenario, same promise over TCP and TLS: what the collector had read stays,
    a message is never torn nor duplicated, the loss is one contiguous run of messages
    the kernel had accepted when the collector dropped the connection, and everything
    after it arrives. "mid-write": the collector stopped reading first, so the writer is
    stalled inside a send when the connection is reset."""
    if scheme == "tls":
        r = receiver("tls://127.0.0.1:0", tls=server_tls_context(*test_ca.issue("server")))
        sink = {"url": f"tls://localhost:{port_of(r)}", "ca_file": test_ca.ca_file}
    else:
        r = receiver("tcp://127.0.0.1:0")
        sink = {"url": r.url}
    pool = pools({"sinks": [sink], **FAST_RETRY, "max_buffer_length": 64 << 20})
    n = 40_000
    # mid-write: 40 MB, far more than the kernel's socket buffers (up to ~10 MB on
    # loopback) can absorb once the collector stops reading, so the writer must stall.
    span = 2000 if moment == "mid-write" else 500
    t, half = steady_producer(pool, n, size=lambda i: i % span)
    half.wait(30)
    wait_for(lambda: pool.stats(0)["connects"] == 1, what="the first connection")
    if moment == "mid-write":
        r.pause_reading()
        t.join(60)
        # Log on until the writer lags by megabytes (it can only be stalled in a send then:
        # a writer facing a reading collector on loopback never does), however much of the
        # steady stream the collector read before it paused.
        deadline = time.monotonic() + 60
        while pool.stats(0)["buffered_bytes"] <= 4 << 20:
            assert time.monotonic() < deadline, "the writer never stalled"
            pool.log(0, message(0, n, size=2000))
            n += 1
    r.drop_connections()
    t.join(60)
    pool.log(0, b"END\n")
    pool.flush(timeout=30)
    wait_for(lambda: r.output.getvalue().endswith(b"END\n"), interval=0.05,
             what="the last message")
    got = seqs(r.output.getvalue()[:-4])
    assert got == sorted(set(got)), "reordered or duplicated"
    missing = sorted(set(range(n)) - set(got))
    if missing:
        assert missing == list(range(missing[0], missing[-1] + 1)), "loss is not one run"
    st = pool.stats(0)
    assert st["reconnects"] == 1 and st["sent_messages"] == st["accepted_messages"] == n + 1
    if moment == "mid-write":
        assert st["write_errors"] == 1  # the reset came inside a send
        # Over TCP the reset drops what the kernel held. Over TLS a run was seen to lose
        # nothing (once in several CI runs): the promise is no tear, no duplicate, at most
        # one contiguous run lost, which the checks above hold in both cases.
        assert missing or scheme == "tls", "a reset inside a send loses the kernel's"
    assert r.snapshot().connections == 2


def test_a_closed_pool_ends_its_tls_connection_with_close_notify(pools, test_ca):
    """Without close_notify a strict collector (rsyslog, or Python with
    suppress_ragged_eofs=False) sees a truncation attack, not the end of the stream."""
    import socket
    import ssl
    import threading
    listener = socket.create_server(("127.0.0.1", 0))
    ctx = server_tls_context(*test_ca.issue("server"))
    got, errors = [], []

    def serve():
        conn, _ = listener.accept()
        with ctx.wrap_socket(conn, server_side=True, suppress_ragged_eofs=False) as tls:
            try:
                while data := tls.recv(65536):
                    got.append(data)
            except ssl.SSLError as exc:  # SSLEOFError: the peer left without close_notify
                errors.append(exc)

    server = threading.Thread(target=serve)
    server.start()
    pool = pools({"sinks": [{"url": f"tls://localhost:{listener.getsockname()[1]}",
                             "ca_file": test_ca.ca_file}]})
    pool.log(0, b"last words\n")
    pool.flush(timeout=30)
    assert pool.close(timeout=10) == 0
    server.join(30)
    listener.close()
    assert b"".join(got) == b"last words\n" and errors == []
