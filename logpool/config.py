"""Parse and validate a pool config (JSON text or dict). Unknown keys are errors.

Every error is a ConfigError whose message names the offending key, e.g.
``sinks[1].flush_limt: unknown key``.
"""
import ipaddress
import json
import math
import re
import socket
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
# Framing of each message on the wire, applied by log_cdata (values: the C enum).
FRAMINGS = {"raw": 0, "newline": 1, "octet-counting": 2}
# TLS options: valid at the top level (applied to every tls:// sink) and per tls:// sink.
TLS_OPTIONS = {"ca_file": None, "server_name": None, "cert_file": None, "key_file": None,
               "verify": True}
INT32_MAX = 2**31 - 1
# Linux sockaddr_un.sun_path is 108 bytes including the terminating NUL.
UNIX_PATH_MAX = 107
HOST_PORT_SCHEMES = ("tcp", "tls", "udp")
DATAGRAM_SCHEMES = ("udp", "unixgram")
# The largest UDP payload over IPv4 (65535 - 8 UDP - 20 IP header bytes); unix datagram
# sockets get a send buffer that fits it.
MAX_DATAGRAM = 65507
URL_FORMS = "unix:/path, unixgram:/path, tcp://host:port, tls://host:port or udp://host:port"


@dataclass(frozen=True)
class SinkConfig:
    index: int
    url: str
    name: str
    scheme: str
    address: object  # unix, unixgram: path (str); tcp, tls, udp: (host, port)
    flush_limit: int
    periodic_flush_ms: int
    max_buffer_length: int
    max_message_size: int
    connect_timeout_ms: int
    send_timeout_ms: int
    retry_interval_ms: int
    max_retry_interval_ms: int
    framing: str = "raw"
    tls: object = None  # TlsConfig for tls:// sinks

    @property
    def datagram(self):
        return self.scheme in DATAGRAM_SCHEMES

    @property
    def socket_type(self):
        return socket.SOCK_DGRAM if self.datagram else socket.SOCK_STREAM

    @property
    def framing_code(self):
        return FRAMINGS[self.framing]


@dataclass(frozen=True)
class TlsConfig:
    ca_file: object
    server_name: str
    cert_file: object
    key_file: object
    verify: bool
    context: object  # ssl.SSLContext, built (and so checked) when the config is parsed


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
    """(scheme, address): a path for unix and unixgram, (host, port) for tcp, tls and udp.
    Names are resolved later, by the writer. Port 0 (any free port) is for listeners."""
    if not isinstance(url, str) or not url:
        raise ConfigError(f"{where}: must be a non-empty string like {URL_FORMS}, got {url!r}")
    scheme, sep, rest = url.partition(":")
    if not sep:
        raise ConfigError(f"{where}: {url!r} has no scheme ({URL_FORMS})")
    scheme = scheme.lower()
    if scheme in ("unix", "unixgram"):
        path = rest[2:] if rest.startswith("//") else rest
        if not path.startswith("/"):
            raise ConfigError(f"{where}: {scheme} sink needs an absolute path, got {url!r}")
        if "\0" in path:
            raise ConfigError(f"{where}: {scheme} path contains NUL")
        if len(path.encode()) > UNIX_PATH_MAX:
            raise ConfigError(f"{where}: {scheme} path is {len(path.encode())} bytes, longer "
                              f"than the {UNIX_PATH_MAX} the OS allows")
        return scheme, path
    if scheme in HOST_PORT_SCHEMES:
        if not rest.startswith("//"):
            raise ConfigError(f"{where}: expected {scheme}://host:port, got {url!r}")
        hostport = rest[2:]
        m = re.fullmatch(r"\[([0-9A-Fa-f:.%a-zA-Z]+)\]:(\d+)|([^:/\[\]\s]+):(\d+)", hostport)
        if m is None:
            raise ConfigError(f"{where}: expected {scheme}://host:port or "
                              f"{scheme}://[v6addr]:port, got {url!r}")
        host = m.group(1) or m.group(3)
        port = int(m.group(2) or m.group(4))
        if m.group(3) is not None:
            _check_host_name(where, host, url)
        if not (0 if allow_port_zero else 1) <= port <= 65535:
            raise ConfigError(f"{where}: port {port} out of range 1-65535")
        return scheme, (host, port)
    raise ConfigError(f"{where}: unknown scheme {scheme!r} (supported: {URL_FORMS})")


def _check_host_name(where, host, url):
    """A name the resolver could never be asked for (empty or over-long labels, characters
    IDNA refuses) is a config error now, not a writer error later."""
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    try:
        encoded = host.encode("idna")
    except UnicodeError as exc:
        raise ConfigError(f"{where}: {host!r} in {url!r} is not a valid host name "
                          f"({exc})") from None
    if len(encoded) > 253:
        raise ConfigError(f"{where}: host name in {url!r} is {len(encoded)} bytes, longer than "
                          f"the 253 DNS allows")


def _framing(where, value):
    if value not in FRAMINGS:
        raise ConfigError(f"{where}: must be one of {', '.join(map(repr, FRAMINGS))}, "
                          f"got {value!r}")
    return value


