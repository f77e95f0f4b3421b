"""kafka://host:port[,host:port...]/topic: messages produced through librdkafka (the one
confluent-kafka ships), created in the writer thread (so after fork; librdkafka blocks every
signal in its own threads). A message leaves logpool's buffer, and counts as sent, only
when its delivery report says the cluster has it (acks=all by default); one that librdkafka
gave up on is dropped, counted in dropped_rejected, and logged once per kind.

The per-message work is C (csrc/kafka.c): the writer hands librdkafka up to a window of
messages with rd_kafka_produce_batch, serves delivery reports with rd_kafka_poll, and
releases finished messages from the head of the chain in order (reports of different
partitions may come back in any order). Python only configures, connects and reports.
"""
import json
import re
import time

from logpool.errors import ConfigError
from logpool.transports.address import AddressForm, check_host_name
from logpool.transports.base import SLICE_S, Outcome, Stopped, Transport
from logpool.transports.schema import Option, Values, properties

# Safe defaults for logs; every librdkafka property may be overridden by the "kafka" object.
DEFAULT_PROPERTIES = {
    "acks": "all",
    "enable.idempotence": True,  # retries never duplicate or reorder within a partition
    "compression.type": "zstd",
    "linger.ms": 5,
    # Bounded: a message librdkafka could not deliver in 5 minutes is reported failed,
    # dropped and counted, so a dead cluster cannot hold the buffer (and the worker's
    # memory) forever; 0 makes it wait without limit (logpool's buffer still bounds memory).
    "message.timeout.ms": 300000,
    "statistics.interval.ms": 5000,
}
# Managed by logpool: the URL gives them, or they would break its accounting.
RESERVED = ("bootstrap.servers", "metadata.broker.list", "on_delivery", "delivery.report.only.error",
            "error_cb", "stats_cb")
LIBRDKAFKA_MESSAGE_MAX_BYTES = 1_000_000  # librdkafka's default message.max.bytes
WINDOW = 1 << 16  # messages handed to librdkafka and not reported yet, at most


def _brokers_and_topic(where, scheme, url, allow_port_zero):
    """(bootstrap servers, topic) of kafka://host:port[,host:port...]/topic."""
    rest = url.split("://", 1)[1] if "://" in url else ""
    brokers, _, topic = rest.partition("/")
    if not brokers or not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", topic):
        raise ConfigError(f"{where}: expected kafka://host:port[,host:port...]/topic (a topic "
                          f"of letters, digits, '.', '_', '-'), got {url!r}")
    for broker in brokers.split(","):
        m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:/\[\]\s,]+):(\d+)", broker)
        if m is None or not 1 <= int(m.group(2) or m.group(4)) <= 65535:
            raise ConfigError(f"{where}: broker {broker!r} in {url!r} is not host:port")
        if m.group(3) is not None:
            check_host_name(where, m.group(3), url)
    return brokers, topic


BROKERS = AddressForm("kafka", "{s}://host:port[,host:port...]/topic", _brokers_and_topic)


def librdkafka_path():
    """The file of the librdkafka confluent-kafka loaded (its wheel bundles one): kafka.c
    resolves the same library, so there is one copy and one version in the process."""
    import confluent_kafka  # noqa: F401 — loads librdkafka
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
        for line in maps:
            path = line.split(None, 5)[-1].strip()
            if "librdkafka" in path.rsplit("/", 1)[-1]:
                return path
    raise ConfigError("confluent-kafka is imported but no librdkafka is mapped in this "
                      "process")


