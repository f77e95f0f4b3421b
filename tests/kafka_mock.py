"""Hosts librdkafka's built-in mock cluster (no Kafka broker runs on these machines) in a
process of its own, so that tests can kill the whole cluster. Prints "bootstrap HOST:PORT,..."
once it is up, then serves until killed.

usage: python tests/kafka_mock.py [BROKERS]"""
import sys
import time

import confluent_kafka

brokers = sys.argv[1] if len(sys.argv) > 1 else "3"
# A client with test.mock.num.brokers starts the cluster inside this process; the brokers
# listen on loopback ports other processes connect to.
holder = confluent_kafka.Producer({"test.mock.num.brokers": int(brokers),
                                   "bootstrap.servers": "", "log_level": 0})
metadata = holder.list_topics(timeout=10)
print("bootstrap " + ",".join(f"{b.host}:{b.port}" for b in metadata.brokers.values()),
      flush=True)
while True:
    time.sleep(3600)
