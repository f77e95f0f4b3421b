"""Message boundaries on a stream (newline, octet-counting, raw) and how a message taken
whole from a datagram, a RELP frame or an HTTP body is written out."""
import re

OCTET_HEADER = re.compile(rb"([1-9][0-9]{0,9}) ")


class FramingError(ValueError):
    """Not a frame; `complete` is what came whole before it: (bytes, count, consumed)."""

    def __init__(self, message, complete):
        super().__init__(message)
        self.complete = complete


def split_messages(framing, buf):
    """(complete messages as written out, count, bytes consumed) from the start of buf."""
    if framing == "raw":
        return buf, 0, len(buf)
    if framing == "newline":
        cut = buf.rfind(b"\n") + 1
        return buf[:cut], buf.count(b"\n", 0, cut), cut
    pos, count = 0, 0
    while True:
        m = OCTET_HEADER.match(buf, pos)
        if m is None:
            if len(buf) - pos > 11 or (buf[pos:] and not re.fullmatch(rb"[1-9][0-9]*",
                                                                        buf[pos:])):
                raise FramingError(f"bad octet-counting frame header {buf[pos:pos + 12]!r}",
                                   (buf[:pos], count, pos))
            break
        end = m.end() + int(m.group(1))
        if end > len(buf):
            break
        pos, count = end, count + 1
    return buf[:pos], count, pos


def split_new(framing, buf, new):
    """split_messages over buf, whose last `new` bytes just arrived: a newline stream is
    searched only in them (the rest holds no newline), so a long line costs linear time,
    not quadratic."""
    if framing != "newline":
        return split_messages(framing, buf)
    old = len(buf) - new
    last = buf.rfind(b"\n", old)
    if last < 0:
        return b"", 0, 0
    cut = last + 1
    return bytes(memoryview(buf)[:cut]), buf.count(b"\n", old, cut), cut


def announced_size(framing, buf):
    """The size an octet-counting header at the start of buf announces, else 0."""
    if framing != "octet-counting":
        return 0
    m = OCTET_HEADER.match(buf)
    return int(m.group(1)) if m is not None else 0


def frame_message(framing, data):
    """A whole message (a datagram, a RELP or HTTP message) written out in the framing."""
    if framing == "octet-counting":
        return b"%d %s" % (len(data), data)
    if framing == "newline" and not data.endswith(b"\n"):
        return data + b"\n"
    return data


frame_datagram = frame_message  # the name older callers use