def property_text(value):
    """librdkafka takes every property as a string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class KafkaTransport(Transport):
    SCHEMES = ("kafka",)
    ADDRESS = {"kafka": BROKERS}
    OPTIONS = (
        Option("kafka", "object", {}, "librdkafka properties (strings, numbers, booleans) over "
               "logpool's defaults", properties(RESERVED, "set by logpool (the URL names the "
                                                "brokers)")),
        Option("kafka_key", "string or null", None, "every message's key; null lets "
               "librdkafka spread messages over partitions"),
    )
    FAILOVER = False  # one URL names every bootstrap broker
    STALLS = False  # waiting on a cluster is librdkafka's business, not a broken connection
    IDLE_TICK_MS = 500  # serve librdkafka's callbacks (statistics, errors) while idle

    RAW_FRAMING_ONLY = "a Kafka record holds exactly one message"

    @classmethod
    def check_sink(cls, where, sink, given, values, opts, framing):
        """librdkafka refuses a message (key included) above message.max.bytes: a bigger
        max_message_size would accept lines only to drop them at send time."""
        super().check_sink(where, sink, given, values, opts, framing)
        try:
            limit = int(values["kafka"].get("message.max.bytes", LIBRDKAFKA_MESSAGE_MAX_BYTES))
        except (TypeError, ValueError):
            return  # librdkafka names the bad value when the options are parsed
        key = values["kafka_key"]
        limit -= len(key.encode()) if key is not None else 0
        if opts["max_message_size"] <= limit:
            return
        if "max_message_size" in sink:
            raise ConfigError(f"{where}.max_message_size: {opts['max_message_size']} is larger "
                              f"than librdkafka's message.max.bytes {limit + len(key or '')}"
                              f"{' less the key' if key else ''}: raise kafka's "
                              f"message.max.bytes or lower max_message_size")
        opts["max_message_size"] = max(limit, 1)

    @classmethod
    def parse_options(cls, where, scheme, address, values):
        """The keys, and what the producer is made of: bootstrap, topic, key, properties
        (logpool's defaults under the sink's)."""
        bootstrap, topic = address
        properties = values["kafka"]
        try:
            import confluent_kafka
        except ImportError:
            raise ConfigError(f"{where}.url: Kafka sinks need confluent-kafka "
                              f"(pip install logpool[kafka])") from None
        try:  # librdkafka checks every property name and value here, not in the worker
            confluent_kafka.Producer({**DEFAULT_PROPERTIES, **properties,
                                      "bootstrap.servers": bootstrap}).flush(0)
        except (confluent_kafka.KafkaException, ValueError, TypeError) as exc:
            raise ConfigError(f"{where}.kafka: librdkafka refuses it: {exc}") from None
        return Values(values, bootstrap=bootstrap, topic=topic, key=values["kafka_key"],
                      properties={**DEFAULT_PROPERTIES, **properties,
                                  "bootstrap.servers": bootstrap})

    def __init__(self, sink, chain, faults=None):
        super().__init__(sink, chain, faults)
        self.options = sink.transport_options
        self.producer = chain.native("kafka")  # the C side of this transport
        self.replace_producer = False  # librdkafka hit a fatal error
        self.failures_seen = set()
        self.statistics = {}  # the latest of librdkafka's statistics (JSON), for metrics

    @property
    def inflight(self):
        return self.producer.inflight

    def connect(self, should_stop):
        if self.replace_producer:
            inflight = self.inflight
            self.producer.destroy()
            self.chain.count_resent(inflight)
            self.replace_producer = False
        if self.producer.handle is None:
            props = {k: property_text(v) for k, v in self.options.properties.items()}
            refused = self.producer.open(librdkafka_path(), props, self.options.topic,
                                         self.options.key, WINDOW)
            if refused is not None:
                raise ConnectionRefusedError(111, f"librdkafka refused the producer: {refused}")
        # The cluster's answer is awaited in slices, so that close() ends the wait too.
        deadline = time.monotonic() + self.sink.connect_timeout_ms / 1000
        while (refused := self.producer.metadata(
                max(1, min(int(SLICE_S * 1000), int((deadline - time.monotonic()) * 1000))))):
            if should_stop():
                raise Stopped()
            if time.monotonic() >= deadline:
                raise ConnectionRefusedError(111, f"no Kafka broker answered within "
                                             f"connect_timeout_ms "
                                             f"{self.sink.connect_timeout_ms}: {refused}")
        return Outcome.NOTHING

    def close(self):
        """A broken "connection" is librdkafka's to mend: keep the producer and its queue."""
        return Outcome.NOTHING

    def shutdown(self):
        """The writer stops: give up what librdkafka still holds (it stays in the chain and
        is counted as abandoned), without waiting."""
        self.producer.destroy()

    def fileno(self):
        return -1

    def wait_ready(self, timeout_s):
        """Delivery reports are what we wait for: librdkafka's poll, not a socket's."""
        self.producer.poll(int(timeout_s * 1000))
        return False

    def idle(self):
        if self.producer.handle is None:
            return Outcome.NOTHING
        self.producer.poll(0)
        return Outcome(reports=self._take_reports())

    def write(self):
        if self.faults is not None and self.inflight and self.faults.hit("kafka_fatal"):
            self.producer.inject_fatal()
        progress, delivered, fatal = self.producer.step()
        reports = self._take_reports()
        if fatal is not None:
            # What the cluster confirmed is released already (step does it first).
            self.replace_producer = True
            raise ConnectionResetError(104, f"librdkafka's producer failed for good ({fatal}); "
                                       f"a new one resends what it held")
        return Outcome(progress=progress, settled=delivered, reports=reports)

    def _take_reports(self):
        reports = []
        for kind, text in self.producer.failures():
            if kind not in self.failures_seen:  # logged once per kind
                self.failures_seen.add(kind)
                reports.append((f"kafka {kind}", f"librdkafka gave up on a message "
                                f"({text}); such messages are dropped"))
        statistics = self.producer.statistics()
        if statistics is not None:
            try:
                self.statistics = json.loads(statistics)
            except ValueError:
                pass
        return tuple(reports)
