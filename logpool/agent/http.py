"""The agent's /metrics endpoint (Prometheus text), served from a thread of its own."""
import http.server
import threading


def serve_metrics(address, render):
    """Starts a threaded HTTP server on address answering GET /metrics with render()."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 10  # a silent client cannot hold a thread

        def do_GET(self):
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404)
                return
            body = render().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(address, Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="logpool-agent-metrics",
                     daemon=True).start()
    return server
