"""Parse and validate a pool config (JSON text or dict). Unknown keys are errors.

Every error is a ConfigError whose message names the offending key, e.g.
``sinks[1].flush_limt: unknown key``.
"""
import json
import math
import re
from dataclasses import dataclass

from logpool.errors import ConfigError

# Options valid at the top level and per sink (a sink's value wins). Units are in the name.
SINK_OPTIONS = {
    "flush_limit": 65536,
    "periodic_flush_ms": 100,
    "max_buffer_length": 16 * 1024 * 1024,
    "max_message_size": 1024 * 1024,
    "connect_timeout_ms": 1000,
    "send_timeout_ms": 5000,
    "retry_interval_ms": 100,
    "max_retry_interval_ms": 5000,
}
POOL_ONLY_OPTIONS = {
    # How long the process-exit fallback (no logpool_close before exit) waits for delivery.
    "exit_flush_timeout_ms": 1000,
}
INT32_MAX = 2**31 - 1
# Linux sockaddr_un.sun_path is 108 bytes including the terminating NUL.
UNIX_PATH_MAX = 107
SUPPORTED_SCHEMES = ("unix", "tcp")
PLANNED_SCHEMES = ("tls", "udp", "unixgram")


@dataclass(frozen=True)
class SinkConfig:
    index: int
    url: str
    name: str
    scheme: str
    address: object  # unix: path (str); tcp: (host, port)
    flush_limit: int
    periodic_flush_ms: int
    max_buffer_length: int
    max_message_size: int
    connect_timeout_ms: int
    send_timeout_ms: int
    retry_interval_ms: int
    max_retry_interval_ms: int


@dataclass(frozen=True)
class PoolConfig:
    sinks: tuple
    exit_flush_timeout_ms: int

    def sink_index(self, sink):
        """0-based index of a sink given by index or name."""
        return sink_index(self.sinks, sink)


def sink_index(sinks, sink):
    from logpool.errors import NoSuchSink
    if isinstance(sink, bool):
        raise NoSuchSink(f"no such sink: {sink!r}")
    if isinstance(sink, int):
        if 0 <= sink < len(sinks):
            return sink
        raise NoSuchSink(f"no such sink: {sink} (pool has {len(sinks)})")
    for s in sinks:
        if s.name == sink:
            return s.index
    raise NoSuchSink(f"no such sink: {sink!r} (names: {', '.join(s.name for s in sinks)})")


def _positive_int(where, value, upper=None):
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and math.isfinite(value) and value == int(value):
            value = int(value)
        else:
            raise ConfigError(f"{where}: must be a positive integer, got {value!r}")
    if value < 1:
        raise ConfigError(f"{where}: must be >= 1, got {value}")
    if upper is not None and value > upper:
        raise ConfigError(f"{where}: must be <= {upper}, got {value}")
    return value


def parse_url(where, url, allow_port_zero=False):
    """('unix', path) or ('tcp', (host, port)); names are resolved later, by the writer.
    Port 0 (any free port) only makes sense for a listener."""
    if not isinstance(url, str) or not url:
        raise ConfigError(f"{where}: must be a non-empty string like unix:/path or "
                          f"tcp://host:port, got {url!r}")
    scheme, sep, rest = url.partition(":")
    if not sep:
        raise ConfigError(f"{where}: {url!r} has no scheme (unix:/path or tcp://host:port)")
    scheme = scheme.lower()
    if scheme in PLANNED_SCHEMES:
        raise ConfigError(f"{where}: {scheme}:// sinks are not supported yet "
                          f"(supported: {', '.join(SUPPORTED_SCHEMES)})")
    if scheme == "unix":
        path = rest[2:] if rest.startswith("//") else rest
        if not path.startswith("/"):
            raise ConfigError(f"{where}: unix sink needs an absolute path, got {url!r}")
        if "\0" in path:
            raise ConfigError(f"{where}: unix path contains NUL")
        if len(path.encode()) > UNIX_PATH_MAX:
            raise ConfigError(f"{where}: unix path is {len(path.encode())} bytes, longer than "
                              f"the {UNIX_PATH_MAX} the OS allows")
        return "unix", path
    if scheme == "tcp":
        if not rest.startswith("//"):
            raise ConfigError(f"{where}: expected tcp://host:port, got {url!r}")
        hostport = rest[2:]
        m = re.fullmatch(r"\[([0-9A-Fa-f:.%a-zA-Z]+)\]:(\d+)|([^:/\[\]\s]+):(\d+)", hostport)
        if m is None:
            raise ConfigError(f"{where}: expected tcp://host:port or tcp://[v6addr]:port, "
                              f"got {url!r}")
        host = m.group(1) or m.group(3)
        port = int(m.group(2) or m.group(4))
        if not (0 if allow_port_zero else 1) <= port <= 65535:
            raise ConfigError(f"{where}: port {port} out of range 1-65535")
        return "tcp", (host, port)
    raise ConfigError(f"{where}: unknown scheme {scheme!r} "
                      f"(supported: {', '.join(SUPPORTED_SCHEMES)})")


