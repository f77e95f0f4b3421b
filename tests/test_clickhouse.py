"""The clickhouse format against a real ClickHouse: Debian's clickhouse-server (18.16 in
Debian 12), started by each test as its own process (its own config and data directory under
tmp_path, free ports, stopped by pid), as it runs in production: inserts through a SIGKILL
of the server, a row it cannot parse, a column the table does not have, a setting it does
not know.

Below them, the format against a strict scripted server built from the HTTP interface's
documented answers (tokens, exception codes, a row it cannot parse), which runs anywhere."""
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import urllib.parse
import urllib.request

import pytest

from backends import FAST as SCRIPTED_FAST, log_all, numbered
from conftest import wait_for
from httppeer import assert_logged, response
from logpool.transports.formats import FORMATS

FAST = {"retry_interval_ms": 10, "max_retry_interval_ms": 500, "periodic_flush_ms": 10}

CONFIG = """<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><console>1</console></logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>{http_port}</http_port>
  <tcp_port>{tcp_port}</tcp_port>
  <path>{dir}/data/</path>
  <tmp_path>{dir}/tmp/</tmp_path>
  <user_files_path>{dir}/user_files/</user_files_path>
  <format_schema_path>{dir}/format_schemas/</format_schema_path>
  <users_config>{dir}/users.xml</users_config>
  <mark_cache_size>5368709120</mark_cache_size>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
</yandex>
"""
USERS = """<?xml version="1.0"?>
<yandex>
  <profiles><default></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip></networks>
    <profile>default</profile><quota>default</quota></default></users>
  <quotas><default></default></quotas>
</yandex>
"""


