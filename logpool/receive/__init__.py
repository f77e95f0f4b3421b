"""`logpool receive`: the collector for every logpool transport but Kafka.

    listen.py   claiming the address (stale unix sockets, modes), TLS context
    options.py  the options and limits (one place, every protocol), the counters
    loop.py     the selector loop: accept, TLS handshakes, reads, bounded replies, deadlines
    connection.py  one peer's state; which one makes room at max_connections
    output.py   the output: whole unbuffered writes, nothing of a refused one kept
    framing.py  message boundaries on streams (newline, octet-counting, raw)
    stream.py   unix/tcp/tls streams and udp/unixgram datagrams
    relp.py     RELP (codec shared with the client: logpool.protocols.relp)
    http.py     HTTP/1.1 (body.py: decoding, bounded; JSON arrays split as sent)
    cli.py      `python -m logpool receive`
"""
from logpool.receive.body import BodyTooLarge, decode_http_body
from logpool.receive.cli import main
from logpool.receive.framing import FramingError, frame_datagram, frame_message, split_messages
from logpool.receive.listen import (address_of, grow_receive_buffer, listen_socket,
                                    server_tls_context)
from logpool.receive.loop import READ_SIZE, Receiver
from logpool.receive.options import ReceiveOptions, ReceiverStats

__all__ = ["BodyTooLarge", "FramingError", "READ_SIZE", "ReceiveOptions", "Receiver",
           "ReceiverStats", "address_of", "decode_http_body", "frame_datagram",
           "frame_message", "grow_receive_buffer", "listen_socket", "main", "make_receiver",
           "server_tls_context", "split_messages"]


def make_receiver(listen, out, **options):
    """A Receiver for any listen URL (one class serves every protocol)."""
    return Receiver(listen, out, **options)
