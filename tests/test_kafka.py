"""Kafka sinks through confluent-kafka (librdkafka), tested against librdkafka's built-in mock
cluster only (tests/kafka_mock.py, a process of its own): no Kafka broker runs on these
machines. A confluent-kafka consumer reads every message back."""
import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import logpool
from conftest import wait_for

import confluent_kafka  # the test extra installs it: a missing one fails, never skips

MOCK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kafka_mock.py")


class MockCluster:
    def __init__(self, brokers=3):
        self.proc = subprocess.Popen([sys.executable, MOCK, str(brokers)],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        line = self.proc.stdout.readline().split()
        assert line and line[0] == "bootstrap", line
        self.bootstrap = line[1]

    def url(self, topic):
        return f"kafka://{self.bootstrap}/{topic}"

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=15)

    def read(self, topic, n, timeout=60, distinct=False):
        """(partition, value) of n messages of topic (n different values if distinct), in
        each partition's order."""
        return TopicReader(self.bootstrap, topic).collect(n, timeout, distinct)

    def reader(self, topic):
        """Creates topic and reads it from the start in a thread of its own, from now on.
        The mock cluster keeps only about 240,000 messages per partition and trims the
        oldest: a test that produces under load (as fast as the machine goes) bounds what it
        produces by a count (conftest.Load), spreads it over partitions and reads while it
        produces. The reader is assigned
        the topic's partitions directly (no consumer-group join to wait for)."""
        # A producer's metadata request creates the topic (the mock's default partitions).
        producer = confluent_kafka.Producer({"bootstrap.servers": self.bootstrap,
                                             "log_level": 0})
        partitions = len(producer.list_topics(topic, timeout=30).topics[topic].partitions)
        assert partitions > 1
        return TopicReader(self.bootstrap, topic, partitions)


class TopicReader(threading.Thread):
    def __init__(self, bootstrap, topic, partitions=None):
        super().__init__(daemon=True)
        self.consumer = confluent_kafka.Consumer({
            "bootstrap.servers": bootstrap, "group.id": f"test-{time.monotonic()}",
            "auto.offset.reset": "earliest", "enable.auto.commit": False, "log_level": 0})
        if partitions is None:
            self.consumer.subscribe([topic])
        else:
            self.consumer.assign([confluent_kafka.TopicPartition(
                topic, p, confluent_kafka.OFFSET_BEGINNING) for p in range(partitions)])
        self.got = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.start()

    def run(self):
        try:
            while not self.stopping.is_set():
                batch = [(m.partition(), m.value())
                         for m in self.consumer.consume(1000, timeout=0.2) if m.error() is None]
                with self.lock:
                    self.got += batch
        finally:
            self.consumer.close()

    def count(self, distinct):
        with self.lock:
            return len(set(self.got)) if distinct else len(self.got)

    def collect(self, n, timeout=60, distinct=False):
        """What was read once n messages are in (or the timeout passed), after looking a
        little longer: anything beyond n would be a duplicate."""
        deadline = time.monotonic() + timeout
        while self.count(distinct) < n and time.monotonic() < deadline:
            self.stopping.wait(0.1)
        settle = len(self.got) + 1
        while self.count(False) != settle:  # one more empty second of reading
            settle = self.count(False)
            self.stopping.wait(1)
        self.stopping.set()
        self.join(timeout=15)
        return list(self.got)


@pytest.fixture
def cluster():
    made = []

    def make(brokers=3):
        c = MockCluster(brokers)
        made.append(c)
        return c

    yield make
    for c in made:
        c.kill()


def log_numbered_lines_and_flush(pool, n):
    """Log "<i> request line" for i < n, flush; every one must be reported delivered."""
    for i in range(n):
        pool.log(0, b"%d request line" % i)
    pool.flush(timeout=60)
    st = pool.stats(0)
    assert st["sent_messages"] == n and st["dropped_rejected"] == 0
    return st


