"""RELP, the collector's side (relp://, relp+tls://): answer "open" and "close", write each
syslog command's message out, flush, and only then acknowledge it ("rsp 200 OK"): an
acknowledged message is in the output file (the page cache), so a collector killed after
the reply loses nothing the sender let go of. When the output refuses a write, the first
command not written is answered with an error and the session is closed: the sender keeps
every message not acknowledged and resends it.

A command before "open" is answered "500" and the session closed: a RELP session starts
with "open" (its offers), and nothing is taken before it.

Replies go to the connection's bounded output buffer (the loop sends them when the peer
takes them); the codec is logpool.protocols.relp, the one the client uses."""
import errno

from logpool.protocols.relp import FRAME_HEAD, RelpError, open_offers, parse_frame, rsp
from logpool.receive.framing import frame_message

OK = b" rsp 6 200 OK\n"
FRAME_OVERHEAD = 64  # TXNR, command and length around a message


class RelpProtocol:
    def __init__(self, receiver, conn):
        self.receiver = receiver
        self.conn = conn
        self.framing = receiver.framing
        self.limit = receiver.options.max_message_size
        self.buf = bytearray()
        self.opened = False  # "open" answered: commands are taken from then on

    def torn(self):
        return False  # an unacknowledged message is resent by the client, never lost

    def feed(self, data):
        """False to hang up at once (not RELP, a frame past the limit)."""
        buf = self.buf
        buf += data
        try:
            pos, out, count, size, acks, close = self._frames(buf)
        except RelpError as exc:
            self.receiver.count(**{"oversized" if exc.errno == errno.EMSGSIZE
                                   else "framing_errors": 1})
            buf.clear()
            return False
        del buf[:pos]
        if count:
            if not self.receiver.commit(out):
                # Nothing of this read is acknowledged: answer the first syslog command
                # with an error and end the session; the client resends from there.
                for txnr, reply, carries in acks:
                    if carries:
                        self.conn.reply(rsp(txnr, b"500 cannot write the message"))
                        break
                    self.conn.reply(reply)
                self.conn.close_after_replies()
                buf.clear()
                return True
            self.receiver.count(messages=count, bytes=size, reads=1)
        for _, reply, _ in acks:
            self.conn.reply(reply)
        if close:
            self.conn.close_after_replies()
        elif len(buf) > self.limit + FRAME_OVERHEAD:
            self.receiver.count(oversized=1)
            return False
        return True

    def _frames(self, buf):
        """(bytes used, output, messages, their bytes, [(txnr, reply, carries a message)],
        close seen). Runs of syslog commands take the fast path: one regex match each, one
        reply for all of them."""
        acks, pieces, run = [], [], []
        pos = count = size = 0
        close = False
        newline = self.framing == "newline"
        view = memoryview(buf)
        try:
            while True:
                m = FRAME_HEAD.match(buf, pos)
                if m is not None and m.group(2) == b"syslog" and newline and self.opened:
                    start = m.end()
                    end = start + int(m.group(3))
                    if end - start > self.limit:
                        raise RelpError(errno.EMSGSIZE, "RELP: a frame past the limit")
                    if len(buf) <= end:
                        break
                    if buf[end] != 0x0A:
                        raise RelpError(errno.EPROTO, "RELP: a frame without its trailer")
                    pieces += (view[start:end], b"\n")
                    run.append(m.group(1))
                    count, size, pos = count + 1, size + end - start, end + 1
                    continue
                frame = parse_frame(buf, pos, self.limit)
                if frame is None:
                    break
                if run:  # replies keep the order of the commands
                    acks.append((int(run[0]), OK.join(run) + OK, True))
                    run = []
                txnr, command, data, pos = frame
                if not self.opened and command != b"open":
                    # a session starts with "open": refuse, and close
                    self.receiver.count(framing_errors=1)
                    acks.append((txnr, rsp(txnr, b"500 the session is not open"), False))
                    close = True
                    break
                if command == b"syslog":
                    pieces.append(frame_message(self.framing, data))
                    count, size = count + 1, size + len(data)
                    acks.append((txnr, rsp(txnr, b"200 OK"), True))
                elif command == b"open":
                    self.conn.opening, self.opened = False, True
                    acks.append((txnr, rsp(txnr, b"200 OK\n" +
                                           open_offers(b"logpool-receive")), False))
                elif command == b"close":
                    acks.append((txnr, rsp(txnr), False))
                    close = True
                    break
                else:
                    acks.append((txnr, rsp(txnr, b"500 unknown command " + command[:64]),
                                 False))
            if run:
                acks.append((int(run[0]), OK.join(run) + OK, True))
            return pos, b"".join(pieces), count, size, acks, close
        finally:
            del pieces
            view.release()
