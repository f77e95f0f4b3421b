"""The options and limits of `logpool receive`, the same for every protocol, checked here
and nowhere else; and the counters every protocol keeps."""
import math
import resource
from dataclasses import dataclass, fields

FRAMINGS = ("newline", "octet-counting", "raw")
DEFAULT_SOCKET_MODE = 0o660
DEFAULT_MAX_MESSAGE_SIZE = 16 << 20
DEFAULT_IDLE_TIMEOUT_S = 300.0
DEFAULT_HANDSHAKE_TIMEOUT_S = 10.0
DEFAULT_MAX_REPLY_BACKLOG = 1 << 20
DEFAULT_MAX_CONNECTIONS = 1024
DESCRIPTOR_RESERVE = 16  # the listener, the selector, the output, stdio, a TLS file, ...
MAX_HTTP_HEAD = 64 << 10  # an HTTP request line and its headers


@dataclass(frozen=True)
class ReceiveOptions:
    """framing: how messages are delimited on a stream, and written out.
    mode: permissions of a unix socket.
    max_message_size: the largest message (a stream's unfinished message, a RELP frame's
    data, an HTTP request body as sent and as decoded); a peer past it is refused.
    idle_timeout: seconds a connection may stay silent.
    handshake_timeout: seconds a connection has from accept to its opening being done (the
    TLS handshake; then RELP's "open", or an HTTP request's head; HTTP again from each answer
    to the next head). A plain stream has none (logpool's writers connect early and may stay
    quiet): max_connections bounds silent ones.
    max_reply_backlog: bytes of replies a peer may leave unread (RELP acks, HTTP answers)
    before it is dropped: one client that never reads must not hold memory nor the others.
    max_connections: connections held at once; when full, a new one takes the place of the
    oldest that never sent a byte, else of the one silent longest if it has been silent
    handshake_timeout, else it is closed at once. None: DEFAULT_MAX_CONNECTIONS, or fewer
    when RLIMIT_NOFILE leaves less (see default_max_connections)."""
    framing: str = "newline"
    mode: int = DEFAULT_SOCKET_MODE
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT_S
    max_reply_backlog: int = DEFAULT_MAX_REPLY_BACKLOG
    max_connections: int = None

    def __post_init__(self):
        if self.framing not in FRAMINGS:
            raise ValueError(f"framing must be one of {', '.join(FRAMINGS)}, "
                             f"got {self.framing!r}")
        _integer("mode", self.mode, 0, 0o7777)
        _integer("max_message_size", self.max_message_size, 1, 1 << 40)
        _integer("max_reply_backlog", self.max_reply_backlog, 1024, 1 << 40)
        if self.max_connections is not None:
            _integer("max_connections", self.max_connections, 1, 1 << 20)
        for name in ("idle_timeout", "handshake_timeout"):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not math.isfinite(value) or value <= 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")

    @classmethod
    def names(cls):
        return tuple(f.name for f in fields(cls))

    def connection_limit(self):
        """max_connections, or its default for this process."""
        if self.max_connections is not None:
            return self.max_connections
        return default_max_connections()


def default_max_connections():
    """DEFAULT_MAX_CONNECTIONS, or fewer so that the connections leave DESCRIPTOR_RESERVE
    of the process's descriptors free (accept() never runs out first); at least 1. An
    explicit max_connections is taken as given (running out then pauses accepting)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return DEFAULT_MAX_CONNECTIONS
    return max(1, min(DEFAULT_MAX_CONNECTIONS, soft - DESCRIPTOR_RESERVE))


def _integer(name, value, low, high):
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer from {low} to {high}, got {value!r}")


@dataclass
class ReceiverStats:
    connections: int = 0
    messages: int = 0
    bytes: int = 0
    torn: int = 0
    reads: int = 0
    tls_resumed: int = 0
    tls_failures: int = 0
    framing_errors: int = 0     # connections dropped: not the protocol (or HTTP 4xx/5xx)
    oversized: int = 0          # refused: a message or body above max_message_size
    timeouts: int = 0           # connections dropped: idle or handshake timeout
    accept_errors: int = 0      # accept() failed (out of descriptors, ...)
    slow_readers: int = 0       # connections dropped: replies unread past max_reply_backlog
    write_errors: int = 0       # the output could not be written (nothing was acknowledged)
    evicted: int = 0            # connections dropped to make room (max_connections)
    turned_away: int = 0        # new connections closed at once: full of active ones
    internal_errors: int = 0    # connections dropped on an unexpected error (a bug)
