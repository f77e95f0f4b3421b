"""A collector that only counts bytes, fast enough not to be the bottleneck: recv_into a
reused 4 MiB buffer on any number of connections. Prints the total on SIGTERM.

usage: fast_sink.py PATH | tcp://HOST:PORT | tls://HOST:PORT CERT KEY | udp://HOST:PORT
Prints "ready URL" once listening (port 0 picks a free port).
"""
import os
import selectors
import signal
import socket
import ssl
import sys

from logpool.receive import grow_receive_buffer

where = sys.argv[1]
datagram = where.startswith("udp://")
if "://" in where:
    host, port = where.split("://", 1)[1].rsplit(":", 1)
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if datagram
                             else socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, int(port)))
    url = f"{where.split('://')[0]}://{host}:{listener.getsockname()[1]}"
else:
    if os.path.exists(where):
        os.unlink(where)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(where)
    url = "unix:" + where
tls = None
if where.startswith("tls://"):
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(sys.argv[2], sys.argv[3])
if datagram:
    grow_receive_buffer(listener, 32 << 20)
else:
    listener.listen(128)
listener.setblocking(False)
sel = selectors.DefaultSelector()
sel.register(listener, selectors.EVENT_READ)
buf = bytearray(4 << 20)
view = memoryview(buf)
total = 0
stopping = False


def stop(*_):
    global stopping
    stopping = True


signal.signal(signal.SIGTERM, stop)
print("ready", url, flush=True)
while not stopping:
    for key, _ in sel.select(0.2):
        if key.fileobj is listener and not datagram:
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                continue
            if tls is not None:
                conn.settimeout(10)  # the handshake, then non-blocking reads
                conn = tls.wrap_socket(conn, server_side=True)
            conn.setblocking(False)
            sel.register(conn, selectors.EVENT_READ)
            continue
        while True:  # TLS may hold decrypted bytes that select() cannot see
            try:
                n = key.fileobj.recv_into(view)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                break
            except OSError:
                n = 0
            if n == 0 and not datagram:
                sel.unregister(key.fileobj)
                key.fileobj.close()
                break
            total += n
            if tls is None or datagram:
                break
print(total, flush=True)
