"""One accepted peer (its socket, its protocol's state, its unsent replies, its clocks), and
which one gives up its place when the receiver holds max_connections."""
import itertools

_SERIALS = itertools.count()


class Connection:
    """accepted_at: when its current opening began (accept, or for HTTP keep-alive the last
    answer): handshake_timeout counts from there while `opening`. active_at: its last read.
    heard: it has sent at least one byte."""

    def __init__(self, sock, now, handshaking):
        self.sock = sock
        self.proto = None
        self.out = bytearray()  # replies not sent yet
        self.accepted_at = self.active_at = now
        self.serial = next(_SERIALS)  # accept order, when clocks are equal
        self.heard = False
        self.handshaking = handshaking
        self.handshake_wants_write = False
        self.opening = True  # the protocol's opening exchange is not done yet
        self.closing = False  # hang up once the replies are sent
        self.events = 0
        self.alive = True

    def reply(self, data):
        self.out += data

    def close_after_replies(self):
        self.closing = True


def make_room_victim(connections, now, quiet_s):
    """The connection a new one replaces when the receiver is full, or None (then the new
    one is closed): the oldest that never sent a byte (a silent peer holds a descriptor
    and nothing else); else the one silent longest, if silent at least quiet_s. A sender
    that was heard from lately keeps its place."""
    never = [c for c in connections if not c.heard]
    if never:
        return min(never, key=lambda c: c.serial)
    victim = min(connections, key=lambda c: (c.active_at, c.serial), default=None)
    if victim is not None and now - victim.active_at >= quiet_s:
        return victim
    return None
