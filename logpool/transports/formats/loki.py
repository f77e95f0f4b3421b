"""loki: Grafana Loki's push API, JSON (``POST /loki/api/v1/push``).

One stream per request with the labels of ``loki_labels`` (default ``{"job": "logpool"}``);
each line is the message (invalid UTF-8 bytes as U+FFFD), its timestamp the record time (see
the package doc) as a decimal string of nanoseconds; a record whose time field is out of range
or not a time gets the batch's time, and the line keeps the original value.

Answer: 2xx (204) acknowledges; a 400 naming entries out of order or too old counts them as
refused for good with Loki's reason: "total ignored: N out of M" counts N (the rest were
taken), otherwise the whole request.
"""
import re

from logpool.transports.formats.common import (NOT_JSON, Answer, Encoder, Option, Request,
                                               batch_time, body_text, table_option,
                                               valid_utf8)

IGNORED = re.compile(r"total ignored: (\d+) out of (\d+)")
REFUSED = ("out of order", "too old", "too far behind", "greater than", "ignored")


class Loki(Encoder):
    NAME = "loki"
    STANDARD_PATH = "/loki/api/v1/push"
    OPTIONS = (
        Option("loki_labels", "object", {"job": "logpool"}, "stream labels (name: value)",
               table_option(r"[a-zA-Z_][a-zA-Z0-9_]*", "an object of label names "
                            "([a-zA-Z_][a-zA-Z0-9_]*) to strings")),
    )

    def __init__(self, options, url_path):
        super().__init__(options, url_path)
        self.labels = options["loki_labels"] or {"job": "logpool"}
        self.times = None  # codec.TimeText, made by the first encode (codec loads msgspec)  # ns as a decimal string

    def encode(self, messages, now_ns):
        import logpool.transports.formats.codec as codec
        if self.times is None:
            self.times = codec.TimeText(str)
        fallback = str(batch_time(now_ns))
        decode, cache, times, entry = codec.TIMES.decode, self.times.cache, self.times, (
            codec.LokiEntry)
        values = []
        for m in messages:  # parse_line and the time, inline (the per-line cost is the point)
            line = bytes(m).rstrip(b"\n")
            if not line.isascii():
                line = valid_utf8(line)
            ts = fallback
            if line[:1] == b"{":
                try:
                    fields = decode(line)
                except NOT_JSON:
                    pass
                else:
                    raw = fields.at_timestamp or fields.timestamp or fields.time or fields.ts
                    if raw is not None:
                        ts = cache.get(bytes(raw)) or times(fields, fallback)
            values.append(entry(ts, line.decode()))
        body = codec.encode_json({"streams": [{"stream": self.labels, "values": values}]})
        return Request(self.path, {"Content-Type": self.CONTENT_TYPE}, body)

    def interpret(self, response, count):
        if response.status != 400:
            return None
        text = response.body.decode("utf-8", "replace")
        found = IGNORED.findall(text)
        if found:
            ignored = min(count, sum(int(n) for n, _ in found))
            return Answer("partial", f"Loki 400: {ignored} of {count} entries ignored: "
                          f"{body_text(response, 300)!r}", rejected=ignored)
        if any(word in text for word in REFUSED):
            return Answer("reject", f"Loki 400: entries refused: {body_text(response, 300)!r}")
        return None
