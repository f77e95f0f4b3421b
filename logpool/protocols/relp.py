"""RELP frames (rsyslog's Reliable Event Logging Protocol), both directions: what
logpool's relp:// transport and `logpool receive --listen relp://` both speak.

Frame: TXNR SP COMMAND SP DATALEN [SP DATA] LF. Pure functions over bytes: no sockets.
"""
import errno
import re

TXNR_MAX = 999_999_999
OFFERS = (b"relp_version=0\nrelp_software=logpool,0.1.0,https://github.com/logpool/logpool\n"
          b"commands=syslog")
ACK_SUFFIX = b" rsp 6 200 OK"
# TXNR SP COMMAND SP DATALEN (SP DATA | LF): the header of a frame, and any start of one.
FRAME_HEAD = re.compile(rb"(\d{1,9}) ([a-z]{1,32}) (\d{1,9})([ \n])")
FRAME_HEAD_PREFIX = re.compile(rb"\d{0,9}( [a-z]{0,32}( \d{0,9})?)?")


class RelpError(OSError):
    """The peer broke the protocol (or, for a client, refused a command)."""


def next_txnr(txnr):
    return 1 if txnr == TXNR_MAX else txnr + 1


def parse_frame(buf, pos, max_data=None):
    """(txnr, command, data, next pos) of the frame at pos, or None if incomplete.
    RelpError for a malformed frame, or one announcing more than max_data bytes."""
    m = FRAME_HEAD.match(buf, pos)
    if m is None:
        if FRAME_HEAD_PREFIX.fullmatch(buf, pos, min(len(buf), pos + 64)):
            return None  # the header is still arriving
        raise RelpError(errno.EPROTO, f"RELP: a malformed frame header "
                        f"{bytes(buf[pos:pos + 40])!r}")
    length, start = int(m.group(3)), m.end()
    if max_data is not None and length > max_data:
        raise RelpError(errno.EMSGSIZE, f"RELP: a frame announcing {length} bytes "
                        f"(limit {max_data})")
    if m.group(4) == b"\n":  # "TXNR COMMAND 0\n": no data
        if length:
            raise RelpError(errno.EPROTO, "RELP: a frame without the data it announces")
        return int(m.group(1)), m.group(2), b"", start
    end = start + length
    if len(buf) <= end:
        return None
    if buf[end] != 0x0A:
        raise RelpError(errno.EPROTO, "RELP: a frame without its trailer")
    return int(m.group(1)), m.group(2), bytes(buf[start:end]), end + 1


def frame(txnr, command, data=b""):
    """One frame's bytes."""
    if not data:
        return b"%d %s 0\n" % (txnr, command)
    return b"%d %s %d %s\n" % (txnr, command, len(data), data)


def rsp(txnr, text=b""):
    """A reply: "rsp" with a status text ("200 OK", "500 ...") or none (close's reply)."""
    return frame(txnr, b"rsp", text)


def open_offers(software=b"logpool"):
    """The offers of an open command (or of its reply), naming the software."""
    return OFFERS.replace(b"logpool,", software + b",", 1)
