"""logpool: ship log lines out of nginx/OpenResty workers without blocking them.

The hot path is C (liblogpool.so, built by build_ffi.py); this package holds the Python
side of that library (config, writer threads) and a Python API over the same C ABI:

    with logpool.Pool({"sinks": [{"url": "unix:/run/collector.sock"}]}) as pool:
        pool.log(0, b"hello\n")
"""
__version__ = "0.1.0"

from logpool.errors import (  # noqa: E402
    BufferFull, ConfigError, InvalidArgument, LogpoolError, MessageTooBig, NoSuchSink,
    PoolClosed, RuntimeUnavailable, Timeout)
from logpool.paths import include_dir, lib_path, lua_dir  # noqa: E402


def __getattr__(name):
    # Pool loads the library through cffi's ABI mode (a parse of the header with pycparser):
    # only a Python host needs it, never the runtime embedded in an nginx worker.
    if name == "Pool":
        from logpool.pool import Pool
        return Pool
    raise AttributeError(f"module 'logpool' has no attribute {name!r}")

__all__ = [
    "Pool", "LogpoolError", "InvalidArgument", "NoSuchSink", "MessageTooBig", "BufferFull",
    "PoolClosed", "ConfigError", "RuntimeUnavailable", "Timeout", "lib_path", "lua_dir",
    "include_dir", "__version__",
]
