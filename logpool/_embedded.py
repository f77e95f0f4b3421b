"""The Python side of liblogpool: runs inside the embedded interpreter (or the host's, when
the host is Python). install() is called once by the library's cffi init code with the
library's own ffi/lib (API mode), and registers the functions C calls into."""
import atexit
import threading

from logpool import config as config_mod
from logpool.errors import ConfigError
from logpool.engine.writer import SinkWriter

# address of a logpool_t -> (PoolConfig, [SinkWriter]); read by logpool.Pool for stats extras
POOLS = {}
_lock = threading.Lock()
_lib = None


def install(ffi, lib):
    global _lib
    _lib = lib

    def fail(code, message):
        # A C string ends at the first NUL: escape control characters (a config key may
        # hold any) so the message always reaches the caller whole.
        message = "".join(c if c >= " " or c == "\t" else repr(c)[1:-1] for c in message)
        lib.logpool__set_error(code, message.encode("utf-8", "replace")[:500])
        return ffi.NULL

    @ffi.def_extern(name="logpool__py_start")
    def py_start(config_json):
        try:
            cfg = config_mod.parse(ffi.string(config_json).decode("utf-8", "replace"))
        except ConfigError as exc:
            return fail(lib.LOGPOOL_ECONFIG, f"invalid configuration: {exc}")
        except Exception as exc:  # noqa: BLE001 — never let a traceback reach the host
            return fail(lib.LOGPOOL_ECONFIG, f"invalid configuration: {type(exc).__name__}: {exc}")
        try:
            return _start_pool(ffi, lib, cfg)
        except Exception as exc:  # noqa: BLE001
            return fail(lib.LOGPOOL_ERUNTIME,
                        f"embedded Python runtime unavailable: cannot start writer threads: "
                        f"{type(exc).__name__}: {exc}")

    @ffi.def_extern(name="logpool__py_metrics", error=-1)
    def py_metrics(pool, buf, length):
        from logpool import metrics
        described = started_pool(int(ffi.cast("uintptr_t", pool)))
        if described is None:
            return -1
        cfg, writers = described
        text = metrics.render(ffi, lib, ffi.cast("logpool_t *", pool), cfg, writers)
        if length > 0:
            n = min(len(text), length - 1)
            ffi.memmove(buf, text, n)
            buf[n] = b"\0"
        return len(text)

    @ffi.def_extern(name="logpool__py_forget")
    def py_forget(pool):
        # logpool_free from any host (Lua's __gc, C, Pool's finalizer): the pool's writers
        # have exited; drop them, their histograms and TLS contexts with the pool.
        forget(int(ffi.cast("uintptr_t", pool)))

    # A Python host finalizes the interpreter at exit and its daemon threads stop then:
    # close pools first. (A non-Python host never runs this; the C atexit fallback does.)
    atexit.register(lib.logpool__close_all, -1)


def _start_pool(ffi, lib, cfg):
    pool = lib.logpool__pool_alloc(len(cfg.sinks), cfg.exit_flush_timeout_ms)
    if pool == ffi.NULL:
        raise MemoryError("cannot allocate the pool")
    writers = []
    try:
        for sink in cfg.sinks:
            limits = ffi.new("logpool__limits_t *", {
                "flush_limit": sink.flush_limit,
                "periodic_flush_ms": sink.periodic_flush_ms,
                "max_buffer_length": sink.max_buffer_length,
                "max_message_size": sink.max_message_size,
                "framing": sink.framing_code,
                # With a spool, the writer is woken to spill at half the memory buffer.
                "spill_bytes": sink.max_buffer_length // 2 if sink.spool_dir else 0,
            })
            rc = lib.logpool__sink_init(pool, sink.index, limits)
            if rc != 0:
                raise ConfigError(f"sinks[{sink.index}]: rejected by the C core ({rc})")
            if lib.logpool__sink_set_name(pool, sink.index, sink.name.encode("utf-8")) != 0:
                raise MemoryError("cannot store the sink's name")
            writers.append(SinkWriter(ffi, lib, lib.logpool__pool_sink(pool, sink.index), sink))
    except BaseException:
        lib.logpool__pool_discard(pool)
        raise
    started = 0
    try:
        for w in writers:
            lib.logpool__sink_writer_started(w.c)
            if w.sink.spool_dir is not None:  # flush waits until the writer adopted the spool
                lib.logpool__sink_set_adopting(w.c, 1)
            try:
                w.start()
            except BaseException:
                lib.logpool__sink_writer_exit(w.c)
                raise
            started += 1
    except BaseException:
        for w in writers[started + 1:]:
            lib.logpool__sink_writer_exit(w.c)  # never started: mark so close does not wait
        lib.logpool_close(pool, 0)
        raise
    with _lock:
        POOLS[int(ffi.cast("uintptr_t", pool))] = (cfg, writers)
    return pool


def forget(address):
    with _lock:
        POOLS.pop(address, None)


def started_pool(address):
    """(PoolConfig, [SinkWriter]) of a pool started in this interpreter, or None."""
    with _lock:
        return POOLS.get(address)