def _tls_option(where, key, value):
    if key == "verify":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: must be true or false, got {value!r}")
    elif not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: must be a non-empty string, got {value!r}")
    return value


def tls_context(where, ca_file=None, cert_file=None, key_file=None, verify=True):
    """A client SSLContext: the system CA bundle (or ca_file), hostname checking, TLS >= 1.2,
    optional client certificate. Files are read now so that a bad path is a config error."""
    import ssl
    if key_file and not cert_file:
        raise ConfigError(f"{where}.key_file: needs cert_file too")
    if ca_file and not verify:
        raise ConfigError(f"{where}.ca_file: given with verify = false, which ignores it")
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{where}.ca_file: cannot load {ca_file}: {exc}") from None
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert_file:
        try:
            ctx.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{where}.cert_file: cannot load {cert_file}"
                              f"{' with ' + key_file if key_file else ''}: {exc}") from None
    return ctx


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
    _check_keys("", config, {"sinks", "framing"} | set(SINK_OPTIONS) | set(POOL_ONLY_OPTIONS)
                | set(TLS_OPTIONS))
    sinks = config.get("sinks")
    if not isinstance(sinks, list) or not sinks:
        raise ConfigError("sinks: must be a non-empty list of {\"url\": ...} objects")
    if len(sinks) > 1024:
        raise ConfigError(f"sinks: at most 1024 sinks, got {len(sinks)}")

    defaults = {}
    for key, default in SINK_OPTIONS.items():
        defaults[key] = _positive_int(key, config[key], INT32_MAX) if key in config else default
    default_framing = _framing("framing", config["framing"]) if "framing" in config else None
    tls_defaults = {key: _tls_option(key, key, config[key])
                    for key in TLS_OPTIONS if key in config}
    exit_ms = config.get("exit_flush_timeout_ms", POOL_ONLY_OPTIONS["exit_flush_timeout_ms"])
    if isinstance(exit_ms, bool) or not isinstance(exit_ms, int) or not 0 <= exit_ms <= INT32_MAX:
        raise ConfigError(f"exit_flush_timeout_ms: must be an integer >= 0, got {exit_ms!r}")

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
        _check_keys(where, sink, {"url", "name", "framing"} | set(SINK_OPTIONS)
                    | set(TLS_OPTIONS))
        if "url" not in sink:
            raise ConfigError(f"{where}.url: missing")
        scheme, address = parse_url(f"{where}.url", sink["url"])
        if "name" in sink:
            name = sink["name"]
        else:  # unnamed: the URL, made unique when another sink has it (metrics label)
            name = sink["url"] if sink["url"] not in owner else f"{sink['url']}#{i}"
            if name in owner:
                raise ConfigError(f"{where}.name: this sink would be named {name!r}, which "
                                  f"sinks[{owner[name]}] already is; give one of them a name")
            owner[name] = i
        opts = dict(defaults)
        for key in SINK_OPTIONS:
            if key in sink:
                opts[key] = _positive_int(f"{where}.{key}", sink[key], INT32_MAX)
        framing = _framing(f"{where}.framing", sink["framing"]) if "framing" in sink else (
            default_framing or "raw")
        if scheme in DATAGRAM_SCHEMES:
            _check_datagram(where, sink, opts, framing)
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
        tls = _sink_tls(where, sink, scheme, address, tls_defaults)
        parsed.append(SinkConfig(index=i, url=sink["url"], name=name, scheme=scheme,
                                 address=address, framing=framing, tls=tls, **opts))
    return PoolConfig(sinks=tuple(parsed), exit_flush_timeout_ms=exit_ms)


def _check_datagram(where, sink, opts, framing):
    """One message per datagram: octet counting is meaningless and size has a hard limit."""
    if framing == "octet-counting":
        inherited = "" if "framing" in sink else " (the pool-wide framing)"
        raise ConfigError(f"{where}.framing: octet-counting{inherited} frames a stream "
                          f"(RFC 6587); a datagram already holds exactly one message: set "
                          f"this sink's framing to raw or newline")
    if "max_message_size" not in sink:  # the default, or the pool-wide value: capped
        opts["max_message_size"] = min(opts["max_message_size"], MAX_DATAGRAM)
    elif opts["max_message_size"] > MAX_DATAGRAM:
        raise ConfigError(f"{where}.max_message_size: {opts['max_message_size']} is larger "
                          f"than a datagram can carry ({MAX_DATAGRAM} bytes)")


def _sink_tls(where, sink, scheme, address, tls_defaults):
    given = {key: _tls_option(f"{where}.{key}", key, sink[key])
             for key in TLS_OPTIONS if key in sink}
    if scheme != "tls":
        if given:
            raise ConfigError(f"{where}.{next(iter(given))}: only tls:// sinks take TLS "
                              f"options (this sink is {scheme})")
        return None
    opts = {**TLS_OPTIONS, **tls_defaults, **given}
    ctx = tls_context(where, opts["ca_file"], opts["cert_file"], opts["key_file"],
                      opts["verify"])
    return TlsConfig(ca_file=opts["ca_file"], server_name=opts["server_name"] or address[0],
                     cert_file=opts["cert_file"], key_file=opts["key_file"],
                     verify=opts["verify"], context=ctx)
