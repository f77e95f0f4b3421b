"""Prometheus exposition of a pool: the C counters (read without stopping producers) and
the writers' histograms, through a prometheus_client custom collector.

Labels: `sink` carries the sink's name (its URL when unnamed). Units are in the names.
"""
import bisect
import threading

from prometheus_client.core import (CollectorRegistry, CounterMetricFamily,
                                    GaugeMetricFamily, HistogramMetricFamily)
from prometheus_client.exposition import generate_latest

from logpool.pool import STATS_FIELDS

SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)
BYTES_BUCKETS = (256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)

COUNTERS = (
    # (metric, stats field, help)
    ("accepted_messages", "accepted_messages", "Messages accepted by log_cdata."),
    ("accepted_bytes", "accepted_bytes", "Bytes accepted by log_cdata."),
    ("sent_messages", "sent_messages", "Messages completely written to a socket."),
    ("sent_bytes", "sent_bytes", "Bytes of messages completely written to a socket."),
    ("abandoned_messages", "abandoned_messages",
     "Accepted messages still buffered when the pool was closed."),
    ("connects", "connects", "Successful connects."),
    ("connect_failures", "connect_failures", "Failed connect attempts."),
    ("write_errors", "write_errors", "Connections that broke while writing."),
    ("reconnects", "reconnects", "Successful connects after the first one."),
    ("writer_errors", "writer_errors", "Unexpected errors inside the writer (logged)."),
    ("writes", "writes", "Send calls that wrote at least one byte."),
    ("resent_bytes", "resent_bytes", "Bytes written again after a broken connection."),
    ("tls_handshake_failures", "tls_handshake_failures",
     "TLS handshakes that failed (certificate refused, protocol error); also connect failures."),
    ("tls_resumed", "tls_resumed", "TLS handshakes that resumed an earlier session."),
)
GAUGES = (
    ("buffered_bytes", "buffered_bytes", "Bytes accepted and not yet completely written."),
    ("buffered_messages", "buffered_messages", "Messages accepted and not yet written."),
    ("connected", "connected", "1 while the sink's writer holds a connection."),
)
DROPS = (("full", "dropped_full"), ("too_big", "dropped_too_big"),
         ("closed", "dropped_closed"), ("unsendable", "dropped_unsendable"))


class Histogram:
    """Fixed buckets, written by one writer thread, read by scrapes (under a small lock)."""

    def __init__(self, buckets):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.lock = threading.Lock()

    def observe(self, value):
        i = bisect.bisect_left(self.buckets, value)
        with self.lock:
            self.counts[i] += 1
            self.sum += value

    def snapshot(self):
        """[(le, cumulative count)], sum — prometheus_client's HistogramMetricFamily shape."""
        with self.lock:
            counts, total = list(self.counts), self.sum
        out, running = [], 0
        for le, c in zip(list(map(str, self.buckets)) + ["+Inf"], counts):
            running += c
            out.append((le, running))
        return out, total


class WriterHistograms:
    def __init__(self):
        self.buffer_await_seconds = Histogram(SECONDS_BUCKETS)
        self.message_processing_seconds = Histogram(SECONDS_BUCKETS)
        self.batch_bytes = Histogram(BYTES_BUCKETS)
        self.connect_duration_seconds = Histogram(SECONDS_BUCKETS)

    HELP = {
        "buffer_await_seconds": "How long the writer waited for a batch.",
        "message_processing_seconds":
            "From the oldest byte of a batch accepted to the batch completely written.",
        "batch_bytes": "Bytes per batch taken by the writer.",
        "connect_duration_seconds": "Duration of connect attempts, failed ones included.",
    }


class PoolCollector:
    """prometheus_client collector for one pool of this interpreter."""

    def __init__(self, ffi, lib, pool_ptr, cfg, writers):
        self.ffi, self.lib, self.pool, self.cfg, self.writers = ffi, lib, pool_ptr, cfg, writers

    def collect(self):
        stats = []
        buf = self.ffi.new("logpool_stats_t *")
        for sink in self.cfg.sinks:
            self.lib.logpool_stats(self.pool, sink.index, buf)
            stats.append((sink.name, {f: getattr(buf, f) for f in STATS_FIELDS}))
        for metric, field, help_text in COUNTERS:
            fam = CounterMetricFamily(f"logpool_{metric}", help_text, labels=["sink"])
            for name, s in stats:
                fam.add_metric([name], s[field])
            yield fam
        fam = CounterMetricFamily("logpool_dropped_messages",
                                  "Messages refused by log_cdata, by reason.",
                                  labels=["sink", "reason"])
        for name, s in stats:
            for reason, field in DROPS:
                fam.add_metric([name, reason], s[field])
        yield fam
        for metric, field, help_text in GAUGES:
            fam = GaugeMetricFamily(f"logpool_{metric}", help_text, labels=["sink"])
            for name, s in stats:
                fam.add_metric([name], s[field])
            yield fam
        for metric, help_text in WriterHistograms.HELP.items():
            fam = HistogramMetricFamily(f"logpool_{metric}", help_text, labels=["sink"])
            for sink, w in zip(self.cfg.sinks, self.writers):
                buckets, total = getattr(w.histograms, metric).snapshot()
                fam.add_metric([sink.name], buckets, total)
            yield fam


def render(ffi, lib, pool_ptr, cfg, writers):
    """Prometheus text exposition (bytes) of one pool."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PoolCollector(ffi, lib, pool_ptr, cfg, writers))
    return generate_latest(registry)
