"""Prometheus metrics and error reporting: parsed with prometheus_client's own parser;
every counter moves exactly as the situation demands."""
import re
import time

from prometheus_client.parser import text_string_to_metric_families

import logpool
from conftest import message, sock_path, wait_for


def samples(pool):
    """{(name, frozenset(labels)): value} of pool.metrics()."""
    out = {}
    for family in text_string_to_metric_families(pool.metrics()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(m, name, **labels):
    return m[(name, frozenset(labels.items()))]


def drops(m, sink):
    return {r: value(m, "logpool_dropped_messages_total", sink=sink, reason=r)
            for r in ("full", "too_big", "closed")}


def test_each_drop_moves_exactly_one_counter_with_its_reason(tmp_path, pools):
    url = "unix:" + sock_path(tmp_path, "down.sock")
    pool = pools({"sinks": [{"url": url, "name": "app"}], "max_buffer_length": 100,
                  "max_message_size": 60, "flush_limit": 50})
    assert drops(samples(pool), "app") == {"full": 0, "too_big": 0, "closed": 0}
    try:
        pool.log("app", b"x" * 61)
    except logpool.MessageTooBig:
        pass
    assert drops(samples(pool), "app") == {"full": 0, "too_big": 1, "closed": 0}
    pool.log("app", b"x" * 60)
    try:
        pool.log("app", b"x" * 41)
    except logpool.BufferFull:
        pass
    m = samples(pool)
    assert drops(m, "app") == {"full": 1, "too_big": 1, "closed": 0}
    assert value(m, "logpool_buffered_bytes", sink="app") == 60
    assert value(m, "logpool_accepted_messages_total", sink="app") == 1
    assert value(m, "logpool_connected", sink="app") == 0
    assert pool.close(timeout=0) == 1
    try:
        pool.log("app", b"late")
    except logpool.PoolClosed:
        pass
    m = samples(pool)
    assert drops(m, "app") == {"full": 1, "too_big": 1, "closed": 1}
    assert value(m, "logpool_abandoned_messages_total", sink="app") == 1


def test_reconnects_and_histograms_follow_the_traffic(tmp_path, receive_process, pools):
    rp = receive_process()
    pool = pools({"sinks": [{"url": rp.url, "name": "app"}], "retry_interval_ms": 10,
                  "max_retry_interval_ms": 50})
    for i in range(100):
        pool.log("app", message(0, i))
    pool.flush(timeout=10)
    m = samples(pool)
    assert value(m, "logpool_connects_total", sink="app") == 1
    assert value(m, "logpool_reconnects_total", sink="app") == 0
    batches = value(m, "logpool_batch_bytes_count", sink="app")
    assert batches >= 1
    assert value(m, "logpool_batch_bytes_sum", sink="app") == \
        value(m, "logpool_sent_bytes_total", sink="app")
    # Observed by the writer just after the batch's last byte went, which flush may beat.
    wait_for(lambda: value(samples(pool), "logpool_message_processing_seconds_count",
                           sink="app") == batches, what="the last batch's observation")
    assert value(m, "logpool_buffer_await_seconds_count", sink="app") == batches
    assert value(m, "logpool_connect_duration_seconds_count", sink="app") == 1
    rp.stop()
    rp2 = receive_process(rp.listen, rp.out_path)
    pool.log("app", message(0, 100))
    pool.flush(timeout=10)
    m = samples(pool)
    assert value(m, "logpool_reconnects_total", sink="app") == 1
    assert value(m, "logpool_connects_total", sink="app") == 2
    assert value(m, "logpool_batch_bytes_count", sink="app") == batches + 1
    rp2.stop()


def test_a_sink_down_for_30_s_with_traffic_logs_a_handful_of_lines(tmp_path, capfd):
    url = "unix:" + sock_path(tmp_path, "down30.sock")
    pool = logpool.Pool({"sinks": [{"url": url}], "max_buffer_length": 10_000,
                         "retry_interval_ms": 20, "max_retry_interval_ms": 100})
    # The reporter's clock runs 20x faster than the wall: 30 s of the scenario in 1.5 s.
    real_start = time.monotonic()
    scenario = lambda: real_start + (time.monotonic() - real_start) * 20  # noqa: E731
    logpool._embedded.started_pool(pool._address)[1][0].reporter.clock = scenario
    start = scenario()
    offered = 0
    while scenario() - start < 30:  # the scenario: 30 s of traffic, sink down
        for _ in range(50):
            offered += 1
            try:
                pool.log(0, b"x" * 99 + b"\n")
            except logpool.BufferFull:
                pass
        time.sleep(0.01)
    st = pool.stats(0)
    pool.close(timeout=0)
    err = capfd.readouterr().err
    lines = [x for x in err.splitlines() if "logpool:" in x]
    assert st["connect_failures"] > 5 and st["dropped_full"] > offered // 2
    assert 2 <= len(lines) <= 12, lines  # first of each kind, then one per 10 s with counts
    assert any(re.search(r"\(\d+ more in the last 10 s\)", x) for x in lines), lines
    assert any("refused: buffer full" in x for x in lines), lines
    assert "retrying in" in lines[0]


def as_prometheus_client(families):
    """The same families built with prometheus_client's own classes."""
    from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                        HistogramMetricFamily)
    kinds = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily,
             "histogram": HistogramMetricFamily}
    for fam in families:
        theirs = kinds[fam.kind](fam.name, fam.help, labels=list(fam.labels))
        if fam.kind == "histogram":
            by_series = {}
            for name, labels, v in fam.samples:
                key = tuple(labels[k] for k in fam.labels)
                series = by_series.setdefault(key, {"buckets": [], "sum": None})
                if name.endswith("_bucket"):
                    series["buckets"].append((labels["le"], v))
                elif name.endswith("_sum"):
                    series["sum"] = v
            for key, series in by_series.items():
                theirs.add_metric(list(key), series["buckets"], series["sum"])
        else:
            for _, labels, v in fam.samples:
                theirs.add_metric([labels[k] for k in fam.labels], v)
        yield theirs


def render_with_prometheus_client(families):
    from prometheus_client import CollectorRegistry, generate_latest

    class Collector:
        def collect(self):
            return as_prometheus_client(families)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector())
    return generate_latest(registry)


def test_exposition_is_byte_for_byte_what_prometheus_client_writes(tmp_path, receiver, pools):
    # logpool renders the text format itself (prometheus_client's import costs every scraped
    # nginx worker 6.4 MiB): it must not differ from the library's by one byte, for a real
    # pool's families and for awkward names and numbers.
    from logpool import _embedded, metrics
    rx = receiver()
    pool = pools({"sinks": [{"url": rx.url, "name": 'we"ird\\name\nx'}]})
    for i in range(100):
        pool.log(0, message(0, i))
    pool.flush(timeout=10)
    cfg, writers = _embedded.started_pool(pool._address)
    ffi, lib = writers[0].chain.ffi, writers[0].chain.lib
    families = list(metrics.PoolCollector(ffi, lib, ffi.cast("logpool_t *", pool._address),
                                          cfg, writers).collect())
    odd = metrics.Family("logpool_odd", "gauge", "help with \\ and\nnewline", ["sink", "le2"])
    for v in (0, 1, 1.5, 1234567.0, 12345678912.0, 1e-7, float("inf"), -3, 2 ** 53):
        odd.add_metric(["ü \"x\"", str(v)], v)
    families.append(odd)
    ours = metrics.exposition(families)
    assert ours == render_with_prometheus_client(families)
    assert b'sink="we\\"ird\\\\name\\nx"' in ours
    assert len(list(text_string_to_metric_families(ours.decode()))) == len(families)
