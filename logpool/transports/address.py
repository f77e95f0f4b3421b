"""The address forms of sink URLs: each is a name, the form error messages show, and a
parser from the URL to the address the transport connects to (names are resolved later, by
the writer). A transport declares its schemes' forms (ADDRESS = {scheme: form}); a form a
single transport needs lives in its module (kafka.py's), so a new transport adds no branch
here or in config."""
import re
import socket
import urllib.parse

from logpool.errors import ConfigError

# Linux sockaddr_un.sun_path is 108 bytes including the terminating NUL.
UNIX_PATH_MAX = 107


class AddressForm:
    __slots__ = ("name", "form", "parse")

    def __init__(self, name, form, parse):
        self.name = name  # "path" addresses are unix socket paths, resolved as such
        self.form = form  # for error messages: "{s}://host:port", s the scheme
        self.parse = parse  # parse(where, scheme, url, allow_port_zero) -> address

    def __repr__(self):
        return f"AddressForm({self.name!r})"


def check_host_name(where, host, url):
    """A name the resolver could never be asked for (empty or over-long labels, characters
    IDNA refuses) is a config error now, not a writer error later."""
    for family in (socket.AF_INET, socket.AF_INET6):  # (ipaddress would cost each worker 0.3 MiB)
        try:
            socket.inet_pton(family, host)
            return
        except OSError:
            pass
    try:
        encoded = host.encode("idna")
    except UnicodeError as exc:
        raise ConfigError(f"{where}: {host!r} in {url!r} is not a valid host name "
                          f"({exc})") from None
    if len(encoded) > 253:
        raise ConfigError(f"{where}: host name in {url!r} is {len(encoded)} bytes, longer than "
                          f"the 253 DNS allows")


def check_port(where, port, allow_port_zero):
    """Port 0 (any free port) is for listeners."""
    if not (0 if allow_port_zero else 1) <= port <= 65535:
        raise ConfigError(f"{where}: port {port} out of range 1-65535")


def _path(where, scheme, url, allow_port_zero):
    """An absolute unix socket path."""
    rest = url.partition(":")[2]
    path = rest[2:] if rest.startswith("//") else rest
    if not path.startswith("/"):
        raise ConfigError(f"{where}: {scheme} sink needs an absolute path, got {url!r}")
    if "\0" in path:
        raise ConfigError(f"{where}: {scheme} path contains NUL")
    if len(path.encode()) > UNIX_PATH_MAX:
        raise ConfigError(f"{where}: {scheme} path is {len(path.encode())} bytes, longer "
                          f"than the {UNIX_PATH_MAX} the OS allows")
    return path


def _host_port(where, scheme, url, allow_port_zero):
    """(host, port)."""
    rest = url.partition(":")[2]
    if not rest.startswith("//"):
        raise ConfigError(f"{where}: expected {scheme}://host:port, got {url!r}")
    m = re.fullmatch(r"\[([0-9A-Fa-f:.%a-zA-Z]+)\]:(\d+)|([^:/\[\]\s]+):(\d+)", rest[2:])
    if m is None:
        raise ConfigError(f"{where}: expected {scheme}://host:port or "
                          f"{scheme}://[v6addr]:port, got {url!r}")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if m.group(3) is not None:
        check_host_name(where, host, url)
    check_port(where, port, allow_port_zero)
    return host, port


def _http(where, scheme, url, allow_port_zero):
    """(host, port, path with query) of an http(s) URL."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{where}: {url!r}: {exc}") from None
    host = parts.hostname
    if not host or parts.username or parts.password or parts.fragment:
        raise ConfigError(f"{where}: expected {scheme}://host[:port]/path (no credentials, "
                          f"no fragment; put secrets in http_headers), got {url!r}")
    if ":" not in host:
        check_host_name(where, host, url)
    if port is None:
        port = 443 if scheme == "https" else 80
    check_port(where, port, allow_port_zero)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return host, port, path


PATH = AddressForm("path", "{s}:/path", _path)
HOST_PORT = AddressForm("host_port", "{s}://host:port", _host_port)
HTTP = AddressForm("http", "{s}://host[:port]/path", _http)
