"""Parse and validate a pool config (JSON text or dict). Unknown keys are errors.

Every error is a ConfigError whose message names the offending key, e.g.
``sinks[1].flush_limt: unknown key``.
"""
import json
import os
import urllib.parse
import socket

from logpool import transports
from logpool.errors import ConfigError
from logpool.record import Record
from logpool.transports.schema import (Option, absolute_path, choice, defaults, int_range,
                                      optional)

INT32_MAX = 2**31 - 1
# Framing of each message on the wire, applied by log_cdata (values: the C enum).
FRAMINGS = {"raw": 0, "newline": 1, "octet-counting": 2}
POSITIVE = int_range(1, INT32_MAX)
# Options valid at the top level and per sink (a sink's value wins). Units are in the name.
SINK_SCHEMA = (
    Option("flush_limit", "integer", 65536, "bytes buffered that wake the writer at once",
           POSITIVE),
    Option("periodic_flush_ms", "integer", 100, "longest time an accepted byte waits before "
           "the writer sends it", POSITIVE),
    Option("max_buffer_length", "integer", 16 * 1024 * 1024, "bytes accepted but not yet "
           "written, per sink; above it (and a full spool) log returns EFULL", POSITIVE),
    Option("max_message_size", "integer", 1024 * 1024, "larger messages get ETOOBIG "
           "(defaults shrink to max_buffer_length and to what the transport carries)",
           POSITIVE),
    Option("connect_timeout_ms", "integer", 1000, "one connect attempt: name resolution and "
           "the whole opening exchange (TLS, the protocol's open)", POSITIVE),
    Option("send_timeout_ms", "integer", 5000, "a connection that takes no byte (or answers "
           "nothing) for this long is dropped and retried", POSITIVE),
    Option("retry_interval_ms", "integer", 100, "first reconnect delay; doubles per "
           "consecutive failure (jitter: 50-100 % of it)", POSITIVE),
    Option("max_retry_interval_ms", "integer", 5000, "cap of the reconnect delay", POSITIVE),
)
SINK_OPTIONS = defaults(SINK_SCHEMA)
FRAMING_OPTION = Option("framing", "string", "raw", "raw (bytes as given), newline (appends "
                        "\\n when missing) or octet-counting (RFC 6587, stream sinks only)",
                        choice(*FRAMINGS, listed=True))
# The disk spool (top level or per sink): spool_dir enables it.
SPOOL_SCHEMA = (
    Option("spool_dir", "string or null", None, "enables the disk spool: each sink spools "
           "under spool_dir/NAME (its name, escaped); must be writable by the worker user only",
           optional(absolute_path("directory"))),
    Option("max_spool_bytes", "integer", 1 << 30, "per sink: the most its spool holds",
           int_range(1, 2**62)),
    Option("dead_letter_path", "string or null", None, "a file where every message the "
           "collector rejects for good is appended (one JSON object per line: time, sink, "
           "reason, message); written by the writer thread, never by log_cdata",
           optional(absolute_path("file"))),
    Option("dead_letter_max_bytes", "integer", 64 << 20, "the dead-letter file is rotated "
           "once (to PATH.1, replacing it) when it would grow past this", int_range(1, 2**62)),
)
SPOOL_OPTIONS = defaults(SPOOL_SCHEMA)
POOL_ONLY_SCHEMA = (
    Option("exit_flush_timeout_ms", "integer", 1000, "top level only: how long the "
           "process-exit fallback (no logpool_close before exit) waits for delivery",
           int_range(0, INT32_MAX)),
)
POOL_ONLY_OPTIONS = defaults(POOL_ONLY_SCHEMA)
# Every key a sink (or the top level, for all sinks) takes besides its transport's.
SHARED_SCHEMA = SINK_SCHEMA + (FRAMING_OPTION,) + SPOOL_SCHEMA
URL_FORMS = transports.url_forms()
# Keys that no longer exist, and what to do instead: a config naming one fails with this
# text (not a bare "unknown key"), so an old config says how to mend it.
RETIRED_KEYS = {
    "http_concurrency": "no longer a key (it only ever took 1: one request in flight per "
                        "sink is what keeps the order); remove it, and run several sinks for "
                        "parallel requests",
}


