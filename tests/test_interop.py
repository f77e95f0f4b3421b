"""Interoperability with a real collector: rsyslog from Debian's packages, started here with
its own config in a temp dir, receives logpool's octet-counted syslog over TCP, and over TLS
(rsyslog's OpenSSL driver, a certificate from a CA made by the test)."""
import json
import os
import random
import shutil
import socket
import subprocess
import zlib

import pytest

from conftest import wait_for

RSYSLOG_CONF = """\
global(workDirectory="{dir}" maxMessageSize="64k"
       parser.escapeControlCharactersOnReceive="off"{tls_global})
module(load="imtcp"{tls_module})
input(type="imtcp" address="127.0.0.1" port="{port}")
# One message per output line: %msg% JSON-escaped, so embedded newlines stay visible.
template(name="msg_json" type="string" string="%msg:::json%\\n")
*.* action(type="omfile" file="{out}" template="msg_json")
"""


def free_tcp_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accepting(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


# rsyslog's OpenSSL network stream driver (Debian package rsyslog-openssl), server side only.
RSYSLOG_TLS_GLOBAL = (
    '\n       DefaultNetstreamDriver="ossl" DefaultNetstreamDriverCAFile="{ca}"'
    '\n       DefaultNetstreamDriverCertFile="{cert}" DefaultNetstreamDriverKeyFile="{key}"')
RSYSLOG_TLS_MODULE = ' StreamDriver.Name="ossl" StreamDriver.Mode="1" StreamDriver.AuthMode="anon"'


@pytest.fixture(params=["tcp", "tls"])
def rsyslog(request, tmp_path, test_ca):
    """(sink config, output file) of a running rsyslogd listening on TCP or TLS."""
    binary = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
    assert os.path.exists(binary), "rsyslogd (Debian package rsyslog) is required: make deps"
    port = free_tcp_port()
    out = tmp_path / "rsyslog-out.log"
    conf = tmp_path / "rsyslog.conf"
    tls_global = tls_module = ""
    sink = {"url": f"tcp://127.0.0.1:{port}", "framing": "octet-counting"}
    if request.param == "tls":
        cert, key = test_ca.issue("rsyslog", names=("syslog.internal",))
        tls_global = RSYSLOG_TLS_GLOBAL.format(ca=test_ca.ca_file, cert=cert, key=key)
        tls_module = RSYSLOG_TLS_MODULE
        sink = {"url": f"tls://127.0.0.1:{port}", "framing": "octet-counting",
                "ca_file": test_ca.ca_file, "server_name": "syslog.internal"}
    conf.write_text(RSYSLOG_CONF.format(dir=tmp_path, port=port, out=out,
                                        tls_global=tls_global, tls_module=tls_module))
    check = subprocess.run([binary, "-N1", "-f", str(conf)], capture_output=True, text=True)
    assert check.returncode == 0, f"rsyslog rejects its config: {check.stderr}"
    proc = subprocess.Popen([binary, "-n", "-f", str(conf), "-i", str(tmp_path / "pid")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: proc.poll() is not None or accepting(port), interval=0.05,
                 what="rsyslog listening")
        assert proc.poll() is None, f"rsyslogd exited: {proc.stdout.read()}"
        yield sink, out
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def syslog_message(i, rng):
    """RFC 5424 with a payload that names itself and carries its checksum; some payloads
    span lines, as stack traces do."""
    words = [b"GET", b"/index.html", b"200", "é ✓".encode(), b"a\tb", b"trace:\n  at f()",
             b"12 34", b"x" * rng.randrange(1, 3000)]
    body = b" ".join(rng.choice(words) for _ in range(rng.randrange(1, 12)))
    payload = b"%d %08x %s" % (i, zlib.crc32(body), body)
    header = b"<134>1 2026-11-22T05:00:00.%03dZ web01 nginx 4242 access - " % (i % 1000)
    return header, payload


def test_rsyslog_receives_octet_counted_syslog_intact_once(rsyslog, pools):
    sink, out = rsyslog
    pool = pools({"sinks": [sink]})
    rng = random.Random(5)
    n = 3000
    expected = []
    for i in range(n):
        header, payload = syslog_message(i, rng)
        pool.log(0, header + payload)
        expected.append(payload)
    pool.flush(timeout=30)

    def lines():
        return out.read_bytes().count(b"\n") if out.exists() else 0

    wait_for(lambda: lines() >= n, what="rsyslog writing every message")
    got = [json.loads(b'"' + line + b'"').encode() for line in out.read_bytes().splitlines()]
    assert len(got) == n
    assert got == expected  # intact (multi-line ones too), once each, in order
    st = pool.stats(0)
    assert st["sent_messages"] == n and st["connects"] == 1
    assert st["tls_handshake_failures"] == 0
