"""`python -m logpool receive`: a Receiver in the main thread, stopped by SIGTERM/SIGINT,
with a one-line summary on stderr when it stops (the argument parser is logpool.cli's)."""
import signal
import sys

from logpool.receive.listen import server_tls_context
from logpool.receive.loop import Receiver


def main(listen, out_path=None, cert_file=None, key_file=None, client_ca_file=None,
         **options):
    """options: those of ReceiveOptions (framing, mode, max_message_size, idle_timeout,
    handshake_timeout, max_reply_backlog, max_connections). Returns the exit status."""
    out = open(out_path, "ab", buffering=0) if out_path else sys.stdout.buffer
    try:
        tls = server_tls_context(cert_file, key_file, client_ca_file) if cert_file else None
        receiver = Receiver(listen, out, tls=tls, **options)
    except (OSError, ValueError) as exc:
        print(f"logpool receive: cannot listen on {listen}: {exc}", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: receiver.request_stop())
    print(f"logpool receive: {receiver.framing} framing, listening on {receiver.url}",
          file=sys.stderr, flush=True)
    receiver.serve_forever()
    s = receiver.stats
    print(f"logpool receive: stopped: {s.connections} connections, {s.messages} messages, "
          f"{s.bytes} bytes, {s.torn} torn messages dropped, {s.oversized} oversized, "
          f"{s.timeouts} timed out, {s.accept_errors} accept errors, {s.framing_errors} "
          f"refused, {s.slow_readers} slow readers dropped, {s.write_errors} write errors, "
          f"{s.evicted} evicted and {s.turned_away} turned away (max connections "
          f"{receiver.max_connections}), {s.internal_errors} internal errors",
          file=sys.stderr, flush=True)
    if out_path:
        try:
            out.close()
        except OSError:
            pass
    return 1 if s.write_errors else 0
