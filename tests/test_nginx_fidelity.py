"""The same format gives the same bytes as nginx's own access_log: every format of a corpus
(each escaping, every variable the log module computes at log time, unset and empty
variables, upstream variables, a variable cached earlier in the request) is logged by
`access_log` and by `logpool_log` side by side in one real nginx, for requests that stress
them (hostile bytes, invalid UTF-8, a bad request line, 400/408/499, error_page redirects,
auth_request and mirror subrequests, HTTP/2, pipelining), and both logs are compared line by
line."""
import os
import shutil
import socket
import subprocess

import pytest

from conftest import octet_frames, sock_path, wait_for
from logpool.tools.nginx import free_port
from nativenginx import SilentUpstream, assert_never_crashed

# The log module's own variables (ngx_http_log_module.c's ngx_http_log_vars), then variables
# read through nginx's variable API: unset ($http_x_absent, $cookie_absent), empty
# ($arg_empty), client-controlled, upstream, set by `set`, response headers, and $status
# again in ${} form. $request_id ties the two logs' lines to one request.
VARIABLES = (
    "$request_id $pipe $time_local $time_iso8601 $msec $request_time $status ${status} "
    "$body_bytes_sent $bytes_sent $request_length "
    "$remote_addr $remote_user $request $request_method $request_uri $uri $args $arg_empty "
    "$server_protocol $http_user_agent $http_referer $http_x_hostile $http_x_absent "
    "$cookie_absent $upstream_addr $upstream_status $upstream_response_length "
    "$upstream_http_x_up $set_var $sent_http_x_b $sent_http_content_type "
    "$connection_requests $request_completion $host").split()

# name: (escape parameter, template); each line starts with its format's name (literal text,
# the same in both logs), so the shipped lines can be told apart on one sink.
FORMATS = {
    "esc_default": ("", "|".join(VARIABLES)),
    "esc_default_named": ("escape=default", "|".join(VARIABLES)),
    "esc_json": ("escape=json", "|".join(VARIABLES)),
    "esc_none": ("escape=none", "|".join(VARIABLES)),
    "json_line": ("escape=json",
                  '{"id":"$request_id","ts":"$time_iso8601","req":"$request","status":$status,'
                  '"bytes":$body_bytes_sent,"ua":"$http_user_agent","none":"$http_x_absent",'
                  '"up":"$upstream_http_x_up","rt":$request_time}'),
    "cached": ("", "$request_id $body_bytes_sent $bytes_sent $status $sent_http_x_b "
                   "$sent_http_x_s"),
}
STATUS_FIELD = 1 + VARIABLES.index("$status")


LOCATIONS = r"""
        client_header_timeout 1s;
        client_body_timeout 1s;
        location = /hdr {
            set $set_var 's"e\\t é';
            add_header X-B $body_bytes_sent;
            add_header X-S $status;
            return 200 'hello world';
        }
        location = /missing { error_page 404 = /hdr; return 404; }
        location = /missing-page { error_page 404 /err.html; return 404; }
        location = /err.html { add_header X-B $body_bytes_sent; return 200 "error page\n"; }
        location = /teapot { error_page 418 = @named; return 418; }
        location @named { add_header X-B $body_bytes_sent; return 200 "named"; }
        location = /up { proxy_pass http://127.0.0.1:UP_PORT/up; }
        location = /slow { proxy_pass http://127.0.0.1:SLOW_PORT/; proxy_read_timeout 30s; }
        location = /body { proxy_pass http://127.0.0.1:UP_PORT/up; }
        location = /auth { auth_request /authz; proxy_pass http://127.0.0.1:UP_PORT/up; }
        location = /authz { internal; if ($http_x_deny) { return 403; } return 204; }
        location = /mirror { mirror /mirrored; proxy_pass http://127.0.0.1:UP_PORT/up; }
        location = /mirrored { internal; proxy_pass http://127.0.0.1:UP_PORT/up; }
"""

UPSTREAM = r"""
    server {
        listen 127.0.0.1:UP_PORT;
        location /up { add_header X-Up 'u"p\\s é'; return 200 "upstream\n"; }
    }
"""

HOSTILE_HEADERS = (b'User-Agent: x"y\\z\x01\x1f\x7f\xff\xc3\x28\xe2\x82\xac\xed\xa0\x80'
                   b'\xf4\x90\x80\x80 \xc0\xaf end\r\nX-Hostile: \t"\\\x7f\xfe\r\n'
                   b"Referer: http://r\xc3\xa9f/\r\n")