@pytest.mark.parametrize("key", ["all-in-one", None])
def test_every_message_arrives_once_in_order_per_partition(cluster, pools, key):
    c = cluster()
    # Without a key librdkafka's sticky partitioner keeps a partition for
    # sticky.partitioning.linger.ms (10 ms): 0 spreads every batch, whatever the speed.
    pool = pools({"sinks": [{"url": c.url("nginx"), "kafka_key": key,
                             "kafka": {"compression.type": "gzip",
                                       "sticky.partitioning.linger.ms": 0}}]})
    n = 20_000
    st = log_numbered_lines_and_flush(pool, n)
    assert st["unacked_messages"] == 0 and st["buffered_messages"] == 0
    got = c.read("nginx", n)
    seqs = [int(v.split()[0]) for _, v in got]
    assert sorted(seqs) == list(range(n))  # exactly once
    by_partition = collections.defaultdict(list)
    for partition, v in got:
        by_partition[partition].append(int(v.split()[0]))
    assert all(s == sorted(s) for s in by_partition.values())  # in order per partition
    if key is not None:
        assert len(by_partition) == 1  # one key, one partition: total order
    else:
        assert len(by_partition) > 1


def test_a_cluster_that_goes_away_fails_counted_and_a_new_one_delivers(cluster, pools, capfd):
    first = cluster()
    pool = pools({"sinks": [{"url": first.url("logs"),
                             "kafka": {"message.timeout.ms": 2000}}]})
    for i in range(1000):
        pool.log(0, b"before %d" % i)
    pool.flush(timeout=30)
    first.kill()  # the whole cluster, mid-stream
    for i in range(500):
        pool.log(0, b"during %d" % i)
    wait_for(lambda: pool.stats(0)["dropped_rejected"] == 500, timeout=60,
             what="librdkafka giving up on the messages of the dead cluster")
    pool.flush(timeout=10)  # nothing left: every message has its fate
    st = pool.stats(0)
    assert st["sent_messages"] == 1000 and st["writer_errors"] == 0
    # The writer logs right after it released them: wait for the line, not for a race.
    err = []
    wait_for(lambda: err.append(capfd.readouterr().err) or
             "librdkafka gave up on a message" in "".join(err), what="the failure logged")
    pool.flush(timeout=10)
    err.append(capfd.readouterr().err)
    assert "".join(err).count("librdkafka gave up on a message") == 1  # once per kind
    second = cluster()
    other = pools({"sinks": [{"url": second.url("logs")}]})
    for i in range(300):
        other.log(0, b"after %d" % i)
    other.flush(timeout=30)
    got = [v for _, v in second.read("logs", 300)]
    assert sorted(got) == sorted(b"after %d" % i for i in range(300))  # nothing twice


def test_a_producer_that_fails_for_good_is_replaced_and_nothing_is_lost(cluster, pools,
                                                                       monkeypatch, capfd):
    # librdkafka's own test entry point raises the fatal error an idempotent producer gets
    # when its sequence breaks: from then on it refuses everything. The writer must replace
    # it and resend what the old one held (at-least-once: a copy may arrive twice, and each
    # such message is counted as resent).
    monkeypatch.setenv("LOGPOOL_TEST_FAULTS", json.dumps({"kafka_fatal": 1, "max_kafka_fatal": 2}))
    c = cluster()
    pool = pools({"sinks": [{"url": c.url("fatal"), "kafka_key": "k"}],
                  "retry_interval_ms": 10, "max_retry_interval_ms": 100})
    n = 20_000
    st = log_numbered_lines_and_flush(pool, n)
    assert st["reconnects"] >= 2, st  # each fatal error: a new producer
    assert st["resent_messages"] > 0, st  # it held messages when it failed
    assert "failed for good" in capfd.readouterr().err
    seqs = [int(v.split()[0]) for _, v in c.read("fatal", n, distinct=True)]
    assert set(seqs) == set(range(n))
    assert len(seqs) - n <= st["resent_messages"]
    first = {}
    for pos, seq in enumerate(seqs):
        first.setdefault(seq, pos)
    assert sorted(first, key=first.get) == list(range(n))  # first copies in order


