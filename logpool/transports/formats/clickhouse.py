"""clickhouse: ``INSERT INTO <clickhouse_table> FORMAT JSONEachRow`` over ClickHouse's HTTP
interface (the query in the URL, the rows as the body; gzip/zstd by http_compression).

Each row is the message when it is a JSON object, else ``{"message": "<line>"}``. Every
request carries ``insert_deduplication_token`` = SHA-256 of its rows: a retried batch is the
same bytes, so ClickHouse inserts it once. That needs a Replicated*MergeTree table, or
``non_replicated_deduplication_window`` > 0 on a plain MergeTree.

Answer: 200 acknowledges unless ``X-ClickHouse-Exception-Code`` says otherwise; errors are
reported with ClickHouse's exception code and follow the generic HTTP rules, except a 400
(a row it cannot parse: the insert took nothing), which halves the request until the refused
row is alone: only that row is dropped (dropped_rejected).
"""
import hashlib
import urllib.parse

from logpool.transports.formats.common import (Answer, Encoder, Option, Request, add_query,
                                        body_text, text_option)


class ClickHouse(Encoder):
    NAME = "clickhouse"
    CONTENT_TYPE = "application/x-ndjson"
    STANDARD_PATH = "/"
    JSON_NEEDED = True
    OPTIONS = (
        Option("clickhouse_table", "string", "logs", "the table rows are inserted into "
               "([db.]table)", text_option(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?",
                                           "a [database.]table name")),
    )

    def __init__(self, options, url_path):
        super().__init__(options, url_path)
        query = f"INSERT INTO {options['clickhouse_table']} FORMAT JSONEachRow"
        self.path = add_query(self.path, "query=" + urllib.parse.quote(query, safe=""))

    def encode(self, messages, now_ns):
        import logpool.transports.formats.codec as codec
        rows = []
        for m in messages:
            doc, text = codec.as_object(m)
            rows.append(text.encode() if doc is not None and "\n" not in text else
                        codec.compact(doc if doc is not None else {"message": text}).encode())
        body = b"\n".join(rows) + b"\n"
        token = hashlib.sha256(body).hexdigest()
        return Request(add_query(self.path, "insert_deduplication_token=" + token),
                       {"Content-Type": self.CONTENT_TYPE}, body)

    def interpret(self, response, count):
        code = response.headers.get("x-clickhouse-exception-code")
        if code is None:
            return None
        why = f"ClickHouse exception code {code}: {body_text(response, 300)!r}"
        if 200 <= response.status < 300:
            return Answer("error", why)  # an exception after the headers were sent
        if response.status == 400:
            # A row it cannot take (an insert is all or nothing): halve until the row that
            # is refused is alone, so the others still go in.
            return Answer("split", why) if count > 1 else Answer("reject", why)
        return Answer("generic", why)