# (description, raw bytes sent on one connection, what ends the exchange)
REQUESTS = [
    ("plain", b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    ("cached by add_header", b"GET /hdr HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    ("hostile bytes", b'GET /q"\\\xff\xe2\x82\xac?a="b"&empty= HTTP/1.1\r\nHost: x\r\n'
     + HOSTILE_HEADERS + b"Connection: close\r\n\r\n"),
    ("control bytes in the path", b"GET /\x01\x7f HTTP/1.1\r\nHost: x\r\nConnection: close"
     b"\r\n\r\n"),
    ("overlong UTF-8", b"GET /\xc0\xaf?empty= HTTP/1.1\r\nHost: x\r\nUser-Agent: \xc0\xaf\r\n"
     b"Connection: close\r\n\r\n"),
    ("bad request line (400)", b"GARBAGE \x01\xff\r\n\r\n"),
    ("bad header (400)", b"GET /hdr HTTP/1.1\r\nHost: x\r\nBad Header\x01: v\r\n\r\n"),
    ("HTTP/0.9", b"GET /hdr\r\n"),
    ("pipelined", b"GET /hdr HTTP/1.1\r\nHost: x\r\n\r\nGET /up HTTP/1.1\r\nHost: x\r\n\r\n"
     b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    ("error_page to a location", b"GET /missing HTTP/1.1\r\nHost: x\r\nConnection: close"
     b"\r\n\r\n"),
    ("error_page to a page", b"GET /missing-page HTTP/1.1\r\nHost: x\r\nConnection: close"
     b"\r\n\r\n"),
    ("error_page to a named location", b"GET /teapot HTTP/1.1\r\nHost: x\r\n"
     b"Connection: close\r\n\r\n"),
    ("upstream", b"GET /up?x=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    ("body", b"POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\nConnection: close"
     b"\r\n\r\nhello world"),
    ("auth_request allowed", b"GET /auth HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    ("auth_request denied", b"GET /auth HTTP/1.1\r\nHost: x\r\nX-Deny: 1\r\n"
     b"Connection: close\r\n\r\n"),
    ("mirror", b"GET /mirror HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    ("header timeout (408)", b"GET /hdr HTTP/1.1\r\nHost: x\r\n"),
    ("body timeout (408)", b"POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab"),
]

HTTP2_PATHS = ["/", "/hdr", "/missing", "/up", "/auth", "/mirror", "/q%22%FF?empty="]


def exchange(port, raw):
    """Send raw bytes; read until nginx closes the connection (its timeouts end it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(raw)
        while s.recv(65536):
            pass


def client_gone_while_upstream_silent(port, upstream):
    """499: the client closes while nginx waits for the upstream's answer."""
    before = len(upstream.accepted)
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    s.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_for(lambda: len(upstream.accepted) > before, what="nginx to reach the upstream")
    s.close()


def nginx_conf():
    formats = "\n".join(f"logpool_format {name} {esc} '{name}|{tpl}';"
                        for name, (esc, tpl) in FORMATS.items())
    log_formats = "\n".join(f"log_format {name} {esc} '{name}|{tpl}';"
                            for name, (esc, tpl) in FORMATS.items())
    logs = "\n".join(f"access_log logs/{name}.log {name}; logpool_log {name} {name};"
                     for name in FORMATS)
    return formats, log_formats, logs


def test_logpool_log_writes_the_bytes_access_log_writes(tmp_path, nginx, receive_process):
    rp = receive_process("unix:" + sock_path(tmp_path, "fidelity.sock"),
                         args=("--framing", "octet-counting"))
    sinks = ", ".join(f'{{"name": "{name}", "url": "{rp.url}", "framing": "octet-counting"}}'
                      for name in FORMATS)
    formats, log_formats, logs = nginx_conf()
    silent = SilentUpstream()
    up_port, h2_port = free_port(), free_port()
    locations = (LOCATIONS.replace("UP_PORT", str(up_port))
                 .replace("SLOW_PORT", str(silent.port)))
    http_extra = f"""
    logpool_pool '{{"sinks": [{sinks}], "periodic_flush_ms": 50}}';
    logpool_exit_timeout 10s;
    {formats}
    {log_formats}
    {logs}
    {UPSTREAM.replace("UP_PORT", str(up_port))}
    server {{
        listen 127.0.0.1:{h2_port} http2;
        {locations}
    }}
    """
    ng = nginx(http_extra, locations, workers=1)
    try:
        for _, raw in REQUESTS:
            exchange(ng.port, raw)
        client_gone_while_upstream_silent(ng.port, silent)
        curl = shutil.which("curl")
        assert curl, "curl is required for the HTTP/2 requests (Debian package curl)"
        for path in HTTP2_PATHS:
            subprocess.run([curl, "-sS", "-o", os.devnull, "--http2-prior-knowledge",
                            "-A", 'h2 "agent" \\', f"http://127.0.0.1:{h2_port}{path}"],
                           check=True, timeout=30)
        # a 499 is logged once nginx notices the client left
        access = os.path.join(ng.prefix, "logs", "esc_default.log")
        wait_for(lambda: b"|499|499|" in open(access, "rb").read(), what="the 499 line")
        assert ng.quit() == 0
    finally:
        silent.close()
    rp.stop()

    shipped = {name: [] for name in FORMATS}
    for message in octet_frames(open(rp.out_path, "rb").read()):
        shipped[message.split(b"|", 1)[0].decode()].append(message)

    compared = 0
    for name in FORMATS:
        written = expected_lines(ng, name)
        got = shipped[name]
        assert len(got) == len(written) and len(written) >= len(REQUESTS), (name, len(got),
                                                                            len(written))
        for want, have in zip(written, got):
            assert have == want, (name, want, have)
        compared += len(written)

    # the corpus really reached what it names
    default_lines = expected_lines(ng, "esc_default")
    fields = [line.split(b"|") for line in default_lines]
    statuses = {f[STATUS_FIELD] for f in fields}
    assert {b"200", b"400", b"403", b"404", b"408", b"499"} <= statuses, statuses
    assert any(b"HTTP/2.0" in f for f in fields)
    assert any(f[2] == b"p" for f in fields)  # $pipe
    # the value add_header cached early in the request is not what is logged
    cached = [line.split(b"|", 1)[1].split(b" ") for line in expected_lines(ng, "cached")]
    assert any(f[1] == b"11" and f[4] == b"0" for f in cached), cached
    print(f"fidelity corpus: {len(FORMATS)} formats x {len(default_lines)} requests, "
          f"{compared} line pairs byte-identical")
    assert_never_crashed(ng)


def expected_lines(ng, name):
    with open(os.path.join(ng.prefix, "logs", f"{name}.log"), "rb") as f:
        data = f.read()
    assert data.endswith(b"\n")
    return data[:-1].split(b"\n")
