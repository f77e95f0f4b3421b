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

from logpool.errors import ConfigError
from logpool.transports.base import Transport

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
WINDOW = 1 << 16  # messages handed to librdkafka and not reported yet, at most


def check_option(where, key, value):
    if key == "kafka":
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: must be an object of librdkafka properties, got "
                              f"{value!r}")
        for name, setting in value.items():
            if name in RESERVED:
                raise ConfigError(f"{where}.{name}: set by logpool (the URL names the "
                                  f"brokers)")
            if not isinstance(setting, (str, int, float, bool)):
                raise ConfigError(f"{where}.{name}: must be a string, number or boolean")
    elif key == "kafka_key":
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{where}: must be a string (every message's key) or null "
                              f"(no key: librdkafka spreads messages over partitions)")
    return value


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


class KafkaOptions:
    def __init__(self, bootstrap, topic, properties, key):
        self.bootstrap, self.topic, self.key = bootstrap, topic, key
        self.properties = {**DEFAULT_PROPERTIES, **properties,
                           "bootstrap.servers": bootstrap}


class KafkaTransport(Transport):
    SCHEMES = ("kafka",)
    ADDRESS = {"kafka": "kafka"}
    OPTIONS = {"kafka": {}, "kafka_key": None}
    FAILOVER = False  # one URL names every bootstrap broker
    STALLS = False  # waiting on a cluster is librdkafka's business, not a broken connection
    IDLE_TICK_MS = 500  # serve librdkafka's callbacks (statistics, errors) while idle

    @classmethod
    def check_option(cls, where, key, value):
        return check_option(where, key, value)

    RAW_FRAMING_ONLY = "a Kafka record holds exactly one message"

    @classmethod
    def parse_options(cls, where, scheme, address, options):
        bootstrap, topic = address
        options = {**cls.OPTIONS, **options}
        properties = dict(options["kafka"])
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
        return KafkaOptions(bootstrap, topic, properties, options["kafka_key"])

    def __init__(self, sink, chain, faults=None):
        super().__init__(sink, chain, faults)
        self.options = sink.transport_options
        self.producer = None  # a logpool__kafka_t, the C side of this transport
        self.replace_producer = False  # librdkafka hit a fatal error
        self.failures_seen = set()
        self.failure_report = None
        self.errbuf = chain.ffi.new("char[]", 512)
        self.delivered = chain.ffi.new("uint64_t *")
        self.statistics = {}  # the latest of librdkafka's statistics (JSON), for metrics

    @property
    def inflight(self):
        return 0 if self.producer is None else self.chain.lib.logpool__kafka_inflight(
            self.producer)

    def _new_producer(self):
        ffi, lib = self.chain.ffi, self.chain.lib
        props = list(self.options.properties.items())
        keep = [ffi.new("char[]", str(k).encode()) for k, _ in props]
        keep += [ffi.new("char[]", property_text(v).encode()) for _, v in props]
        names = ffi.new("const char *[]", keep[:len(props)])
        values = ffi.new("const char *[]", keep[len(props):])
        key = ffi.NULL if self.options.key is None else self.options.key.encode()
        producer = lib.logpool__kafka_new(
            self.chain.c, librdkafka_path().encode(), names, values, len(props),
            self.options.topic.encode(), key, 0 if key == ffi.NULL else len(key), WINDOW,
            self.errbuf, len(self.errbuf))
        if producer == ffi.NULL:
            raise ConnectionRefusedError(111, "librdkafka refused the producer: "
                                         + ffi.string(self.errbuf).decode(errors="replace"))
        return producer

    def _drop_producer(self):
        """Free the producer; what it still held stays in the chain (resent or abandoned)."""
        if self.producer is not None:
            self.chain.lib.logpool__sink_set_unacked(self.chain.c, 0)
            self.chain.lib.logpool__kafka_destroy(self.producer)
            self.producer = None

    def connect(self, should_stop):
        lib = self.chain.lib
        if self.replace_producer:
            inflight = self.inflight
            self._drop_producer()
            lib.logpool__sink_count(self.chain.c, lib.LOGPOOL__RESENT_MESSAGES, inflight)
            self.replace_producer = False
        if self.producer is None:
            self.producer = self._new_producer()
        if lib.logpool__kafka_metadata(self.producer, self.sink.connect_timeout_ms,
                                       self.errbuf, len(self.errbuf)) != 0:
            raise ConnectionRefusedError(111, "no Kafka broker answered: " + self.chain.ffi.string(
                self.errbuf).decode(errors="replace"))

    def close(self):
        """A broken "connection" is librdkafka's to mend: keep the producer and its queue."""

    def shutdown(self):
        """The writer stops: give up what librdkafka still holds (it stays in the chain and
        is counted as abandoned), without waiting."""
        self._drop_producer()

    def fileno(self):
        return -1

    def wait_ready(self, timeout_s):
        """Delivery reports are what we wait for: librdkafka's poll, not a socket's."""
        self.chain.lib.logpool__kafka_poll(self.producer, int(timeout_s * 1000))
        return False

    def idle(self):
        if self.producer is not None:
            self.chain.lib.logpool__kafka_poll(self.producer, 0)
            self._take_reports()

    def take_rejection(self):
        report, self.failure_report = self.failure_report, None
        return report

    def write(self):
        lib = self.chain.lib
        if self.faults is not None and self.inflight and self.faults.hit("kafka_fatal"):
            lib.logpool__kafka_inject_fatal(self.producer)
        progress = lib.logpool__kafka_write(self.producer, self.delivered, self.errbuf,
                                            len(self.errbuf))
        if progress < 0:
            self.replace_producer = True
            raise ConnectionResetError(104, "librdkafka's producer failed for good ("
                                       + self.chain.ffi.string(self.errbuf).decode(
                                           errors="replace")
                                       + "); a new one resends what it held")
        self.chain.completed += self.delivered[0]
        self._take_reports()
        return progress

    def _take_reports(self):
        ffi, lib = self.chain.ffi, self.chain.lib
        while (err := lib.logpool__kafka_take_failure(self.producer)) != 0:
            kind = ffi.string(lib.logpool__kafka_error_name(err)).decode()
            if kind not in self.failures_seen:  # logged once per kind
                self.failures_seen.add(kind)
                text = ffi.string(lib.logpool__kafka_error_text(err)).decode(errors="replace")
                self.failure_report = (f"kafka {kind}", f"librdkafka gave up on a message "
                                       f"({text}); such messages are dropped")
        statistics = lib.logpool__kafka_take_statistics(self.producer)
        if statistics != ffi.NULL:
            try:
                self.statistics = json.loads(ffi.string(statistics))
            except ValueError:
                pass
            finally:
                lib.logpool__kafka_free_statistics(statistics)
