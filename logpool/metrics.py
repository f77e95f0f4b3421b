"""Prometheus exposition of a pool: the C counters (read without stopping producers) and
the writers' histograms, through a prometheus_client custom collector.

Labels: `sink` carries the sink's name (its URL when unnamed). Units are in the names.
"""
from prometheus_client.core import (CollectorRegistry, CounterMetricFamily,
                                    GaugeMetricFamily, HistogramMetricFamily)
from prometheus_client.exposition import generate_latest

from logpool import stats as stats_mod
from logpool.engine.histograms import WriterHistograms

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
    ("spool_writes", "spool_writes", "Messages written to the disk spool."),
    ("spool_replayed", "spool_replayed", "Messages read back from the disk spool to be sent."),
    ("spool_corrupt", "spool_corrupt",
     "Spool records skipped: torn (a process died writing them) or failing their CRC."),
    ("resent_messages", "resent_messages",
     "Messages sent again after a broken session (RELP: their acknowledgement was lost)."),
)
GAUGES = (
    ("buffered_bytes", "buffered_bytes", "Bytes accepted and not yet completely written."),
    ("buffered_messages", "buffered_messages", "Messages accepted and not yet written."),
    ("connected", "connected", "1 while the sink's writer holds a connection."),
    ("spooled_bytes", "spooled_bytes", "Bytes in the sink's disk spool, not sent yet."),
    ("spooled_messages", "spooled_messages", "Messages in the sink's disk spool."),
    ("unacked_messages", "unacked_messages",
     "Messages sent to an acknowledging collector (RELP) and not acknowledged yet."),
)
DROPS = (("full", "dropped_full"), ("too_big", "dropped_too_big"),
         ("closed", "dropped_closed"), ("unsendable", "dropped_unsendable"),
         ("rejected", "dropped_rejected"), ("spool_full", "dropped_spool_full"))


class PoolCollector:
    """prometheus_client collector for one pool of this interpreter."""

    def __init__(self, ffi, lib, pool_ptr, cfg, writers):
        self.ffi, self.lib, self.pool, self.cfg, self.writers = ffi, lib, pool_ptr, cfg, writers

    def collect(self):
        stats = []
        buf = self.ffi.new("logpool_stats_t *")
        for sink in self.cfg.sinks:
            self.lib.logpool_stats(self.pool, sink.index, buf)
            stats.append((sink.name, stats_mod.as_dict(self.ffi, buf)))
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
        connects = CounterMetricFamily(
            "logpool_collector_connects", "Successful connects, per collector of a sink "
            "(several with failover).", labels=["sink", "collector"])
        failures = CounterMetricFamily(
            "logpool_collector_connect_failures", "Failed connect attempts, per collector.",
            labels=["sink", "collector"])
        for sink, w in zip(self.cfg.sinks, self.writers):
            for url, (ok, failed) in list(w.transport.collector_stats.items()):
                connects.add_metric([sink.name, url], ok)
                failures.add_metric([sink.name, url], failed)
        yield connects
        yield failures
        yield from kafka_families(self.cfg.sinks, self.writers)
        for metric, help_text in WriterHistograms.HELP.items():
            fam = HistogramMetricFamily(f"logpool_{metric}", help_text, labels=["sink"])
            for sink, w in zip(self.cfg.sinks, self.writers):
                buckets, total = getattr(w.histograms, metric).snapshot()
                fam.add_metric([sink.name], buckets, total)
            yield fam


def kafka_families(sinks, writers):
    """Gauges from librdkafka's statistics (statistics.interval.ms) of Kafka sinks."""
    queue = GaugeMetricFamily("logpool_kafka_queue_messages",
                              "Messages in librdkafka's producer queue.", labels=["sink"])
    up = GaugeMetricFamily("logpool_kafka_broker_up", "1 while librdkafka's connection to a "
                           "broker is UP.", labels=["sink", "broker"])
    rtt = GaugeMetricFamily("logpool_kafka_broker_rtt_seconds",
                            "Average round trip to a broker in the last statistics window.",
                            labels=["sink", "broker"])
    for sink, w in zip(sinks, writers):
        stats = getattr(w.transport, "statistics", None)
        if not stats:
            continue
        queue.add_metric([sink.name], stats.get("msg_cnt", 0))
        for name, broker in stats.get("brokers", {}).items():
            if broker.get("nodeid", -1) < 0:
                continue  # the bootstrap placeholders
            up.add_metric([sink.name, name], 1 if broker.get("state") == "UP" else 0)
            rtt.add_metric([sink.name, name], broker.get("rtt", {}).get("avg", 0) / 1e6)
    return queue, up, rtt


def render(ffi, lib, pool_ptr, cfg, writers):
    """Prometheus text exposition (bytes) of one pool."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PoolCollector(ffi, lib, pool_ptr, cfg, writers))
    return generate_latest(registry)
