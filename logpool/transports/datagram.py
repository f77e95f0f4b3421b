"""udp://host:port and unixgram:/path: one datagram per message, never two messages in one,
sent by sendmmsg from C in batches (no Python per datagram)."""
import errno
import os
import socket

from logpool.errors import ConfigError
from logpool.transports.address import HOST_PORT, PATH
from logpool.transports.base import Outcome, Transport, Unsendable

# The largest UDP payload over IPv4 (65535 - 8 UDP - 20 IP header bytes); unix datagram
# sockets get a send buffer that fits it.
MAX_DATAGRAM = 65507


class DatagramTransport(Transport):
    SCHEMES = ("udp", "unixgram")
    ADDRESS = {"udp": HOST_PORT, "unixgram": PATH}
    SOCKET_TYPE = socket.SOCK_DGRAM
    UNIT = "datagram"
    FAILOVER = False  # a datagram never says whether anyone received it

    @classmethod
    def check_sink(cls, where, sink, given, values, opts, framing):
        """One message per datagram: octet counting is meaningless and size has a limit."""
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

    def __init__(self, sink, chain, faults=None):
        super().__init__(sink, chain, faults)
        self.conn = self.connection(prepare=self._prepare)

    def connect(self, should_stop):
        return self.conn.open(should_stop)

    def _prepare(self, sock, family):
        if family == socket.AF_UNIX:
            # A unix datagram larger than the send buffer fails with EMSGSIZE.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2 * self.sink.max_message_size)

    def write(self):
        sent = self.chain.send_datagrams(self.sock.fileno())  # consumed and counted in C
        if sent > 0:
            return Outcome(progress=sent, settled=sent)
        err = -sent
        if err in (errno.EAGAIN, errno.ENOBUFS, errno.EINTR):
            return Outcome.NOTHING
        if err == errno.EMSGSIZE:
            raise Unsendable(err, os.strerror(err))
        raise OSError(err, os.strerror(err))  # ECONNREFUSED and the like: resend after backoff
