"""What the backend format tests share (test_backends.py, test_<format>.py)."""
import json

# Quick retries and flushes: the scripted receivers answer at once.
FAST = {"retry_interval_ms": 10, "max_retry_interval_ms": 2000, "periodic_flush_ms": 10}


def log_all(pool, lines):
    for line in lines:
        pool.log(0, line)
    pool.flush(timeout=60)


def numbered(n, **fields):
    """JSON messages {"seq": i, ...}."""
    return [json.dumps({"seq": i, **fields}).encode() for i in range(n)]
