"""splunk_hec: Splunk's HTTP Event Collector (``POST /services/collector/event``, or
``/services/collector/raw`` with ``splunk_hec_endpoint`` raw). The token goes in
http_headers: ``{"Authorization": "Splunk <token>"}``.

event: one envelope per message, ``{"time": <record time, seconds>, "event": <the message
as JSON when it is a JSON object, passed through byte for byte, else the line as a string>}``,
one per line; raw: the lines, newline-separated. A record whose time field is out of range or
not a time gets the batch's time (the event keeps the original value). A blank message (empty
or whitespace) is not sent: HEC refuses a blank event (code 13) and drops every event after it
in the request, so the encoder rejects that message alone (Request.rejected).

Answer: 200 with ``"code": 0`` acknowledges; ``"code": 9`` (server busy) retries; 400, 401
and 403 about the configuration (a bad token, a disabled input, a wrong index, a channel:
codes 1-4, 7, 10, 11, 14, 16, or no code) keep the data, logged once, retried on the schedule.
A 400 about the data (codes 5, 6, 12, 13, 15: invalid format, a blank event) names the event
with ``invalid-event-number``: HEC took the events before it, refused it, and did not
process the rest, so those are acknowledged, that one is refused for good
(dropped_rejected) and the rest sent again at once.
"""
import json

from logpool.transports.formats.common import (ACK, NOT_JSON, REJECT, RETRY, Answer, Encoder,
                                               Option, Rejections, Request,
                                               batch_time, body_text, choice_option, joined,
                                               valid_utf8)

PATHS = {"event": "/services/collector/event", "raw": "/services/collector/raw"}
DATA_CODES = (5, 6, 12, 13, 15)  # no data, invalid format, event required/blank, fields
BLANK = "a blank event (Splunk HEC refuses it: code 13, and processes nothing after it)"


def _seconds(ns):
    """The envelope up to the event, after the newline ending the one before it:
    {"time":<seconds, to the millisecond>,"event":"""
    return b'\n{"time":%d.%03d,"event":' % (ns // 10**9, ns // 10**6 % 1000)


class SplunkHec(Encoder):
    NAME = "splunk_hec"
    OPTIONS = (
        Option("splunk_hec_endpoint", "string", "event", "event (JSON envelopes) or raw "
               "(lines)", choice_option("event", "raw")),
    )

    def __init__(self, options, url_path):
        self.STANDARD_PATH = PATHS[options["splunk_hec_endpoint"]]
        super().__init__(options, url_path)
        self.raw = options["splunk_hec_endpoint"] == "raw"
        self.times = None  # codec.TimeText, made by the first encode (codec loads msgspec)

    def encode(self, messages, now_ns):
        if self.raw:
            body = b"".join(m if m.endswith(b"\n") else m + b"\n" for m in map(bytes, messages))
            return Request(self.path, {"Content-Type": "text/plain"}, body)
        import logpool.transports.formats.codec as codec
        if self.times is None:
            self.times = codec.TimeText(_seconds)
        out, rejected = [], Rejections()
        fallback = _seconds(batch_time(now_ns))
        decode, cache, times = codec.TIMES.decode, self.times.cache, self.times
        for i, m in enumerate(messages):
            line = bytes(m).rstrip(b"\n")
            if not line.isascii():
                line = valid_utf8(line)
            head, fields = fallback, None
            if line[:1] == b"{":
                try:
                    fields = decode(line)
                except NOT_JSON:
                    pass
                else:
                    raw = fields.at_timestamp or fields.timestamp or fields.time or fields.ts
                    if raw is not None:
                        head = cache.get(bytes(raw)) or times(fields, fallback)
                    if line.find(b"\n") >= 0:  # one envelope a line
                        line = codec.one_line(line)
            if fields is None:
                if not line.strip():
                    rejected.add(i, BLANK)
                    continue
                line = codec.encode_json(line.decode())
            out += (head, line, b"}")
        if out:
            out[0] = out[0][1:]  # (each head starts with the newline ending the one before)
        body = joined(b"", b"", out, b"\n") if out else b""
        return Request(self.path, {"Content-Type": self.CONTENT_TYPE}, body, rejected.result())

    def interpret(self, response, count):
        code, answer = None, {}
        try:
            answer = json.loads(response.body)
            code = answer.get("code")
        except (ValueError, AttributeError):
            answer = {}
        bad = answer.get("invalid-event-number")
        if (response.status == 400 and code in DATA_CODES and isinstance(bad, int)
                and not isinstance(bad, bool) and 0 <= bad < count):
            why = f"HEC 400 code {code}: {str(answer.get('text', ''))[:200]!r} (event {bad})"
            return Answer("items", why, backoff=False, fates=[(ACK, "")] * bad + [
                (REJECT, why)] + [(RETRY, "not processed after a refused event")] * (
                    count - bad - 1))
        if response.status in (400, 401, 403):
            return Answer("keep", f"HEC {response.status}: {body_text(response)!r} (a token, "
                          f"index or input setting; the data is kept)")
        if code == 9:
            return Answer("retry", f"HEC server busy (code 9): {body_text(response)!r}")
        if 200 <= response.status < 300:
            if code == 0:
                return Answer("ok")
            return Answer("error", f"an HEC answer without code 0: {body_text(response)!r}")
        return None
