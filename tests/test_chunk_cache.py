"""The chunks a burst used: kept for the next burst (so that it writes into memory already
mapped), given back when the sink is idle: under the pool's cap (8 MiB shared among its
sinks), then down to the pre-faulted reserve. Read through logpool__sink_cache, an internal
counter of free chunks."""
from logpool import _embedded
from conftest import sock_path, wait_for

CAP = 8 << 20
BURST, SIZE = 50_000, 200


def cache(pool, sink=0):
    writer = _embedded.started_pool(pool._address)[1][sink]
    out = writer.ffi.new("logpool__cache_t *")
    writer.lib.logpool__sink_cache(writer.c, out)
    return dict(cached=out.cached_bytes, reserve=out.reserve_bytes, limit=out.limit_bytes)


def test_a_burst_keeps_its_chunks_and_an_idle_sink_gives_them_back(tmp_path, receiver, pools):
    path = sock_path(tmp_path, "late.sock")
    # Nobody listens yet: the burst piles up in the chain (10 MB, about 150 chunks), as when
    # producers outrun the writer; then the collector comes and the writer drains it all.
    pool = pools({"sinks": [{"url": "unix:" + path}], "retry_interval_ms": 10,
                  "max_retry_interval_ms": 20})
    before = cache(pool)
    assert before["reserve"] <= before["limit"] <= CAP
    line = b"x" * (SIZE - 1) + b"\n"
    for _ in range(BURST):
        pool.log(0, line)
    r = receiver("unix:" + path)
    pool.flush(timeout=60)
    wait_for(lambda: r.snapshot().messages == BURST, timeout=60, what="the burst delivered")

    kept = cache(pool)
    assert kept["cached"] > kept["reserve"], kept  # the burst's chunks, kept for the next one

    # Idle: the high-water mark decays, under the cap, then back to the pre-faulted reserve
    # (nothing to fake: the writer gives memory back on its own while it waits for a batch).
    wait_for(lambda: cache(pool)["cached"] <= kept["limit"], timeout=60,
             what="idle cache under the cap")
    wait_for(lambda: cache(pool)["cached"] <= kept["reserve"], timeout=60,
             what="idle cache back to the reserve")
    assert pool.stats(0)["sent_messages"] == BURST


def test_the_cap_is_shared_by_the_sinks_of_a_pool(tmp_path, pools):
    sinks = [{"url": "unix:" + sock_path(tmp_path, f"s{i}.sock")} for i in range(4)]
    pool = pools({"sinks": sinks})
    limits = [cache(pool, i)["limit"] for i in range(4)]
    assert sum(limits) <= CAP
    assert all(cache(pool, i)["reserve"] <= limits[i] for i in range(4))


def test_an_idle_pool_of_many_sinks_keeps_only_the_reserve_after_a_burst(tmp_path, receiver,
                                                                        pools):
    # Small chunks (flush_limit 4 KiB) and 16 sinks: idle, the pool keeps at most the cap
    # over all its sinks, then each sink only its reserve.
    r = receiver()
    pool = pools({"sinks": [{"url": r.url}] * 16, "flush_limit": 4096})
    line = b"y" * (SIZE - 1) + b"\n"
    for i in range(16 * 2000):
        pool.log(i % 16, line)
    pool.flush(timeout=60)
    wait_for(lambda: sum(cache(pool, i)["cached"] for i in range(16)) <= CAP, timeout=60,
             what="the pool's idle cache under the cap")
    wait_for(lambda: all(cache(pool, i)["cached"] <= cache(pool, i)["reserve"]
                         for i in range(16)), timeout=60, what="every sink back to its reserve")
