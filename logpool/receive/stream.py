"""Streams without acknowledgements (unix, tcp, tls) and datagrams (udp, unixgram):
complete messages are written out in the receiver's framing; the torn last message of a
connection that broke is dropped (logpool resends that message whole on its next
connection). A datagram is one message whatever the framing."""
from logpool.receive.framing import FramingError, announced_size, frame_message, split_new

DATAGRAM_SIZE = 1 << 17


class StreamProtocol:
    def __init__(self, receiver, conn):
        self.receiver = receiver
        self.framing = receiver.framing
        self.limit = receiver.options.max_message_size
        self.buf = bytearray()  # after the last complete message
        conn.opening = False  # no opening exchange beyond TLS

    def feed(self, data):
        """Write out the complete messages; False to hang up (garbage, or a message past
        the limit: the peer is broken or hostile, and is not buffered without bound)."""
        buf = self.buf
        buf += data
        receiver = self.receiver
        try:
            complete, count, cut = split_new(self.framing, buf, len(data))
            bad = False
        except FramingError as exc:
            (complete, count, cut), bad = exc.complete, True
        if cut:
            receiver.write(complete)
            receiver.count(messages=count, bytes=cut, reads=1)
            del buf[:cut]
        if bad:  # the stream cannot be resynchronised
            receiver.count(framing_errors=1)
            buf.clear()
            return False
        if len(buf) > self.limit or announced_size(self.framing, buf) > self.limit:
            receiver.count(oversized=1)
            buf.clear()
            return False
        return True

    def torn(self):
        return bool(self.buf)

    @staticmethod
    def read_datagrams(receiver):
        while True:
            try:
                data = receiver.sock.recv(DATAGRAM_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            receiver.write(frame_message(receiver.framing, data))
            receiver.count(messages=1, bytes=len(data), reads=1)
