"""kafka://host:port[,host:port...]/topic: messages produced through confluent-kafka
(librdkafka), created in the writer thread (so after fork, and with every signal blocked:
librdkafka's own threads inherit that mask). A message leaves logpool's buffer, and counts
as sent, only when its delivery report says the cluster has it (acks=all by default); one
that librdkafka gave up on is dropped, counted in dropped_rejected, and logged once per kind.

librdkafka keeps its own queue and retries; the writer hands it messages up to a window,
polls for delivery reports, and releases finished messages from the head of the chain in
order (reports of different partitions may come back in any order).
"""
import collections
import functools
import itertools
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
WINDOW = 50_000  # messages handed to librdkafka and not reported yet, at most
PRODUCE_BATCH = 4096  # messages per write() call
INFLIGHT, DELIVERED, FAILED = 0, 1, 2


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
        self.key = None if self.options.key is None else self.options.key.encode()
        self.producer = None
        self.base_seq = 0  # seq of the first message in flight (the head of the chain)
        self.next_seq = 0
        self.states = collections.deque()  # INFLIGHT / DELIVERED / FAILED, from base_seq
        self.iov = chain.ffi.new("logpool__iov_t[]", PRODUCE_BATCH)
        self.failures_seen = set()
        self.failure_report = None
        self.statistics = {}  # the latest of librdkafka's statistics (JSON), for metrics

    @property
    def inflight(self):
        return self.next_seq - self.base_seq

    def connect(self, should_stop):
        import confluent_kafka
        if self.producer is None:
            self.producer = confluent_kafka.Producer({**self.options.properties,
                                                      "stats_cb": self._on_statistics,
                                                      "error_cb": self._on_error})
        # Connected means the cluster answered a metadata request.
        try:
            self.producer.list_topics(self.options.topic,
                                      timeout=self.sink.connect_timeout_ms / 1000)
        except confluent_kafka.KafkaException as exc:
            raise ConnectionRefusedError(111, f"no Kafka broker answered: {exc}") from None

    def close(self):
        """A broken "connection" is librdkafka's to mend: keep the producer and its queue."""

    def shutdown(self):
        """The writer stops: give up what librdkafka still holds (it stays in the chain and
        is counted as abandoned), without waiting."""
        if self.producer is not None:
            try:
                self.producer.purge(in_queue=True, in_flight=False)
                self.producer.poll(0)
            except Exception:  # noqa: BLE001 — stopping must not fail
                pass
            self.producer = None

    def fileno(self):
        return -1

    def wait_ready(self, timeout_s):
        """Delivery reports are what we wait for: librdkafka's poll, not a socket's."""
        self.producer.poll(timeout_s)
        return False

    def idle(self):
        if self.producer is not None:
            self.producer.poll(0)

    def take_rejection(self):
        report, self.failure_report = self.failure_report, None
        return report

    def write(self):
        self.producer.poll(0)  # delivery reports
        progress = self._release()
        if self.inflight < WINDOW:
            progress += self._produce()
        return progress

    def _produce(self):
        lib, ffi = self.chain.lib, self.chain.ffi
        n = lib.logpool__sink_message_iov(self.chain.c, self.iov, PRODUCE_BATCH, 1 << 40,
                                          self.inflight)
        produced = 0
        topic, key, iov, unpack = self.options.topic, self.key, self.iov, ffi.unpack
        produce, report, seq = self.producer.produce, self._on_delivery, self.next_seq
        for i in range(n):
            entry = iov[i]
            try:
                produce(topic, unpack(entry.base, entry.len), key,
                        on_delivery=functools.partial(report, seq + i))
            except BufferError:  # librdkafka's queue is full: let it drain
                break
            produced += 1
        self.states.extend(itertools.repeat(INFLIGHT, produced))
        self.next_seq += produced
        if produced:
            lib.logpool__sink_count(self.chain.c, lib.LOGPOOL__WRITES, 1)
            lib.logpool__sink_set_unacked(self.chain.c, self.inflight)
        return produced

    def _on_delivery(self, seq, err, _message=None):
        self.states[seq - self.base_seq] = DELIVERED if err is None else FAILED
        if err is not None:
            kind = err.name() if hasattr(err, "name") else str(err)
            if kind not in self.failures_seen:  # logged once per kind
                self.failures_seen.add(kind)
                self.failure_report = (f"kafka {kind}", f"librdkafka gave up on a message "
                                       f"({err}); such messages are dropped")

    def _release(self):
        """Release the finished messages at the head of the chain, in order, in runs."""
        lib, c = self.chain.lib, self.chain.c
        released = 0
        states = self.states
        while states and states[0] != INFLIGHT:
            fate = states[0]
            run = 0
            while states and states[0] == fate:
                states.popleft()
                run += 1
            self.base_seq += run
            lib.logpool__sink_set_unacked(c, self.inflight)
            lib.logpool__sink_consume_messages(
                c, run, lib.LOGPOOL__DONE_SENT if fate == DELIVERED else lib.LOGPOOL__DONE_REJECTED)
            if fate == DELIVERED:
                self.chain.completed += run
            released += run
        return released

    def _on_statistics(self, text):
        try:
            self.statistics = json.loads(text)
        except ValueError:
            pass

    def _on_error(self, err):
        pass  # connection trouble: librdkafka retries; delivery reports say what failed
