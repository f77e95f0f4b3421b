"""clickhouse: ``INSERT INTO <clickhouse_table> FORMAT JSONEachRow`` over ClickHouse's HTTP
interface (the query in the URL, the rows as the body; gzip/zstd by http_compression), from
the 18.16 that Debian 12 packages to current releases.

Each row is the message when it is a JSON object, else ``{"message": "<line>"}``, one row
per line. A URL query reaches the insert as it is (``http://host:8123/?user=u&password=p``,
``...&async_insert=1``, ``...&date_time_input_format=best_effort``); with
``clickhouse_skip_unknown_fields`` the insert ignores fields the table has no column for
(``input_format_skip_unknown_fields=1``) instead of refusing their rows.

Deduplication: every request carries ``insert_deduplication_token``, random per request and
frozen with it: its retries (after an answer never seen) reuse it, two requests never share
one, even with the same bytes. ClickHouse knows the setting from 22.2 and deduplicates by it
on Replicated*MergeTree tables, or on MergeTree with ``non_replicated_deduplication_window``
> 0. The server's version is read once per session (``SELECT version()``); older servers
get no token (an "Unknown setting" answer, code 115, also drops the setting for that server:
logged once with the setting and the version, and the request sent again at once). Before
22.2 a retried request is deduplicated only by the hash of its block, on Replicated*MergeTree
(or MergeTree with that window, where the server has the setting), so two requests with the
same bytes are stored once there; a plain MergeTree without it (18.16's only kind) does not
deduplicate: a retry after an answer never seen may store a batch twice, counted in
resent_messages.

Answer, by ClickHouse's exception code (the ``X-ClickHouse-Exception-Code`` header, or the
body's ``Code: N`` where the header is absent, as in 18.16):

- none, 2xx: acknowledged (an exception code in a 2xx answer is an error: kept, sent again);
- 115 (unknown setting): the setting is dropped for that server, the request sent again;
- 60, 81 (unknown table or database), 192-194, 497, 516 (user, password, access): the
  configuration: kept, logged once, sent again on the retry schedule;
- parse and unknown-field errors (6, 16, 25-27, 32, 33, 38, 41, 53, 69, 70, 72, 117, 131,
  349, 376, 377, 467): refused for the data: narrowed down to the row (a row named
  ``(at row N)`` is isolated at once), which is rejected with ClickHouse's message;
- 252 (too many parts), 241 (memory limit), 202, 159, 209, 210, 242, 319, 999, 425:
  retried later, with backoff;
- any other code: the generic HTTP rules by the status.
"""
import re
import secrets
import urllib.parse

from logpool.transports.formats.common import (Encoder, Misconfigured, Option, Outcome,
                                               ProtocolError, Refused, Request, RetryLater,
                                               SendAgain, add_query, body_text, text_option)

CODE = re.compile(rb"Code: (\d+)")
ROW = re.compile(rb"\(at row (\d+)\)")
UNKNOWN_SETTING = re.compile(rb"Unknown setting ([A-Za-z_][A-Za-z0-9_]*)|"
                             rb"Setting ([A-Za-z_][A-Za-z0-9_]*) is neither a builtin")
DATA_CODES = frozenset((6, 16, 25, 26, 27, 32, 33, 38, 41, 53, 69, 70, 72, 117, 131, 349,
                        376, 377, 467))
CONFIG_CODES = frozenset((60, 81, 192, 193, 194, 497, 516))
LATER_CODES = frozenset((159, 202, 209, 210, 241, 242, 252, 319, 425, 999))
UNKNOWN_SETTING_CODE = 115
CREDENTIALS = ("user", "password", "database", "quota_key")
TOKEN = "insert_deduplication_token"
TOKEN_SINCE = (22, 2)


