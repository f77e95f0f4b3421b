"""Prometheus exposition of a pool: the C counters (read without stopping producers) and
the writers' histograms, in the text format (0.0.4) that prometheus_client's
generate_latest writes.

Rendered here rather than by prometheus_client because this runs inside every nginx worker
that is scraped: importing any part of prometheus_client loads its whole package (HTTP
servers, wsgiref, urllib: about 100 modules), which added 6.4 MiB of private memory to each
worker. tests/test_metrics.py renders the same families with prometheus_client and checks
the bytes are identical, and parses them with its parser.

Labels: `sink` carries the sink's name (its URL when unnamed). Units are in the names.
"""
import math

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
    ("spool_bad_entries", "spool_bad_entries",
     "Spool directory entries skipped: not a regular file, not ours, unreadable, or a garbage "
     "progress file."),
    ("resent_messages", "resent_messages",
     "Messages sent again after an answer that was never seen (a broken session, a timeout): "
     "each may arrive twice."),
    ("retried_messages", "retried_messages",
     "Messages sent again after a definite refusal or a request to retry later: nothing was "
     "stored, no duplicate."),
    ("dead_letters", "dead_letters", "Rejected messages appended to dead_letter_path."),
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
         ("rejected", "dropped_rejected"), ("spool_full", "dropped_spool_full"),
         ("spool_replay", "dropped_spool_replay"))


class Family:
    """One metric family: what prometheus_client's *MetricFamily classes hold."""
    __slots__ = ("name", "kind", "help", "labels", "samples")

    def __init__(self, name, kind, help_text, labels):
        self.name, self.kind, self.help, self.labels = name, kind, help_text, tuple(labels)
        self.samples = []  # (sample name, {label: value}, value)

    def add_metric(self, values, value):
        suffix = "_total" if self.kind == "counter" else ""
        self.samples.append((self.name + suffix, dict(zip(self.labels, values)), value))

    def add_histogram(self, values, buckets, total):
        """buckets: [(le, cumulative count)] ending with "+Inf"."""
        labels = dict(zip(self.labels, values))
        for le, count in buckets:
            self.samples.append((self.name + "_bucket", {**labels, "le": le}, count))
        self.samples.append((self.name + "_count", labels, buckets[-1][1]))
        self.samples.append((self.name + "_sum", labels, total))


def go_float(value):
    """A number as Prometheus' Go parser reads it back (prometheus_client's floatToGoString)."""
    d = float(value)
    if math.isinf(d):
        return "+Inf" if d > 0 else "-Inf"
    if math.isnan(d):
        return "NaN"
    s = repr(d)
    dot = s.find(".")
    if d > 0 and dot > 6:  # Go uses an exponent sooner than Python
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


def escape_label_value(text):
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text):
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def exposition(families):
    """The text exposition format, as bytes."""
    out = []
    for fam in families:
        name = fam.name + "_total" if fam.kind == "counter" else fam.name
        out.append(f"# HELP {name} {escape_help(fam.help)}\n")
        out.append(f"# TYPE {name} {fam.kind}\n")
        for sample, labels, value in fam.samples:
            text = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in sorted(labels.items()))
            out.append(f"{sample}{{{text}}} {go_float(value)}\n" if text
                       else f"{sample} {go_float(value)}\n")
    return "".join(out).encode("utf-8")


class PoolCollector:
    """The metric families of one pool of this interpreter."""

    def __init__(self, ffi, lib, pool_ptr, cfg, writers):
        self.ffi, self.lib, self.pool, self.cfg, self.writers = ffi, lib, pool_ptr, cfg, writers

    def collect(self):
        stats = []
        buf = self.ffi.new("logpool_stats_t *")
        for sink in self.cfg.sinks:
            self.lib.logpool_stats(self.pool, sink.index, buf)
            stats.append((sink.name, stats_mod.as_dict(self.ffi, buf)))
        for metric, field, help_text in COUNTERS:
            fam = Family(f"logpool_{metric}", "counter", help_text, ["sink"])
            for name, s in stats:
                fam.add_metric([name], s[field])
            yield fam
        fam = Family("logpool_dropped_messages", "counter",
                     "Messages refused by log_cdata, by reason.", ["sink", "reason"])
        for name, s in stats:
            for reason, field in DROPS:
                fam.add_metric([name, reason], s[field])
        yield fam
        for metric, field, help_text in GAUGES:
            fam = Family(f"logpool_{metric}", "gauge", help_text, ["sink"])
            for name, s in stats:
                fam.add_metric([name], s[field])
            yield fam
        connects = Family(
            "logpool_collector_connects", "counter", "Successful connects, per collector of a "
            "sink (several with failover).", ["sink", "collector"])
        failures = Family(
            "logpool_collector_connect_failures", "counter",
            "Failed connect attempts, per collector.", ["sink", "collector"])
        for sink, w in zip(self.cfg.sinks, self.writers):
            for url, (ok, failed) in list(w.transport.collector_stats.items()):
                connects.add_metric([sink.name, url], ok)
                failures.add_metric([sink.name, url], failed)
        yield connects
        yield failures
        rejected = Family(
            "logpool_rejected_messages", "counter", "Messages the collector refused for good "
            "(also in dropped_messages_total{reason=\"rejected\"}), by kind of reason (at "
            "most 32 kinds per sink, then \"other\").", ["sink", "reason"])
        for sink, w in zip(self.cfg.sinks, self.writers):
            for kind, count in sorted(w.rejected_by_kind.items()):
                rejected.add_metric([sink.name, kind], count)
        yield rejected
        yield from kafka_families(self.cfg.sinks, self.writers)
        for metric, help_text in WriterHistograms.HELP.items():
            fam = Family(f"logpool_{metric}", "histogram", help_text, ["sink"])
            for sink, w in zip(self.cfg.sinks, self.writers):
                buckets, total = getattr(w.histograms, metric).snapshot()
                fam.add_histogram([sink.name], buckets, total)
            yield fam


def kafka_families(sinks, writers):
    """Gauges from librdkafka's statistics (statistics.interval.ms) of Kafka sinks."""
    queue = Family("logpool_kafka_queue_messages", "gauge",
                   "Messages in librdkafka's producer queue.", ["sink"])
    up = Family("logpool_kafka_broker_up", "gauge", "1 while librdkafka's connection to a "
                "broker is UP.", ["sink", "broker"])
    rtt = Family("logpool_kafka_broker_rtt_seconds", "gauge",
                 "Average round trip to a broker in the last statistics window.",
                 ["sink", "broker"])
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
    return exposition(PoolCollector(ffi, lib, pool_ptr, cfg, writers).collect())
