"""Baseline for the throughput benchmark: push SIZE-byte messages in 64 KiB batches straight
into a unix socket for SECONDS (no logpool, no buffering, no accounting)."""
import socket
import sys
import time

path, size, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
msg = b"x" * (size - 1) + b"\n"
batch = msg * max(1, 65536 // size)
s = socket.socket(socket.AF_UNIX)
s.connect(path)
sent = 0
start = time.monotonic()
deadline = start + seconds
while time.monotonic() < deadline:
    for _ in range(16):
        s.sendall(batch)
        sent += len(batch)
s.close()
print(f"raw {size} {sent} {time.monotonic() - start:.6f}")
