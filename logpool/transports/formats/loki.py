"""loki: Grafana Loki's push API, JSON (``POST /loki/api/v1/push``).

One stream per request with the labels of ``loki_labels`` (default ``{"job": "logpool"}``);
each line is the message (invalid UTF-8 bytes as U+FFFD), its timestamp the record time (see
the package doc) as a decimal string of nanoseconds; a record whose time field is out of range
or not a time gets the batch's time, and the line keeps the original value.

Answer: 2xx (204) acknowledges. A 400 is partial: Loki stores the valid entries of a push and
names the ones it refused; only those are refused for good, with Loki's reason, the rest are
delivered. Named by what is checked against what was sent: an over-long line ("Max entry
size 'L' bytes exceeded ... with length 'N' bytes": every line longer than L), a timestamp
too old ("oldest acceptable timestamp is: T": every entry before T), entries out of order
("total ignored: N out of M": N entries, the last N of the request as Loki does not say
which). A 400 that names none of these is narrowed to the record (the generic rule); 429 and
5xx are retried.
"""
import datetime
import json
import re

from logpool.transports.formats.common import (Encoder, Fate, Option, Outcome, Refused, Request,
                                               batch_time, body_text, table_option)

IGNORED = re.compile(r"total ignored: (\d+) out of (\d+)")
TOO_LONG = re.compile(r"Max entry size '(\d+)' bytes exceeded")
TOO_OLD = re.compile(r"oldest acceptable timestamp is: (\S+)")


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
        self.times = None  # codec.TimeText (ns as a decimal string), made by the first encode

    def encode(self, messages, now_ns):
        import logpool.transports.formats.codec as codec
        if self.times is None:
            self.times = codec.TimeText(str)
        fallback = str(batch_time(now_ns))
        entry = codec.LokiEntry
        values = [entry(ts, line.decode()) for line, ts, _ in self.times.lines(messages, fallback)]
        body = codec.encode_json({"streams": [{"stream": self.labels, "values": values}]})
        return Request(self.path, {"Content-Type": self.CONTENT_TYPE}, body)

    def interpret(self, response, request, count):
        if response.status != 400:
            return None
        text = response.body.decode("utf-8", "replace")
        why = f"Loki 400: {body_text(response, 300)!r}"
        entries = _entries(request.body)
        refused = set()
        if entries is not None and len(entries) == count:
            for limit in TOO_LONG.findall(text):
                refused.update(i for i, (_, line) in enumerate(entries)
                               if len(line.encode("utf-8", "replace")) > int(limit))
            for stamp in TOO_OLD.findall(text):
                oldest = _rfc3339_ns(stamp.rstrip(",;"))
                if oldest is not None:
                    refused.update(i for i, (ts, _) in enumerate(entries) if ts < oldest)
        ignored = min(count, sum(int(n) for n, _ in IGNORED.findall(text)))
        for i in range(count - 1, -1, -1):  # out of order: Loki does not say which
            if ignored <= 0:
                break
            if i not in refused:
                refused.add(i)
                ignored -= 1
        if not refused:
            raise Refused(why)  # nothing named: narrowed to the record
        return Outcome.per_message([(Fate.REJECT, why) if i in refused else (Fate.ACK, None)
                                    for i in range(count)])


def _entries(body):
    """[(timestamp ns, line)] of a push body, in order; None when it cannot be read."""
    try:
        push = json.loads(body)
        return [(int(ts), line) for stream in push["streams"] for ts, line in stream["values"]]
    except (ValueError, KeyError, TypeError):
        return None


def _rfc3339_ns(text):
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return int(when.timestamp()) * 10**9 + when.microsecond * 1000
