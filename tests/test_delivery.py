"""Delivery semantics through the Python API, over real sockets, in the pytest host."""
import socket
import threading
import time

import pytest

import logpool
from conftest import message, parse_line, sock_path, steady_producer, wait_for


def seqs(lines, sink=0):
    out = []
    for line in lines:
        s, seq = parse_line(line + b"\n")
        if s == sink:
            out.append(seq)
    return out


def test_many_small_messages_leave_in_far_fewer_writes(receiver, pools):
    r = receiver()
    pool = pools({"sinks": [{"url": r.url}], "flush_limit": 65536})
    n = 100_000
    for i in range(n):
        pool.log(0, message(0, i))
    pool.flush(timeout=10)
    st = pool.stats(0)
    assert st["sent_messages"] == n
    assert st["writes"] <= n // 100, st["writes"]
    wait_for(lambda: r.snapshot().messages == n, timeout=60, what="all lines")
    assert seqs(r.output.lines()) == list(range(n))


def test_periodic_flush_delivers_a_lone_message_in_time(receiver, pools):
    r = receiver()
    periodic_ms = 500
    pool = pools({"sinks": [{"url": r.url}], "periodic_flush_ms": periodic_ms})
    wait_for(lambda: pool.stats(0)["connected"], what="connected")
    start = time.monotonic()
    pool.log(0, message(0, 1))
    wait_for(lambda: r.output.lines(), timeout=30, interval=0.001, what="the message")
    elapsed_ms = (time.monotonic() - start) * 1000
    # The writer sleeps until the deadline (batching), then sends at once: not before the
    # deadline, and not a whole period late (the slack a loaded 2-core machine needs to
    # schedule the writer and the receiver's thread is well under one period).
    assert periodic_ms * 0.9 <= elapsed_ms < periodic_ms * 2, elapsed_ms


def test_reaching_flush_limit_sends_before_the_periodic_deadline(receiver, pools):
    r = receiver()
    pool = pools({"sinks": [{"url": r.url}], "periodic_flush_ms": 60_000, "flush_limit": 4096})
    wait_for(lambda: pool.stats(0)["connected"], what="connected")
    n = 0
    while pool.stats(0)["accepted_bytes"] < 4096:
        pool.log(0, message(0, n))
        n += 1
    # Any time well before the 60 s periodic deadline proves the limit sent it.
    wait_for(lambda: r.snapshot().messages == n, timeout=30, what="the batch")


def test_receiver_restart_mid_stream_loses_and_duplicates_nothing(receive_process, pools):
    rp = receive_process()
    pool = pools({"sinks": [{"url": rp.url}], "retry_interval_ms": 20,
                  "max_retry_interval_ms": 100})
    n = 60_000
    t, half = steady_producer(pool, n)
    half.wait(30)
    assert rp.stop() == 0
    rp2 = receive_process(rp.listen, rp.out_path)  # same socket path, same output file
    t.join(60)
    assert not t.is_alive()
    pool.flush(timeout=20)
    assert rp2.stop() == 0
    got = seqs(rp2.lines())
    assert got == list(range(n))  # every message once, in order; torn ones were resent
    st = pool.stats(0)
    assert st["reconnects"] >= 1 and st["connects"] == st["reconnects"] + 1
    assert st["sent_messages"] == st["accepted_messages"] == n


def test_backpressure_refuses_at_the_bound_then_delivers_everything_accepted(tmp_path, receiver,
                                                                             pools):
    path = sock_path(tmp_path, "later.sock")
    pool = pools({"sinks": [{"url": "unix:" + path}], "max_buffer_length": 100_000,
                  "retry_interval_ms": 10, "max_retry_interval_ms": 50})
    accepted, refused = [], 0
    for i in range(3000):
        m = message(0, i, length=100)
        assert len(m) == 100
        try:
            pool.log(0, m)
            accepted.append(i)
        except logpool.BufferFull:
            refused += 1
    assert (len(accepted), refused) == (1000, 2000)
    st = pool.stats(0)
    assert (st["accepted_messages"], st["dropped_full"], st["buffered_bytes"]) == (1000, 2000,
                                                                                   100_000)
    r = receiver("unix:" + path)
    pool.flush(timeout=10)
    wait_for(lambda: r.snapshot().messages == 1000, what="every accepted message")
    assert seqs(r.output.lines()) == accepted
    assert pool.stats(0)["connect_failures"] >= 1


