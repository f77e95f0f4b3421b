"""The clickhouse http_format (INSERT ... FORMAT JSONEachRow) against a strict scripted
receiver built from the backend's published API on a real socket: it checks every request
the way the backend would and answers the backend's documented failures."""
import hashlib
import json
import urllib.parse

from backends import FAST, log_all, numbered
from httppeer import assert_logged, response


# -- ClickHouse ------------------------------------------------------------------------------

class FakeClickHouse:
    """The HTTP interface: INSERT ... FORMAT JSONEachRow in the query parameter, rows in the
    body, insert_deduplication_token honoured (a block with a token seen before is not
    inserted again), exceptions with X-ClickHouse-Exception-Code."""

    def __init__(self, script=()):
        self.script = list(script)
        self.rows = []
        self.tokens = []
        self.inserted = set()

    def __call__(self, request):
        path, _, query = request.path.partition("?")
        params = urllib.parse.parse_qs(query)
        assert path == "/" and params["query"] == ["INSERT INTO logs FORMAT JSONEachRow"]
        token = params["insert_deduplication_token"][0]
        assert token == hashlib.sha256(request.body).hexdigest()
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


def test_clickhouse_insert_with_a_content_token_and_the_exception_code(peer, pools, capfd):
    ch = FakeClickHouse([(500, 241, "Code: 241. DB::Exception: Memory limit exceeded")])
    server = peer(ch)
    pool = pools({"sinks": [{"url": server.url + "/", "http_format": "clickhouse"}], **FAST})
    log_all(pool, numbered(5) + [b"plain"])
    assert [r.get("seq") for r in ch.rows] == [0, 1, 2, 3, 4, None]
    assert ch.rows[-1] == {"message": "plain"}
    assert ch.tokens[0] == ch.tokens[1]  # the retry is the same block: same token
    assert pool.stats(0)["sent_messages"] == 6
    assert_logged(capfd, "ClickHouse exception code 241")


def test_clickhouse_unknown_table_keeps_the_data(peer, pools, capfd):
    ch = FakeClickHouse([(404, 60, "Code: 60. DB::Exception: Table default.logs does not "
                                   "exist")])
    server = peer(ch)
    pool = pools({"sinks": [{"url": server.url + "/", "http_format": "clickhouse"}], **FAST})
    log_all(pool, numbered(3))
    assert [r["seq"] for r in ch.rows] == [0, 1, 2]
    assert pool.stats(0)["dropped_rejected"] == 0
    assert_logged(capfd, "ClickHouse exception code 60")


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
                  **{**FAST, "periodic_flush_ms": 300}})
    log_all(pool, [json.dumps({"seq": i} if i != 13 else {"bad": 1}).encode()
                   for i in range(40)])
    assert [r["seq"] for r in rows] == [i for i in range(40) if i != 13]
    st = pool.stats(0)
    assert st["dropped_rejected"] == 1 and st["sent_messages"] == 39
    assert_logged(capfd, "ClickHouse exception code 27")
