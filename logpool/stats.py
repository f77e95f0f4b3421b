"""The names of a sink's counters, in the order of logpool_stats_t: read from the C struct
the header declares (through whichever cffi instance the caller holds), never listed again."""
import functools


@functools.lru_cache(maxsize=None)
def fields(ffi):
    """Field names of logpool_stats_t as `ffi` declares it."""
    return tuple(name for name, _ in ffi.typeof("logpool_stats_t").fields)


def as_dict(ffi, stats):
    """A logpool_stats_t * as {field: value}."""
    return {name: getattr(stats, name) for name in fields(ffi)}