def test_many_producer_threads_never_interleave_and_counts_are_exact(receiver, pools):
    r = receiver()
    sinks = 2
    # Room for everything: this test is about interleaving, not backpressure.
    pool = pools({"sinks": [{"url": r.url}, {"url": r.url}],
                  "max_buffer_length": 256 * 1024 * 1024})
    threads, per_thread = 8, 10_000

    def produce(t):
        for i in range(per_thread):
            sink = i % sinks
            pool.log(sink, message(t, i, size=(i * 37) % 2000))

    workers = [threading.Thread(target=produce, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    pool.flush(timeout=20)
    total = threads * per_thread
    wait_for(lambda: r.snapshot().messages == total, timeout=60, what="all lines")
    by_thread = {}
    for line in r.output.lines():
        t, i = parse_line(line + b"\n")
        by_thread.setdefault(t, []).append(i)
    for t in range(threads):
        # Per sink, a thread's messages keep their order; across both, each arrives once.
        assert sorted(by_thread[t]) == list(range(per_thread))
        for sink in range(sinks):
            mine = [i for i in by_thread[t] if i % sinks == sink]
            assert mine == sorted(mine)
    stats = pool.stats()
    assert sum(s["accepted_messages"] for s in stats) == total
    assert sum(s["sent_messages"] for s in stats) == total


def _ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize("listen", ["tcp://127.0.0.1:0", "tcp://[::1]:0", "localhost"])
def test_tcp_sinks_ipv4_ipv6_and_names(receiver, pools, listen):
    if "::1" in listen:
        assert _ipv6_loopback(), "IPv6 loopback is required on test machines"
    if listen == "localhost":
        r = receiver("tcp://127.0.0.1:0")
        url = "tcp://localhost:" + r.url.rsplit(":", 1)[1]  # resolved by the writer thread
    else:
        r = receiver(listen)
        url = r.url
    pool = pools({"sinks": [{"url": url}]})
    for i in range(5000):
        pool.log(0, message(0, i))
    pool.flush(timeout=10)
    wait_for(lambda: r.snapshot().messages == 5000, timeout=60, what="all lines")
    assert seqs(r.output.lines()) == list(range(5000))


def test_close_delivers_then_reports_zero_abandoned(receiver):
    r = receiver()
    with logpool.Pool({"sinks": [{"url": r.url}], "periodic_flush_ms": 60_000}) as pool:
        for i in range(100):
            pool.log(0, message(0, i))
    assert pool.close() == 0  # idempotent after the with block closed it
    wait_for(lambda: r.snapshot().messages == 100, what="all lines")
    with pytest.raises(logpool.PoolClosed):
        pool.log(0, b"late\n")


def test_python_api_errors_and_names(tmp_path, pools):
    url = "unix:" + sock_path(tmp_path, "none.sock")
    pool = pools({"sinks": [{"url": url, "name": "app"}], "max_message_size": 10})
    assert pool.log("app", "0123456789") == 10
    with pytest.raises(logpool.MessageTooBig):
        pool.log("app", b"x" * 11)
    with pytest.raises(logpool.NoSuchSink):
        pool.log("nope", b"x")
    with pytest.raises(logpool.NoSuchSink):
        pool.log(3, b"x")
    with pytest.raises(logpool.Timeout):
        pool.flush(timeout=0.05)
    with pytest.raises(logpool.ConfigError) as info:
        logpool.Pool({"sinks": [{"url": url}], "periodic_flush": 5})
    assert isinstance(info.value, ValueError) and "periodic_flush" in str(info.value)
    st = pool.stats("app")
    assert st["dropped_too_big"] == 1 and "connect failed" in st["last_error"]