def _check_keys(where, obj, allowed):
    for key in obj:
        if key not in allowed:
            prefix = f"{where}." if where else ""
            raise ConfigError(f"{prefix}{key}: unknown key (known: {', '.join(sorted(allowed))})")


def parse(config):
    """Validate a config given as JSON text, bytes or dict; return a PoolConfig."""
    if isinstance(config, (bytes, bytearray)):
        config = config.decode("utf-8", "replace")
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except ValueError as exc:
            raise ConfigError(f"config is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"config must be a JSON object, got {type(config).__name__}")
    _check_keys("", config, {"sinks"} | set(SINK_OPTIONS) | set(POOL_ONLY_OPTIONS))
    sinks = config.get("sinks")
    if not isinstance(sinks, list) or not sinks:
        raise ConfigError("sinks: must be a non-empty list of {\"url\": ...} objects")
    if len(sinks) > 1024:
        raise ConfigError(f"sinks: at most 1024 sinks, got {len(sinks)}")

    defaults = {}
    for key, default in SINK_OPTIONS.items():
        defaults[key] = _positive_int(key, config[key], INT32_MAX) if key in config else default
    exit_ms = config.get("exit_flush_timeout_ms", POOL_ONLY_OPTIONS["exit_flush_timeout_ms"])
    if isinstance(exit_ms, bool) or not isinstance(exit_ms, int) or not 0 <= exit_ms <= INT32_MAX:
        raise ConfigError(f"exit_flush_timeout_ms: must be an integer >= 0, got {exit_ms!r}")

    parsed, names = [], set()
    for i, sink in enumerate(sinks):
        where = f"sinks[{i}]"
        if isinstance(sink, str):
            sink = {"url": sink}
        if not isinstance(sink, dict):
            raise ConfigError(f"{where}: must be an object with a url, got {sink!r}")
        _check_keys(where, sink, {"url", "name"} | set(SINK_OPTIONS))
        if "url" not in sink:
            raise ConfigError(f"{where}.url: missing")
        scheme, address = parse_url(f"{where}.url", sink["url"])
        if "name" in sink:
            name = sink["name"]
            if not isinstance(name, str) or not name:
                raise ConfigError(f"{where}.name: must be a non-empty string, got {name!r}")
            if name in names:
                raise ConfigError(f"{where}.name: duplicate sink name {name!r}")
        else:  # unnamed: the URL, made unique when two sinks share it
            name = sink["url"] if sink["url"] not in names else f"{sink['url']}#{i}"
        names.add(name)
        opts = dict(defaults)
        for key in SINK_OPTIONS:
            if key in sink:
                opts[key] = _positive_int(f"{where}.{key}", sink[key], INT32_MAX)
        # Defaults shrink to a small buffer; only values the user gave can contradict it.
        for key in ("max_message_size", "flush_limit"):
            if key not in sink and key not in config:
                opts[key] = min(opts[key], opts["max_buffer_length"])
        if opts["max_message_size"] > opts["max_buffer_length"]:
            raise ConfigError(f"{where}.max_message_size: {opts['max_message_size']} is larger "
                              f"than max_buffer_length {opts['max_buffer_length']}")
        if opts["flush_limit"] > opts["max_buffer_length"]:
            raise ConfigError(f"{where}.flush_limit: {opts['flush_limit']} is larger than "
                              f"max_buffer_length {opts['max_buffer_length']}: it would never "
                              f"be reached")
        if opts["retry_interval_ms"] > opts["max_retry_interval_ms"]:
            raise ConfigError(f"{where}.retry_interval_ms: {opts['retry_interval_ms']} is "
                              f"larger than max_retry_interval_ms "
                              f"{opts['max_retry_interval_ms']}")
        parsed.append(SinkConfig(index=i, url=sink["url"], name=name, scheme=scheme,
                                 address=address, **opts))
    return PoolConfig(sinks=tuple(parsed), exit_flush_timeout_ms=exit_ms)
