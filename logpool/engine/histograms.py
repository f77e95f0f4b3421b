"""The writer's latency and size histograms: plain buckets written by one writer thread and
read by scrapes (logpool.metrics renders them; prometheus_client is imported only there, so
a worker that is never scraped does not load it)."""
import bisect
import threading

SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)
BYTES_BUCKETS = (256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)

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
