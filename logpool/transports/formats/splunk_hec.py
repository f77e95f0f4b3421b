"""splunk_hec: Splunk's HTTP Event Collector (``POST /services/collector/event``, or
``/services/collector/raw`` with ``splunk_hec_endpoint`` raw). The token goes in
http_headers: ``{"Authorization": "Splunk <token>"}``.

event: one envelope per message, ``{"time": <record time, seconds>, "event": <the message
as JSON when it is a JSON object, passed through byte for byte, else the line as a string>}``,
one per line; raw: the lines, newline-separated. A record whose time field is out of range or
not a time gets the batch's time (the event keeps the original value). A blank message (empty
or whitespace) is not sent: HEC refuses a blank event (code 13) and drops every event after it
in the request, so the encoder rejects that message alone (Request.rejected).

Answer, by Splunk's published HEC status codes:

- 200 ``"code": 0`` acknowledges; with ``splunk_hec_ack`` (indexer acknowledgement, the
  token's useACK) it only means received: every request carries the sink's channel
  (``X-Splunk-Request-Channel``), and its events are released once
  ``/services/collector/ack`` says the answer's ``ackId`` is indexed (polled from 50 ms,
  doubling to 1 s, for at most ``splunk_hec_ack_timeout_ms``; then the events are sent
  again, counted in resent_messages; close() ends the wait);
- code 9 (server busy, 503) and code 8 (internal error, 500), and any 5xx: retried after
  backoff honouring Retry-After;
- codes about the configuration (1 token disabled, 2 token required, 3 invalid
  authorization, 4 invalid token, 7 incorrect index, 10 data channel missing, 11 invalid
  data channel, 14 ACK disabled, 16 query string authorization not enabled; any 401/403):
  the data is kept, logged once, sent again on the retry schedule;
- codes about the data (5 no data, 6 invalid data format, 12 event field required, 13 event
  blank, 15 error in handling indexed fields): with ``invalid-event-number`` HEC took the
  events before it, refused that one (rejected with HEC's text) and did not process the
  rest (sent again); without it the request is narrowed to the record.
"""
import json
import uuid

from logpool.transports.formats.common import (Encoder, Fate, Misconfigured, Option, Outcome,
                                               ProtocolError, Refused, Rejections, Request,
                                               RetryLater, Unconfirmed, add_query, batch_time,
                                               body_text, choice_option, joined)
from logpool.transports.schema import int_range

PATHS = {"event": "/services/collector/event", "raw": "/services/collector/raw"}
ACK_PATH = "/services/collector/ack"
DATA_CODES = (5, 6, 12, 13, 15)  # no data, invalid format, event required/blank, fields
BLANK = "a blank event (Splunk HEC refuses it: code 13, and processes nothing after it)"


def _seconds(ns):
    """The envelope up to the event, after the newline ending the one before it:
    {"time":<seconds, to the millisecond>,"event":"""
    return b'\n{"time":%d.%03d,"event":' % (ns // 10**9, ns // 10**6 % 1000)

CONFIG_CODES = (1, 2, 3, 4, 7, 10, 11, 14, 16)  # tokens, index, channel, ACK, query auth
BUSY_CODES = (8, 9)  # internal error, server busy


class SplunkHec(Encoder):
    NAME = "splunk_hec"
    OPTIONS = (
        Option("splunk_hec_endpoint", "string", "event", "event (JSON envelopes) or raw "
               "(lines)", choice_option("event", "raw")),
        Option("splunk_hec_ack", "boolean", False, "indexer acknowledgement (the token's "
               "useACK): events are released once HEC says they are indexed"),
        Option("splunk_hec_ack_timeout_ms", "integer", 30000, "how long to wait for an "
               "indexer acknowledgement before the events are sent again",
               int_range(100, 3600 * 1000)),
    )

    def __init__(self, options, url_path):
        self.STANDARD_PATH = PATHS[options["splunk_hec_endpoint"]]
        super().__init__(options, url_path)
        self.raw = options["splunk_hec_endpoint"] == "raw"
        self.times = None  # codec.TimeText, made by the first encode (codec loads msgspec)
        self.use_ack = bool(options["splunk_hec_ack"])
        self.confirm_timeout_s = options["splunk_hec_ack_timeout_ms"] / 1000
        self.channel = str(uuid.uuid4())  # one per sink (HEC keeps ack ids per channel)
        self.headers = {"X-Splunk-Request-Channel": self.channel} if self.use_ack else {}
        base, sep, query = url_path.partition("?")
        prefix = base[:base.index("/services/collector")] if "/services/collector" in base else ""
        self.ack_path = add_query(prefix + ACK_PATH + sep + query, "channel=" + self.channel)

    def encode(self, messages, now_ns):
        if self.raw:
            body = b"".join(m if m.endswith(b"\n") else m + b"\n" for m in map(bytes, messages))
            return Request(self.path, {"Content-Type": "text/plain", **self.headers}, body)
        import logpool.transports.formats.codec as codec
        if self.times is None:
            self.times = codec.TimeText(_seconds)
        out, rejected = [], Rejections()
        fallback = _seconds(batch_time(now_ns))
        for i, (line, head, fields) in enumerate(self.times.lines(messages, fallback)):
            if fields is not None and line.find(b"\n") >= 0:  # one envelope a line
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
        return Request(self.path, {"Content-Type": self.CONTENT_TYPE, **self.headers}, body,
                       rejected.result())

    def interpret(self, response, request, count):
        try:
            answer = json.loads(response.body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            answer = {}
        code = answer.get("code")
        why = f"HEC {response.status} code {code}: {str(answer.get('text', ''))[:200]!r}"
        if 200 <= response.status < 300:
            if code != 0:
                raise ProtocolError(f"an HEC answer without code 0: {body_text(response)!r}")
            ack_id = answer.get("ackId")
            if self.use_ack and isinstance(ack_id, int) and not isinstance(ack_id, bool):
                raise Unconfirmed(ack_id)
            # (With splunk_hec_ack and no ackId, the token has useACK off: code 0 is all
            # HEC will ever say, taken as delivered.)
            return Outcome.acked(count)
        if code in BUSY_CODES or response.status >= 500:
            raise RetryLater(why)
        bad = answer.get("invalid-event-number")
        if code in DATA_CODES:
            if isinstance(bad, int) and not isinstance(bad, bool) and 0 <= bad < count:
                why = f"{why} (event {bad})"
                return Outcome.per_message(
                    [(Fate.ACK, None)] * bad + [(Fate.REJECT, why)]
                    + [(Fate.RETRY, "not processed after a refused event")] * (count - bad - 1))
            raise Refused(why)
        if code in CONFIG_CODES or response.status in (400, 401, 403):
            raise Misconfigured(f"{why} (a token, index, channel or input setting)")
        return None

    def confirm_request(self, ack_id):
        """The poll for one ackId on the sink's channel."""
        return Request(self.ack_path, {"Content-Type": self.CONTENT_TYPE, **self.headers},
                       json.dumps({"acks": [ack_id]}, separators=(",", ":")).encode())

    def confirmed(self, response, ack_id):
        """True once the poll's answer says ack_id is indexed."""
        if not 200 <= response.status < 300:
            if response.status in (400, 401, 403):
                raise Misconfigured(f"HEC ack poll {response.status}: "
                                    f"{body_text(response)!r}")
            raise RetryLater(f"HEC ack poll {response.status}: {body_text(response)!r}")
        try:
            acks = json.loads(response.body)["acks"]
            return acks.get(str(ack_id)) is True
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ProtocolError(f"an HEC ack answer not understood: "
                                f"{body_text(response)!r}") from None
