"""The test seam at the socket layer (never in log_cdata): faults injected into the writer
and its transports when, and only when, LOGPOOL_TEST_FAULTS names them."""
import json
import os
import random


class FaultInjector:
    """Test seam at the socket layer (never in log_cdata). Off unless the environment of the
    process names faults in LOGPOOL_TEST_FAULTS (JSON: probability per fault, plus "seed");
    no pool config key can switch it on, and nginx clears the environment of its workers.

    Faults: connect_fail, connect_timeout, write_error (a random partial write, then EPIPE
    or ECONNRESET), eagain, short_write, slow_write (a few ms before the send), exception
    (an unexpected error inside the writer, docs/architecture.md trap 8), writer_crash (an
    error that escapes the writer's loop: what a bug in the loop itself would do),
    resolve_delay (the name resolver answers only after "resolve_delay_s" seconds: a slow
    DNS server) and kafka_fatal (librdkafka's producer fails for good, as a broken
    idempotence sequence would make it).
    "max_<fault>" caps how often a fault happens."""

    KINDS = ("connect_fail", "connect_timeout", "write_error", "eagain", "short_write",
             "slow_write", "exception", "writer_crash", "resolve_delay", "kafka_fatal")
    SETTINGS = ("seed", "resolve_delay_s")

    def __init__(self, spec, stream_id=0):
        unknown = (set(spec) - set(self.KINDS) - set(self.SETTINGS)
                   - {f"max_{k}" for k in self.KINDS})
        if unknown:
            raise ValueError(f"LOGPOOL_TEST_FAULTS: unknown faults {sorted(unknown)}")
        self.prob = {k: float(spec.get(k, 0)) for k in self.KINDS}
        self.limit = {k: spec.get(f"max_{k}") for k in self.KINDS}
        self.resolve_delay_s = float(spec.get("resolve_delay_s", 5))
        seed = f"{spec.get('seed', 0)}-{stream_id}"
        # One stream of decisions per kind: the n-th connect attempt (or write) of a run
        # decides the same way whatever else the writer did in between, so whether a fault
        # happens does not depend on how the machine's speed batched the writes.
        self.decisions = {k: random.Random(f"{seed}-{k}") for k in self.KINDS}
        self.rng = random.Random(seed)  # sizes, delays, which error: the fault's details
        self.counts = dict.fromkeys(self.KINDS, 0)

    @classmethod
    def from_environment(cls, stream_id):
        text = os.environ.get("LOGPOOL_TEST_FAULTS")
        if not text:
            return None
        return cls(json.loads(text), stream_id)

    def hit(self, kind, record=True):
        """Decide whether `kind` happens now; counted at once unless record=False (the
        caller records it with record() once the fault really took effect)."""
        limit = self.limit[kind]
        if limit is not None and self.counts[kind] >= limit:
            return False
        if self.prob[kind] and self.decisions[kind].random() < self.prob[kind]:
            if record:
                self.record(kind)
            return True
        return False

    def record(self, kind):
        self.counts[kind] += 1


class InjectedCrash(BaseException):
    """FaultInjector's writer_crash: escapes every `except Exception` of the loop."""
