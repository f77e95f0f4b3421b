"""logpool.Pool: the Python API over the C ABI (the same calls nginx makes)."""
import json
import sys

from logpool import _binding, config as config_mod, errors

STATS_FIELDS = (
    "accepted_messages", "accepted_bytes", "sent_messages", "sent_bytes", "dropped_full",
    "dropped_too_big", "dropped_closed", "abandoned_messages", "connects", "connect_failures",
    "write_errors", "reconnects", "buffered_bytes", "connected", "buffered_messages", "writes",
    "resent_bytes", "writer_errors", "tls_handshake_failures", "tls_resumed",
    "dropped_unsendable",
)
# A pool dropped without close() still gets this long to deliver what it accepted.
GC_CLOSE_TIMEOUT_MS = 1000


def _release(ptr):
    lib = _binding.lib()
    lib.logpool_close(ptr, GC_CLOSE_TIMEOUT_MS)
    # No import here: this may run while the interpreter shuts down.
    embedded = sys.modules.get("logpool._embedded")
    if embedded is not None:
        embedded.forget(int(_binding.ffi.cast("uintptr_t", ptr)))
    lib.logpool_free(ptr)


class Pool:
    """A pool of sinks. `config` is a dict or JSON text (see README for the keys).

    Methods may be called from any thread; log() never blocks."""

    def __init__(self, config):
        text = config if isinstance(config, (str, bytes)) else json.dumps(config)
        if isinstance(text, str):
            text = text.encode()
        self.config = config_mod.parse(text)  # clear errors before crossing into C
        lib = _binding.lib()
        ptr = lib.logpool_new(text)
        if ptr == _binding.ffi.NULL:
            raise _binding.error_from_last(
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
        """Wait until everything accepted so far is written; raises Timeout."""
        _binding.check(self._lib.logpool_flush(self._ptr, _ms(timeout)), "flush")

    def close(self, timeout=None):
        """Stop accepting, deliver for up to `timeout` seconds (None: no limit), stop the
        writers. Returns the number of accepted messages abandoned. Idempotent."""
        return _binding.check(self._lib.logpool_close(self._ptr, _ms(timeout)), "close")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

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
        out = {f: getattr(self._stats, f) for f in STATS_FIELDS}
        out["name"] = self.config.sinks[index].name
        out["url"] = self.config.sinks[index].url
        from logpool import _embedded
        described = _embedded.describe(self._address)
        out["last_error"] = described[1][index].reporter.last_error if described else ""
        return out


def _ms(timeout):
    if timeout is None:
        return -1
    if timeout < 0:
        raise errors.InvalidArgument(f"timeout must be >= 0 seconds, got {timeout}")
    return min(int(timeout * 1000), 2**31 - 1)
