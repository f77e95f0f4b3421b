"""200 B messages into librdkafka's mock cluster (3 brokers, in a helper process): logpool
from luajit against confluent-kafka's own produce loop in Python (the ceiling a user would
write by hand), same cluster, same run."""
import os
import subprocess
import time

from bench.common import PY, ROOT, library_args, lua_script, luajit

NAME = "kafka"
KEYS = ("kafka",)


def run(ctx):
    return dict(kafka=measure(ctx))


def measure(ctx):
    import confluent_kafka
    mock = subprocess.Popen([PY, os.path.join(ROOT, "tests", "kafka_mock.py")],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    bootstrap = mock.stdout.readline().split()[1]
    seconds, size, rows = (1.5 if ctx.quick else 3.0), 200, []
    try:
        f = luajit(lua_script("throughput.lua"), *library_args(),
                   f"kafka://{bootstrap}/bench-logpool", str(size), str(seconds),
                   "120000").split()
        accepted, elapsed, abandoned = int(f[2]), float(f[4]), int(f[5])
        assert abandoned == 0, f"logpool closed with {abandoned} messages not delivered"
        rows.append(dict(case="logpool", messages=accepted // size, seconds=elapsed,
                         messages_s=accepted / size / elapsed, mb_s=accepted / elapsed / 1e6))
        producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "acks": "all",
                                             "enable.idempotence": True, "linger.ms": 5,
                                             "compression.type": "zstd", "log_level": 0})
        value, sent = b"x" * (size - 1) + b"\n", 0
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            for _ in range(1000):
                try:
                    producer.produce("bench-python", value)
                    sent += 1
                except BufferError:
                    producer.poll(0.001)
            producer.poll(0)
        producer.flush(120)
        elapsed = time.monotonic() - start
        rows.append(dict(case="python", messages=sent, seconds=elapsed,
                         messages_s=sent / elapsed, mb_s=sent * size / elapsed / 1e6))
    finally:
        mock.kill()
        mock.wait()
    return rows


def rows(r):
    rows = []
    if r.get("kafka"):
        lp, py = (next(x for x in r["kafka"] if x["case"] == c) for c in ("logpool", "python"))
        rows.append(("kafka mock cluster 200 B: messages/s (MB/s)",
                     f"{lp['messages_s']:.0f} ({lp['mb_s']:.0f})",
                     f"confluent-kafka loop {py['messages_s']:.0f} ({py['mb_s']:.0f})",
                     f"{lp['messages_s'] / py['messages_s']:.2f}", ""))
    return rows
