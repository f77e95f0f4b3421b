"""The retry policy of a sink's writer (redis-py's backoff objects): a small object the loop
asks for the next delay; the loop records when the next attempt is allowed instead of
sleeping blindly."""
import random


class Backoff:
    """Exponential backoff with "equal jitter": the delay for the n-th consecutive failure
    is uniform in [d/2, d] where d = min(cap, base * 2**(n-1)), so attempts are never closer
    than half the configured interval and never synchronised across workers."""

    def __init__(self, base_s, cap_s, rand=random.random):
        self.base_s = base_s
        self.cap_s = cap_s
        self.rand = rand

    def compute(self, failures):
        if failures <= 0:
            return 0.0
        d = min(self.cap_s, self.base_s * (2 ** min(failures - 1, 30)))
        return d / 2 + self.rand() * d / 2
