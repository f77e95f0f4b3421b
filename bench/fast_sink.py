"""A collector that only counts bytes, fast enough not to be the bottleneck: recv_into a
reused 4 MiB buffer on any number of unix connections. Prints the total on SIGTERM."""
import os
import selectors
import signal
import socket
import sys

path = sys.argv[1]
if os.path.exists(path):
    os.unlink(path)
listener = socket.socket(socket.AF_UNIX)
listener.bind(path)
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
print("ready", flush=True)
while not stopping:
    for key, _ in sel.select(0.2):
        if key.fileobj is listener:
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                continue
            conn.setblocking(False)
            sel.register(conn, selectors.EVENT_READ)
            continue
        try:
            n = key.fileobj.recv_into(view)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            n = 0
        if n == 0:
            sel.unregister(key.fileobj)
            key.fileobj.close()
        total += n
print(total, flush=True)