def free_tcp_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ClickHouseServer:
    """A clickhouse-server of this test's own; restartable on the same data directory."""

    def __init__(self, directory):
        self.binary = shutil.which("clickhouse-server") or "/usr/sbin/clickhouse-server"
        assert os.path.exists(self.binary), ("clickhouse-server (Debian package "
                                             "clickhouse-server) is required: make deps")
        self.dir = directory
        self.dir.mkdir(exist_ok=True)
        self.http_port, tcp_port = free_tcp_port(), free_tcp_port()
        (self.dir / "users.xml").write_text(USERS)
        self.config = self.dir / "config.xml"
        self.config.write_text(CONFIG.format(dir=self.dir, http_port=self.http_port,
                                             tcp_port=tcp_port))
        self.url = f"http://127.0.0.1:{self.http_port}/"
        self.proc = None
        self.log = self.dir / "server.log"

    def start(self):
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([self.binary, f"--config-file={self.config}"],
                                         stdout=out, stderr=subprocess.STDOUT, cwd=self.dir)
        wait_for(lambda: self.proc.poll() is not None or self._ping(), interval=0.05,
                 what="clickhouse-server answering")
        assert self.proc.poll() is None, f"clickhouse-server exited: {self.log.read_text()}"
        return self

    def _ping(self):
        try:
            with urllib.request.urlopen(self.url + "ping", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def kill(self, sig=signal.SIGKILL):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def query(self, sql):
        url = self.url + "?query=" + urllib.parse.quote(sql, safe="")
        with urllib.request.urlopen(urllib.request.Request(url, data=b""), timeout=30) as r:
            return r.read().decode()

    def version(self):
        return self.query("SELECT version()").strip()


@pytest.fixture
def clickhouse(tmp_path):
    server = ClickHouseServer(tmp_path / "clickhouse").start()
    yield server
    server.kill(signal.SIGTERM)


def logs_table(server, columns="seq UInt64, pad String"):
    server.query(f"CREATE TABLE logs ({columns}) ENGINE = MergeTree ORDER BY seq")


def test_fifty_thousand_lines_through_a_sigkill_of_the_server_mid_insert(clickhouse, pools):
    logs_table(clickhouse)
    # Requests of about 300 rows: the writer is still inserting when the server dies.
    pool = pools({"sinks": [{"url": clickhouse.url, "http_format": "clickhouse",
                             "http_max_body_bytes": 16 * 1024}], **FAST})
    n = 50_000
    for i in range(n):
        pool.log(0, json.dumps({"seq": i, "pad": "p" * (i % 40)}).encode())
    # Some batches are in: kill the server while the writer is inserting the rest.
    wait_for(lambda: pool.stats(0)["sent_messages"] >= 5_000, interval=0.001,
             what="some rows stored")
    clickhouse.kill(signal.SIGKILL)
    assert pool.stats(0)["sent_messages"] < n, "everything was in before the kill"
    clickhouse.start()  # the same data directory and port
    pool.flush(timeout=120)
    stored, distinct = map(int, clickhouse.query(
        "SELECT count(), uniqExact(seq) FROM logs").split())
    st = pool.stats(0)
    assert distinct == n and st["sent_messages"] == n  # every line stored
    # 18.16 knows no insert_deduplication_token: a batch whose answer was lost to the kill
    # may be stored twice, and only such a batch: never more than the "unseen answer" count.
    assert stored - distinct <= st["resent_messages"]
    assert st["dropped_rejected"] == 0


def test_a_row_clickhouse_cannot_parse_is_rejected_alone_with_its_reason(clickhouse, pools,
                                                                         capfd):
    logs_table(clickhouse)
    pool = pools({"sinks": [{"url": clickhouse.url, "http_format": "clickhouse"}],
                  **{**FAST, "periodic_flush_ms": 300}})
    lines = [json.dumps({"seq": i}).encode() for i in range(20)]
    lines.insert(7, b'{"seq": "not a number"}')
    for line in lines:
        pool.log(0, line)
    pool.flush(timeout=60)
    assert clickhouse.query("SELECT seq FROM logs ORDER BY seq").split() == [
        str(i) for i in range(20)]  # every good row, once
    st = pool.stats(0)
    assert st["dropped_rejected"] == 1 and st["sent_messages"] == 20
    err = assert_logged(capfd, "ClickHouse exception code 27")
    assert "Cannot parse input" in err  # ClickHouse's own reason


@pytest.mark.parametrize("skip", [False, True])
def test_an_unknown_column_is_rejected_alone_or_skipped_per_the_option(clickhouse, pools,
                                                                       capfd, skip):
    logs_table(clickhouse)
    pool = pools({"sinks": [{"url": clickhouse.url, "http_format": "clickhouse",
                             "clickhouse_skip_unknown_fields": skip}],
                  **{**FAST, "periodic_flush_ms": 300}})
    lines = [json.dumps({"seq": i}).encode() for i in range(10)]
    lines[4] = json.dumps({"seq": 4, "no_such_column": "x"}).encode()
    for line in lines:
        pool.log(0, line)
    pool.flush(timeout=60)
    stored = clickhouse.query("SELECT seq FROM logs ORDER BY seq").split()
    st = pool.stats(0)
    if skip:
        assert stored == [str(i) for i in range(10)] and st["dropped_rejected"] == 0
    else:
        assert stored == [str(i) for i in range(10) if i != 4]
        assert st["dropped_rejected"] == 1 and st["sent_messages"] == 9
        err = assert_logged(capfd, "ClickHouse exception code 117")
        assert "Unknown field" in err and "no_such_column" in err


def test_a_setting_the_server_does_not_know_is_dropped_and_logged_once(clickhouse, pools,
                                                                       capfd):
    # A URL query reaches the insert; async_insert (ClickHouse 21.11) is unknown to 18.16:
    # the server answers code 115, the setting is dropped for that server, the batch sent
    # again, the operator told once with the setting and the server's version.
    version = clickhouse.version()
    logs_table(clickhouse)
    pool = pools({"sinks": [{"url": clickhouse.url + "?async_insert=1",
                             "http_format": "clickhouse"}], **FAST})
    for i in range(5):
        pool.log(0, json.dumps({"seq": i}).encode())
    pool.flush(timeout=60)
    for i in range(5, 10):
        pool.log(0, json.dumps({"seq": i}).encode())
    pool.flush(timeout=60)
    if tuple(map(int, version.split(".")[:2])) < (21, 11):
        err = assert_logged(capfd, "does not know the setting async_insert")
        assert f"ClickHouse {'.'.join(version.split('.')[:2])}" in err
        assert err.count("does not know the setting async_insert") == 1
    assert clickhouse.query("SELECT count() FROM logs").strip() == "10"
    assert pool.stats(0)["dropped_rejected"] == 0


# -- the same format against a scripted server (the HTTP interface's documented answers) ----

class FakeClickHouse:
    """The HTTP interface: SELECT version() once per session, INSERT ... FORMAT JSONEachRow in
    the query parameter, rows in the body, insert_deduplication_token honoured (a block with
    a token seen before is not inserted again), exceptions with X-ClickHouse-Exception-Code."""

    def __init__(self, script=(), version="23.8.2.7"):
        self.script = list(script)
        self.version = version
        self.rows = []
        self.tokens = []
        self.inserted = set()
        self.probes = 0

    def __call__(self, request):
        path, _, query = request.path.partition("?")
        params = urllib.parse.parse_qs(query)
        if request.method == "GET":
            assert params["query"] == ["SELECT version()"] and not request.body
            self.probes += 1
            return [response(200, self.version + "\n")]
        assert path == "/" and params["query"] == ["INSERT INTO logs FORMAT JSONEachRow"]
        token = params["insert_deduplication_token"][0]
        assert token != hashlib.sha256(request.body).hexdigest()  # random, not the body's
        rows = [json.loads(line) for line in request.body.splitlines()]
        assert all(isinstance(r, dict) for r in rows)
        self.tokens.append(token)
        if self.script:
            status, code, text = self.script.pop(0)
            return [response(status, text, {"X-ClickHouse-Exception-Code": str(code)})]
        if token not in self.inserted:
            self.inserted.add(token)
            self.rows += rows
        return [response(200, "")]


def test_clickhouse_insert_with_a_token_per_batch_and_the_exception_code(peer, pools, capfd):
    ch = FakeClickHouse([(500, 241, "Code: 241. DB::Exception: Memory limit exceeded")])
    server = peer(ch)
    pool = pools({"sinks": [{"url": server.url + "/", "http_format": "clickhouse"}],
                  **SCRIPTED_FAST})
    log_all(pool, numbered(5) + [b"plain"])
    assert [r.get("seq") for r in ch.rows] == [0, 1, 2, 3, 4, None]
    assert ch.rows[-1] == {"message": "plain"}
    assert ch.tokens[0] == ch.tokens[1]  # the retry is the same request: the same token
    st = pool.stats(0)
    assert 1 <= ch.probes <= st["connects"]  # the version asked once per session
    assert st["sent_messages"] == 6 and st["retried_messages"] == 6
    assert_logged(capfd, "ClickHouse exception code 241")
    log_all(pool, numbered(5) + [b"plain"])  # the same bytes again: another token
    assert len(set(ch.tokens)) == 2 and len(ch.rows) == 12


def test_clickhouse_unknown_table_keeps_the_data(peer, pools, capfd):
    ch = FakeClickHouse([(404, 60, "Code: 60. DB::Exception: Table default.logs does not "
                                   "exist")])
    server = peer(ch)
    pool = pools({"sinks": [{"url": server.url + "/", "http_format": "clickhouse"}],
                  **SCRIPTED_FAST})
    log_all(pool, numbered(3))
    assert [r["seq"] for r in ch.rows] == [0, 1, 2]
    assert pool.stats(0)["dropped_rejected"] == 0
    err = assert_logged(capfd, "ClickHouse exception code 60")
    assert "a configuration error" in err


def clickhouse_encoder(**options):
    opts = {o.name: o.default for c in FORMATS.values() for o in c.OPTIONS}
    return FORMATS["clickhouse"]({**opts, **options}, "/")


@pytest.mark.parametrize("status, code, body, what", [
    (500, 252, "Code: 252. DB::Exception: Too many parts (300)", "later"),
    (500, 241, "Code: 241. DB::Exception: Memory limit (total) exceeded", "later"),
    (404, 60, "Code: 60. DB::Exception: Table default.logs doesn't exist", "configuration"),
    (403, 516, "Code: 516. DB::Exception: default: Authentication failed", "configuration"),
    (500, 27, "Code: 27, e.displayText() = DB::Exception: Cannot parse input", "row"),
    (400, 117, "Code: 117. DB::Exception: Unknown field found while parsing JSONEachRow "
               "format: x: (at row 3)", "row 2"),
    (500, 999, "Code: 999. Coordination::Exception: Connection loss", "later"),
    (500, 1002, "Code: 1002. DB::Exception: something else", "generic")])
@pytest.mark.parametrize("in_header", [True, False])  # 18.16 names the code in the body only
def test_clickhouse_answers_by_exception_code(status, code, body, what, in_header):
    from logpool.transports.formats.common import (Misconfigured, Refused, Response,
                                                   RetryLater)
    enc = clickhouse_encoder()
    request = enc.encode([b'{"a":1}', b'{"a":2}', b'{"a":3}'], 0)
    headers = {"x-clickhouse-exception-code": str(code)} if in_header else {}
    answer = Response(status, "X", headers, body.encode())
    kinds = {RetryLater: "later", Misconfigured: "configuration", Refused: "row"}
    try:
        outcome = enc.interpret(answer, request, 3)
    except (RetryLater, Misconfigured, Refused) as exc:
        got = kinds[type(exc)]
        if isinstance(exc, Refused) and exc.item is not None:
            got = f"row {exc.item}"
        assert f"ClickHouse exception code {code}" in str(exc)
    else:
        assert outcome is None  # the generic HTTP rules, by the status
        got = "generic"
    assert got == what


def test_clickhouse_token_only_for_servers_that_know_it():
    from logpool.transports.formats.common import Response, SendAgain
    enc = clickhouse_encoder()
    request = enc.encode([b'{"a":1}'], 0)
    for url, version, sent in (("http://old:8123", "18.16.1", False),
                               ("http://21:8123", "21.8.15.7", False),
                               ("http://new:8123", "22.2.2.1", True),
                               ("http://unknown:8123", None, True)):
        enc.url = url
        if version is not None:
            enc.learn(url, Response(200, "OK", {}, version.encode() + b"\n"))
        path = enc.finish(request).path
        assert ("insert_deduplication_token=" in path) is sent, (url, path)
        assert path.startswith("/?query=INSERT")
    # A server that answers 115 for a setting: dropped for it, the request sent again once.
    enc.url = "http://unknown:8123"
    refusal = Response(404, "X", {}, b"Code: 115, e.displayText() = DB::Exception: Unknown "
                                     b"setting insert_deduplication_token")
    with pytest.raises(SendAgain):
        enc.interpret(refusal, enc.finish(request), 1)
    assert "insert_deduplication_token" not in enc.finish(request).path
    enc.url = "http://new:8123"  # another server keeps it
    assert "insert_deduplication_token" in enc.finish(request).path


def test_clickhouse_a_row_it_cannot_parse_is_isolated_and_dropped_alone(peer, pools, capfd):
    rows = []

    def answer(request):
        batch = [json.loads(line) for line in request.body.splitlines()]
        if any("bad" in r for r in batch):  # all or nothing, as an insert is
            return [response(400, "Code: 27. DB::Exception: Cannot parse input",
                             {"X-ClickHouse-Exception-Code": "27"})]
        rows.extend(batch)
        return [response(200)]
    server = peer(answer)
    pool = pools({"sinks": [{"url": server.url + "/", "http_format": "clickhouse"}],
                  **{**SCRIPTED_FAST, "periodic_flush_ms": 300}})
    log_all(pool, [json.dumps({"seq": i} if i != 13 else {"bad": 1}).encode()
                   for i in range(40)])
    assert [r["seq"] for r in rows] == [i for i in range(40) if i != 13]
    st = pool.stats(0)
    assert st["dropped_rejected"] == 1 and st["sent_messages"] == 39
    assert_logged(capfd, "ClickHouse exception code 27")