class SinkConfig(Record):
    __slots__ = (
        "index", "url", "name", "scheme",
        "address",  # "path" transports: the path (str); "host_port" ones: (host, port)
        "flush_limit", "periodic_flush_ms", "max_buffer_length", "max_message_size",
        "connect_timeout_ms", "send_timeout_ms", "retry_interval_ms", "max_retry_interval_ms",
        "framing",
        "transport_options",  # what the transport parsed of its own keys
        "collectors",  # ((url, scheme, address), ...): failover order, first = url
        "spool_dir",  # this sink's spool directory (spool_dir/<quoted name>), or None
        "max_spool_bytes",
        "dead_letter_path",  # rejected messages are appended here, or None
        "dead_letter_max_bytes",
    )
    DEFAULTS = {"framing": "raw", "transport_options": None, "collectors": (),
                "spool_dir": None, "max_spool_bytes": 1 << 30, "dead_letter_path": None,
                "dead_letter_max_bytes": 64 << 20}

    @property
    def transport(self):
        return transports.for_scheme(self.scheme)

    @property
    def address_kind(self):
        return self.transport.ADDRESS[self.scheme].name

    @property
    def socket_type(self):
        return self.transport.SOCKET_TYPE

    @property
    def datagram(self):
        return self.socket_type == socket.SOCK_DGRAM

    @property
    def framing_code(self):
        return FRAMINGS[self.framing]


class PoolConfig(Record):
    __slots__ = ("sinks", "exit_flush_timeout_ms")

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


def parse_url(where, url, allow_port_zero=False):
    """(scheme, address): the address in its transport's form (logpool/transports/address.py:
    a path for unix and unixgram, (host, port) for tcp, tls and udp, ...). Names are resolved
    later, by the writer. Port 0 (any free port) is for listeners."""
    if not isinstance(url, str) or not url:
        raise ConfigError(f"{where}: must be a non-empty string like {URL_FORMS}, got {url!r}")
    scheme, sep, rest = url.partition(":")
    if not sep:
        raise ConfigError(f"{where}: {url!r} has no scheme ({URL_FORMS})")
    scheme = scheme.lower()
    transport = transports.for_scheme(scheme)
    if transport is None:
        raise ConfigError(f"{where}: unknown scheme {scheme!r} (supported: {URL_FORMS})")
    return scheme, transport.ADDRESS[scheme].parse(where, scheme, url, allow_port_zero)