class ClickHouse(Encoder):
    NAME = "clickhouse"
    CONTENT_TYPE = "application/x-ndjson"
    STANDARD_PATH = "/"
    JSON_NEEDED = True
    OPTIONS = (
        Option("clickhouse_table", "string", "logs", "the table rows are inserted into "
               "([db.]table)", text_option(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?",
                                           "a [database.]table name")),
        Option("clickhouse_skip_unknown_fields", "boolean", False, "fields the table has no "
               "column for are ignored (input_format_skip_unknown_fields) instead of refusing "
               "their rows"),
    )

    def __init__(self, options, url_path):
        super().__init__(options, url_path)
        self.url_path = url_path
        query = f"INSERT INTO {options['clickhouse_table']} FORMAT JSONEachRow"
        self.path = add_query(self.path, "query=" + urllib.parse.quote(query, safe=""))
        if options.get("clickhouse_skip_unknown_fields"):
            self.path = add_query(self.path, "input_format_skip_unknown_fields=1")
        self.version = {}  # collector url -> (major, minor), as its probe answered
        self.dropped = {}  # collector url -> settings it said it does not know
        self.url = None  # the collector requests go to now

    def encode(self, messages, now_ns):
        import logpool.transports.formats.codec as codec
        rows = []
        for m in messages:
            doc, text = codec.as_object(m)
            rows.append(text.encode() if doc is not None and "\n" not in text else
                        codec.compact(doc if doc is not None else {"message": text}).encode())
        body = b"\n".join(rows) + b"\n" if rows else b""
        # Random per request, frozen with it (the transport sends a request's retries as
        # the same Request): two requests never share a token, whatever their bytes.
        token = secrets.token_hex(16)
        return Request(add_query(self.path, f"{TOKEN}={token}"),
                       {"Content-Type": self.CONTENT_TYPE}, body)

    # -- what the server knows --

    def probe(self):
        # The URL's credentials only: its settings may be what this server does not know.
        base, _, query = self.url_path.partition("?")
        kept = [p for p in query.split("&") if p.partition("=")[0] in CREDENTIALS]
        return Request(add_query(base or "/", "&".join(kept + [
            "query=" + urllib.parse.quote("SELECT version()", safe="")])), {}, b"")

    def learn(self, url, response):
        self.url = url
        text = response.body.decode("ascii", "replace").strip()
        m = re.match(r"(\d+)\.(\d+)", text) if 200 <= response.status < 300 else None
        if m:
            self.version[url] = (int(m.group(1)), int(m.group(2)))
            if self.version[url] < TOKEN_SINCE:
                self.dropped.setdefault(url, set()).add(TOKEN)

    def finish(self, request):
        dropped = self.dropped.get(self.url)
        if not dropped:
            return request
        path, _, query = request.path.partition("?")
        kept = [p for p in query.split("&") if p.partition("=")[0] not in dropped]
        return request._replace(path=path + ("?" + "&".join(kept) if kept else ""))

    def _version_text(self):
        version = self.version.get(self.url)
        return ".".join(map(str, version)) if version else "unknown"

    # -- answers --

    def describe(self, response):
        code = self._code(response)
        what = f"ClickHouse exception code {code}" if code is not None else (
            f"ClickHouse HTTP {response.status}")
        return f"{what}: {body_text(response, 300)!r}"

    @staticmethod
    def _code(response):
        code = response.headers.get("x-clickhouse-exception-code")
        if code is not None and code.strip().isdigit():
            return int(code)
        if 200 <= response.status < 300 and code is None:
            return None
        m = CODE.search(response.body[:4096])
        return int(m.group(1)) if m else None

    def interpret(self, response, request, count):
        code = self._code(response)
        if code is None:
            return Outcome.acked(count) if 200 <= response.status < 300 else None
        why = self.describe(response)
        if 200 <= response.status < 300:
            raise ProtocolError(f"{why} (an exception after the answer began)")
        if code == UNKNOWN_SETTING_CODE:
            m = UNKNOWN_SETTING.search(response.body[:4096])
            setting = (m.group(1) or m.group(2)).decode() if m else None
            dropped = self.dropped.setdefault(self.url, set())
            if setting and setting in request.path and setting not in dropped:
                dropped.add(setting)
                raise SendAgain(f"ClickHouse {self._version_text()} at {self.url} does not "
                                f"know the setting {setting}: it is no longer sent to that "
                                f"server")
            raise Misconfigured(why)
        if code in CONFIG_CODES:
            raise Misconfigured(f"{why} (a configuration error: the table, database or "
                                f"credentials)")
        if code in DATA_CODES:
            m = ROW.search(response.body[:4096])
            row = int(m.group(1)) - 1 if m else None
            raise Refused(why, row if row is not None and 0 <= row < count else None)
        if code in LATER_CODES:
            raise RetryLater(why)
        return None