def test_librdkafka_statistics_reach_prometheus(cluster, pools):
    c = cluster()
    pool = pools({"sinks": [{"url": c.url("stats"), "name": "k",
                             "kafka": {"statistics.interval.ms": 100}}]})
    pool.log(0, b"x")
    pool.flush(timeout=30)
    wait_for(lambda: 'logpool_kafka_broker_up{broker=' in pool.metrics(), what="statistics")
    metrics = pool.metrics()
    assert 'logpool_kafka_queue_messages{sink="k"}' in metrics
    assert "logpool_kafka_broker_rtt_seconds" in metrics


@pytest.mark.parametrize("sink, text", [
    ({"url": "kafka://h:1/t", "kafka": {"no.such.property": 1}}, "librdkafka refuses it"),
    ({"url": "kafka://h:1/t", "kafka": {"bootstrap.servers": "x:1"}}, "set by logpool"),
    ({"url": "kafka://h:1/t", "kafka_key": 5}, "kafka_key: must be a string"),
    ({"url": "kafka://h:1"}, "expected kafka://host:port"),
    ({"url": "kafka://h:1,h2/t"}, "broker 'h2'"),
    ({"url": "kafka://h:1/t", "framing": "newline"}, "leave framing raw"),
    ({"url": "tcp://h:1", "kafka_key": "k"}, "only kafka:// sinks take"),
])
def test_kafka_config_errors_name_the_key(sink, text):
    with pytest.raises(logpool.ConfigError) as exc:
        logpool.config.parse({"sinks": [sink]})
    assert text in str(exc.value)


def test_nginx_ships_every_request_to_kafka_once_across_a_reload(cluster, tmp_path):
    from test_nginx import assert_exactly_once, logpool_conf, reload_under_load
    from logpool.tools.nginx import Nginx
    c = cluster()
    ng = Nginx(tmp_path / "nginx", *logpool_conf(c.url("access"),
                                                 'kafka = { ["sticky.partitioning.linger.ms"] = 0 }'),
               workers=2)
    reader = c.reader("access")  # reads while nginx produces: see MockCluster.reader
    ng.start()
    try:
        ids = reload_under_load(ng)
    finally:
        ng.kill()
    got = [v.decode().rstrip("\n") for _, v in reader.collect(len(ids))]
    assert_exactly_once(ids, got)


def test_max_message_size_is_checked_against_librdkafkas_message_max_bytes():
    """librdkafka refuses a record above message.max.bytes (1,000,000 by default) at send
    time: accepting a bigger line would only drop it later."""
    given = {"url": "kafka://h:1/t", "max_message_size": 1_048_576}
    with pytest.raises(logpool.ConfigError) as exc:
        logpool.config.parse({"sinks": [given]})
    assert "message.max.bytes" in str(exc.value) and "sinks[0].max_message_size" in str(exc.value)
    # The default is capped to what librdkafka takes (less the key), not refused.
    sink, = logpool.config.parse({"sinks": [{"url": "kafka://h:1/t", "kafka_key": "abc"}]}).sinks
    assert sink.max_message_size == 1_000_000 - 3
    sink, = logpool.config.parse({"sinks": [{"url": "kafka://h:1/t",
                                             "kafka": {"message.max.bytes": 2_000_000},
                                             "max_message_size": 1_500_000}]}).sinks
    assert sink.max_message_size == 1_500_000
    # The pool-wide kafka object counts too.
    with pytest.raises(logpool.ConfigError):
        logpool.config.parse({"sinks": [{"url": "kafka://h:1/t", "max_message_size": 600_000}],
                              "kafka": {"message.max.bytes": 500_000}})
