"""logpool.Pool: the Python API over the C ABI (the same calls nginx makes)."""
import json
import math
import time

from logpool import _binding, config as config_mod, errors, stats as stats_mod
from logpool.agent import table as agent_table
# A pool dropped without close() still gets this long to deliver what it accepted.
GC_CLOSE_TIMEOUT_MS = 1000
# What a `with` block gives close() by default (Pool(..., close_timeout=...) overrides it):
# a sink that is down must not hold the program at the end of the block.
DEFAULT_CLOSE_TIMEOUT_S = 5.0
# Waits in C are cut into slices this long so that Python runs its signal handlers
# (Ctrl-C) between them.
WAIT_SLICE_MS = 100
INT32_MAX = 2**31 - 1


def _release(ptr):
    lib = _binding.lib()
    lib.logpool_close(ptr, GC_CLOSE_TIMEOUT_MS)
    lib.logpool_free(ptr)  # also drops what logpool._embedded keeps for the pool


class Pool:
    """A pool of sinks. `config` is a dict or JSON text (see README for the keys).

    Methods may be called from any thread; log() never blocks."""

    def __init__(self, config, close_timeout=DEFAULT_CLOSE_TIMEOUT_S):
        _ms(close_timeout)  # a bad value fails now, not at the end of a with block
        self.close_timeout = close_timeout
        text = config if isinstance(config, (str, bytes)) else json.dumps(config)
        if isinstance(text, str):
            text = text.encode()
        # clear errors before crossing into C; agent mode: the agent's sinks
        self.config = agent_table.producer_config(text) or config_mod.parse(text)
        lib = _binding.lib()
        ptr = lib.logpool_new(text)
        if ptr == _binding.ffi.NULL:
            raise errors.from_code(
                lib.logpool_last_error_code() or errors.ERUNTIME,
                _binding.ffi.string(lib.logpool_last_error()).decode("utf-8", "replace"))
        self._lib = lib
        self._ptr = _binding.ffi.gc(ptr, _release)
        self._address = int(_binding.ffi.cast("uintptr_t", ptr))
        self._abandoned = None
        self._stats = _binding.ffi.new("logpool_stats_t *")

    # -- the hot path --

    def sink_index(self, sink):
        return self.config.sink_index(sink)

    def log(self, sink, data):
        """Queue one message; returns its length. Raises BufferFull, MessageTooBig,
        PoolClosed, NoSuchSink. str is encoded as UTF-8."""
        if isinstance(data, str):
            data = data.encode()
        if not isinstance(sink, int) or isinstance(sink, bool):
            sink = self.config.sink_index(sink)
        rc = self._lib.log_cdata(self._ptr, sink, data, len(data))
        if rc < 0:
            _binding.check(rc, f"log to sink {sink}")
        return rc

    # -- lifecycle --

    def flush(self, timeout=None):
        """Wait until everything accepted so far is written, at most `timeout` seconds (None:
        no limit); raises Timeout. Ctrl-C interrupts the wait."""
        _binding.check(self._wait_delivered(_ms(timeout)), "flush")

    def close(self, timeout=None):
        """Stop accepting, deliver for up to `timeout` seconds (None: no limit), stop the
        writers. Returns the number of accepted messages abandoned. Idempotent. Ctrl-C
        interrupts the wait (the pool then no longer accepts; close it again)."""
        lib, ptr = self._lib, self._ptr
        # (agent mode: the ring is the agent's to deliver; closing never waits for it)
        agent_mode = isinstance(self.config, agent_table.ProducerConfig)
        if lib.logpool_shutdown(ptr) == 0 and not agent_mode:
            self._wait_delivered(_ms(timeout))
        return _binding.check(lib.logpool_close(ptr, 0), "close")

    def _wait_delivered(self, timeout_ms):
        """logpool_flush in slices (signals run between them); its last code."""
        deadline = None if timeout_ms < 0 else time.monotonic() + timeout_ms / 1000
        while True:
            left = WAIT_SLICE_MS if deadline is None else int(
                min(WAIT_SLICE_MS, max(0.0, deadline - time.monotonic()) * 1000))
            rc = self._lib.logpool_flush(self._ptr, left)
            if rc != errors.ETIMEDOUT or (deadline is not None and time.monotonic() >= deadline):
                return rc

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close(self.close_timeout)

    # -- observability --

    @property
    def sink_count(self):
        return self._lib.logpool_sink_count(self._ptr)

    def metrics(self):
        """Prometheus text exposition of this pool (str)."""
        size = 16384
        while True:
            buf = _binding.ffi.new("char[]", size)
            n = _binding.check(self._lib.logpool_metrics(self._ptr, buf, size), "metrics")
            if n < size:
                return _binding.ffi.string(buf, n).decode()
            size = n + 1

    def stats(self, sink=None):
        """Counters of one sink (index or name) as a dict, or a list for all sinks."""
        if sink is None:
            return [self.stats(i) for i in range(len(self.config.sinks))]
        index = self.config.sink_index(sink)
        _binding.check(self._lib.logpool_stats(self._ptr, index, self._stats), "stats")
        out = stats_mod.as_dict(_binding.ffi, self._stats)
        out["name"] = self.config.sinks[index].name
        out["url"] = self.config.sinks[index].url
        from logpool import _embedded
        described = _embedded.started_pool(self._address)
        out["last_error"] = described[1][index].reporter.last_error if described else ""
        return out


def _ms(timeout):
    """Seconds (None: no limit) as the C API's milliseconds. NaN and negative values are
    caller bugs; values beyond the C range are clamped to it (about 24.8 days)."""
    if timeout is None:
        return -1
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise errors.InvalidArgument(f"timeout must be a number of seconds or None, got "
                                     f"{timeout!r}")
    if math.isnan(timeout) or timeout < 0:
        raise errors.InvalidArgument(f"timeout must be >= 0 seconds, got {timeout}")
    if timeout * 1000 >= INT32_MAX:
        return INT32_MAX
    return int(timeout * 1000)