def _check_keys(where, obj, allowed):
    for key in obj:
        if key not in allowed:
            prefix = f"{where}." if where else ""
            if key in RETIRED_KEYS:
                raise ConfigError(f"{prefix}{key}: {RETIRED_KEYS[key]}")
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
    transport_keys = transports.all_options()
    _check_keys("", config, {"sinks"} | {o.name for o in SHARED_SCHEMA + POOL_ONLY_SCHEMA}
                | set(transport_keys))
    sinks = config.get("sinks")
    if not isinstance(sinks, list) or not sinks:
        raise ConfigError("sinks: must be a non-empty list of {\"url\": ...} objects")
    if len(sinks) > 1024:
        raise ConfigError(f"sinks: at most 1024 sinks, got {len(sinks)}")

    # Every key is validated first, by its Option; defaults are applied once, per sink.
    pool_wide = _validated("", config, SHARED_SCHEMA + POOL_ONLY_SCHEMA)
    pool_transport = _validated("", config, transport_keys.values())
    exit_ms = pool_wide.get("exit_flush_timeout_ms", POOL_ONLY_OPTIONS["exit_flush_timeout_ms"])

    explicit = {}  # name -> index of the sink that gave it
    for i, sink in enumerate(sinks):
        if isinstance(sink, dict) and "name" in sink:
            name = sink["name"]
            if not isinstance(name, str) or not name:
                raise ConfigError(f"sinks[{i}].name: must be a non-empty string, got {name!r}")
            if name in explicit:
                raise ConfigError(f"sinks[{i}].name: duplicate sink name {name!r} (also "
                                  f"sinks[{explicit[name]}])")
            explicit[name] = i
    parsed, owner = [], dict(explicit)  # every name so far -> its sink's index
    for i, sink in enumerate(sinks):
        where = f"sinks[{i}]"
        if isinstance(sink, str):
            sink = {"url": sink}
        if not isinstance(sink, dict):
            raise ConfigError(f"{where}: must be an object with a url, got {sink!r}")
        _check_keys(where, sink, {"url", "name"} | {o.name for o in SHARED_SCHEMA}
                    | set(transport_keys))
        if "url" not in sink:
            raise ConfigError(f"{where}.url: missing")
        urls = _urls(where, sink["url"])
        collectors = tuple((url, *parse_url(f"{where}.url" + (f"[{k}]" if len(urls) > 1 else ""),
                                            url)) for k, url in enumerate(urls))
        _, scheme, address = collectors[0]
        transport = transports.for_scheme(scheme)
        if len(collectors) > 1:
            if any(c[1] != scheme for c in collectors):
                raise ConfigError(f"{where}.url: the collectors of one sink share a scheme, "
                                  f"got {', '.join(sorted({c[1] for c in collectors}))}")
            if not transport.FAILOVER:
                takers = ", ".join(f"{s}://" for cls in transports.TRANSPORTS if cls.FAILOVER
                                   for s in cls.SCHEMES)
                raise ConfigError(f"{where}.url: a list of collectors (failover) is for stream "
                                  f"and session sinks ({takers}), not {scheme}")
        if "name" in sink:
            name = sink["name"]
        else:  # unnamed: the URL, made unique when another sink has it (metrics label)
            name = urls[0] if urls[0] not in owner else f"{urls[0]}#{i}"
            if name in owner:
                raise ConfigError(f"{where}.name: this sink would be named {name!r}, which "
                                  f"sinks[{owner[name]}] already is; give one of them a name")
            owner[name] = i
        values = {**defaults(SHARED_SCHEMA), **pool_wide,
                  **_validated(where, sink, SHARED_SCHEMA)}
        opts = {o.name: values[o.name] for o in SINK_SCHEMA}
        framing = values["framing"]
        # The transport's keys: validated, then complete (its defaults, the pool-wide values
        # of the keys it takes, the sink's), before the transport sees them.
        own = transport.options_for(scheme)
        given = _transport_keys(where, sink, scheme, own, pool_transport, transport_keys)
        transport_values = {**defaults(own), **given}
        transport.check_sink(where, sink, given, transport_values, opts, framing)
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
        transport_options = transport.parse_options(where, scheme, address, transport_values)
        spool = {o.name: values[o.name] for o in SPOOL_SCHEMA}
        if spool["spool_dir"] is not None:  # each sink spools under its own name
            spool["spool_dir"] = os.path.join(spool["spool_dir"], spool_component(name))
        parsed.append(SinkConfig(index=i, url=urls[0], name=name, scheme=scheme, **spool,
                                 address=address, collectors=collectors, framing=framing,
                                 transport_options=transport_options, **opts))
    return PoolConfig(sinks=tuple(parsed), exit_flush_timeout_ms=exit_ms)


def _validated(where, obj, options):
    """The values obj gives for options, each validated by its Option (no defaults)."""
    prefix = f"{where}." if where else ""
    return {o.name: o.validate(prefix + o.name, obj[o.name]) for o in options if o.name in obj}


def spool_component(name):
    """A sink name as one safe path component: percent-quoted ("/" and NUL included), and
    "." and ".." (which quoting leaves alone) with their dots quoted too."""
    quoted = urllib.parse.quote(name, safe="")
    return quoted.replace(".", "%2E") if quoted in (".", "..") else quoted


def _urls(where, url):
    """A sink's collectors: one URL, or a non-empty list of them (failover, in order)."""
    if isinstance(url, list):
        if not url or len(url) > 64:
            raise ConfigError(f"{where}.url: a list of collectors holds 1 to 64 URLs, got "
                              f"{len(url)}")
        return tuple(url)
    return (url,)


def _transport_keys(where, sink, scheme, own, pool_wide, every):
    """The validated values given for a sink's transport keys: the pool-wide ones of the keys
    its transport takes, then the sink's own. A sink naming a key its transport does not
    take is an error."""
    takes = {o.name for o in own}
    for key in every:
        if key in sink and key not in takes:
            takers = " and ".join(f"{s}://" for s in transports.takers(key))
            raise ConfigError(f"{where}.{key}: only {takers} sinks take this option (this sink "
                              f"is {scheme})")
    return {**{k: v for k, v in pool_wide.items() if k in takes},
            **_validated(where, sink, own)}
