"""The options and limits of `logpool receive`, the same for every protocol, checked here
and nowhere else; and the counters every protocol keeps."""
import math
from dataclasses import dataclass, fields

FRAMINGS = ("newline", "octet-counting", "raw")
DEFAULT_SOCKET_MODE = 0o660
DEFAULT_MAX_MESSAGE_SIZE = 16 << 20
DEFAULT_IDLE_TIMEOUT_S = 300.0
DEFAULT_HANDSHAKE_TIMEOUT_S = 10.0
DEFAULT_MAX_REPLY_BACKLOG = 1 << 20
MAX_HTTP_HEAD = 64 << 10  # an HTTP request line and its headers


@dataclass(frozen=True)
class ReceiveOptions:
    """framing: how messages are delimited on a stream, and written out.
    mode: permissions of a unix socket.
    max_message_size: the largest message (a stream's unfinished message, a RELP frame's
    data, an HTTP request body as sent and as decoded); a peer past it is refused.
    idle_timeout: seconds a connection may stay silent.
    handshake_timeout: seconds a connection has from accept to its opening being done (the
    TLS handshake; then RELP's "open", or an HTTP request's head).
    max_reply_backlog: bytes of replies a peer may leave unread (RELP acks, HTTP answers)
    before it is dropped: one client that never reads must not hold memory nor the others."""
    framing: str = "newline"
    mode: int = DEFAULT_SOCKET_MODE
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT_S
    max_reply_backlog: int = DEFAULT_MAX_REPLY_BACKLOG

    def __post_init__(self):
        if self.framing not in FRAMINGS:
            raise ValueError(f"framing must be one of {', '.join(FRAMINGS)}, "
                             f"got {self.framing!r}")
        _integer("mode", self.mode, 0, 0o7777)
        _integer("max_message_size", self.max_message_size, 1, 1 << 40)
        _integer("max_reply_backlog", self.max_reply_backlog, 1024, 1 << 40)
        for name in ("idle_timeout", "handshake_timeout"):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not math.isfinite(value) or value <= 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")

    @classmethod
    def names(cls):
        return tuple(f.name for f in fields(cls))


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
