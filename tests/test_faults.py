"""Fault injection at the writer's socket seam: every accepted message arrives intact,
exactly once, in order per producer and sink, and the counters reconcile exactly."""
import json
import math
import random
import threading

import pytest

import logpool
from logpool import _embedded
from conftest import message, parse_line, wait_for

# Connect faults are decided once per connect attempt, and a slow machine (or ASan) batches
# more per write: fewer writes, fewer reconnects. 0.3 makes "every fault happened on every
# sink" hold after a few dozen connects (0.7^30 < 1e-4) whatever the speed.
ALL_FAULTS = {"connect_fail": 0.3, "connect_timeout": 0.3, "write_error": 0.1, "eagain": 0.1,
              "short_write": 0.1, "slow_write": 0.1, "exception": 0.02}
SINKS, PRODUCERS = 4, 4


def injected(pool, sink):
    _, writers = _embedded.started_pool(pool._address)
    return writers[sink].faults.counts


def produce(pool, producer, count, rng_seed, results):
    """Messages tagged (sink, producer*10^7+i); sizes log-uniform over 1 B .. 8 KiB."""
    rng = random.Random(rng_seed)
    offered = {s: [] for s in range(SINKS)}
    accepted = {s: [] for s in range(SINKS)}
    for i in range(count):
        sink = rng.randrange(SINKS)
        size = int(math.exp(rng.uniform(0, math.log(8192))))
        seq = producer * 10**7 + i
        m = message(sink, seq, size=size)
        offered[sink].append(seq)
        try:
            pool.log(sink, m)
            accepted[sink].append(seq)
        except logpool.BufferFull:
            pass
    results[producer] = (offered, accepted)


def run_load(receiver, monkeypatch, total, config_extra, seed):
    monkeypatch.setenv("LOGPOOL_TEST_FAULTS", json.dumps(dict(ALL_FAULTS, seed=seed)))
    receivers = [receiver() for _ in range(SINKS)]
    pool = logpool.Pool(dict({"sinks": [{"url": r.url} for r in receivers],
                              "retry_interval_ms": 1, "max_retry_interval_ms": 5,
                              "connect_timeout_ms": 200}, **config_extra))
    results = {}
    threads = [threading.Thread(target=produce, args=(pool, p, total // PRODUCERS, seed + p,
                                                      results)) for p in range(PRODUCERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pool.flush(timeout=120)
    counts = [injected(pool, s) for s in range(SINKS)]
    stats = pool.stats()
    assert pool.close(timeout=10) == 0
    return receivers, pool, results, counts, stats


def check_delivery(receivers, results, stats, counts):
    for sink, r in enumerate(receivers):
        expected = sorted(seq for p in results for seq in results[p][1][sink])
        wait_for(lambda: r.snapshot().messages >= len(expected), timeout=60,
                 what=f"sink {sink}'s messages")
        got_by_producer = {}
        for line in r.output.lines():
            s, seq = parse_line(line)  # intact: checksum verified
            assert s == sink
            got_by_producer.setdefault(seq // 10**7, []).append(seq)
        for p in results:
            accepted = results[p][1][sink]
            assert got_by_producer.get(p, []) == accepted  # exactly once, in order
        st, c = stats[sink], counts[sink]
        assert st["accepted_messages"] == st["sent_messages"] == len(expected)
        assert st["accepted_bytes"] == st["sent_bytes"]
        assert st["write_errors"] == c["write_error"]
        assert st["connect_failures"] == c["connect_fail"] + c["connect_timeout"]
        assert st["writer_errors"] == c["exception"]
        assert st["reconnects"] == st["connects"] - 1
        assert r.snapshot().torn <= c["write_error"] + c["exception"]


def test_200k_messages_through_random_faults_arrive_exactly_once(receiver, monkeypatch):
    # Buffers big enough for the whole run: this test is about faults, not backpressure.
    receivers, pool, results, counts, stats = run_load(
        receiver, monkeypatch, 200_000, {"max_buffer_length": 256 * 1024 * 1024}, 7)
    assert sum(len(a) for p in results for a in results[p][1].values()) == 200_000
    check_delivery(receivers, results, stats, counts)
    # Every fault really happened, on every sink.
    for c in counts:
        for kind in ("connect_fail", "write_error", "eagain", "short_write", "slow_write"):
            assert c[kind] > 0, (kind, c)


def test_small_buffers_refuse_at_the_bound_and_lose_nothing_else(receiver, monkeypatch):
    receivers, pool, results, counts, stats = run_load(
        receiver, monkeypatch, 40_000, {"max_buffer_length": 65536, "max_message_size": 9000},
        11)
    offered = sum(len(o) for p in results for o in results[p][0].values())
    accepted = sum(len(a) for p in results for a in results[p][1].values())
    refused = sum(s["dropped_full"] for s in stats)
    assert offered == 40_000 and accepted + refused == offered and refused > 0
    check_delivery(receivers, results, stats, counts)


def test_unexpected_writer_errors_are_logged_rate_limited_counted_and_survived(
        receiver, monkeypatch, capfd):
    monkeypatch.setenv("LOGPOOL_TEST_FAULTS", json.dumps({"exception": 0.3, "seed": 3}))
    r = receiver()
    with logpool.Pool({"sinks": [{"url": r.url}], "retry_interval_ms": 1,
                       "max_retry_interval_ms": 2, "flush_limit": 512}) as pool:
        for i in range(2000):
            pool.log(0, message(0, i))
            if i % 10 == 9:
                pool.flush(timeout=30)  # 200 batches: 200 chances for the fault
        st = pool.stats(0)
        raised = injected(pool, 0)["exception"]
    assert raised > 5 and st["writer_errors"] == raised
    wait_for(lambda: r.snapshot().messages == 2000, what="every message despite the errors")
    assert [parse_line(x)[1] for x in r.output.lines()] == list(range(2000))
    err = capfd.readouterr().err
    lines = [x for x in err.splitlines() if "internal error" in x]
    assert len(lines) == 1, lines  # the first one, with its traceback; repeats rate-limited
    assert "RuntimeError: injected" in err and "Traceback" not in err.split("internal error")[0]


def test_fault_seam_is_off_without_the_environment_variable(receiver, monkeypatch):
    monkeypatch.delenv("LOGPOOL_TEST_FAULTS", raising=False)
    r = receiver()
    with logpool.Pool({"sinks": [{"url": r.url}]}) as pool:
        _, writers = _embedded.started_pool(pool._address)
        assert writers[0].faults is None
    with pytest.raises(logpool.ConfigError):
        logpool.Pool({"sinks": [{"url": r.url}], "faults": {"write_error": 1}})
