"""datadog: Datadog's logs intake v2 (``POST /api/v2/logs``, a JSON array). The API key goes
in http_headers: ``{"DD-API-KEY": "<key>"}``; the URL names the site, e.g.
``https://http-intake.logs.datadoghq.com/``.

Each entry is the message when it is a JSON object, else ``{"message": "<line>"}``, with
``ddsource`` (``datadog_source``, default "nginx"), ``service`` (``datadog_service``, default
"logpool"), ``hostname`` (``datadog_hostname``, default this host's name) unless the message
sets them, and ``timestamp`` (milliseconds, the record time) unless it has one. The members
are appended to the message's own text (it is parsed only to check it and read those fields).
A message whose own ``timestamp`` is out of range or not a time gets the batch's time, its
original value kept as ``original_timestamp``; a record time out of range elsewhere also
becomes the batch's time. At most 1000 entries per request (the intake's limit).

Answer, by the intake's published statuses (the generic HTTP rules): 202 (any 2xx)
acknowledges; 400 (a payload it cannot take) is narrowed down to the record, rejected with
the intake's answer; 401 and 403 (the API key) keep the data, logged once, retried on the
schedule; 408, 429, 500, 502, 503, 504 are retried after backoff honouring Retry-After; 413
halves the request (a single entry answered 413 is rejected).
"""
import itertools
import socket

from logpool.transports.formats.common import (NOT_JSON, Encoder, Option, Request,
                                               batch_time, joined, text_option, valid_utf8)


class Datadog(Encoder):
    NAME = "datadog"
    STANDARD_PATH = "/api/v2/logs"
    MAX_MESSAGES = 1000
    JSON_NEEDED = True
    OPTIONS = (
        Option("datadog_service", "string", "logpool", "the service attribute",
               text_option(None, "a string")),
        Option("datadog_source", "string", "nginx", "the ddsource attribute",
               text_option(None, "a string")),
        Option("datadog_hostname", "string or null", None, "the hostname attribute",
               text_option(None, "a string", True), default_doc="this host's name"),
    )

    def __init__(self, options, url_path):
        super().__init__(options, url_path)
        import logpool.transports.formats.codec as codec
        self.codec = codec
        self.tags = {"ddsource": options["datadog_source"] or "nginx",
                     "service": options["datadog_service"] or "logpool",
                     "hostname": options["datadog_hostname"] or socket.gethostname()}
        # The tags a message lacks -> the JSON members to add, for each of the 8 cases.
        self.tail = {}  # each starting with a comma, or empty
        for lacking in itertools.product((False, True), repeat=3):
            members = {k: v for (k, v), add in zip(self.tags.items(), lacking) if add}
            self.tail[lacking] = b"," + codec.encode_json(members)[1:-1] if members else b""
        self.all_tags = self.tail[True, True, True]
        # the record time as the entry's last member, closing it
        self.times = codec.TimeText(lambda ns: b',"timestamp":%d}' % (ns // 1_000_000))

    def encode(self, messages, now_ns):
        fallback_ms = batch_time(now_ns) // 1_000_000
        fallback = b',"timestamp":%d}' % fallback_ms
        codec = self.codec
        decode, cache, times, tail = (codec.DATADOG_FIELDS.decode, self.times.cache, self.times,
                                      self.tail)
        encode_json, raw_ns = codec.encode_json, codec.raw_ns
        parts = []
        for m in messages:
            line = bytes(m).rstrip(b"\n")
            if not line.isascii():
                line = valid_utf8(line)
            fields = None
            if line[:1] == b"{":
                try:
                    fields = decode(line)
                except NOT_JSON:
                    pass
            if fields is None:
                parts += (b'{"message":', encode_json(line.decode()), self.all_tags, fallback,
                          b",")
                continue
            if fields.timestamp is not None:
                if raw_ns(fields.timestamp) is None:  # its own, and not a time: replaced
                    parts += (self._replace_timestamp(line, fallback_ms), b",")
                    continue
                end = b"}"
            else:
                end = fallback
                raw = fields.at_timestamp or fields.time or fields.ts
                if raw is not None:
                    end = cache.get(bytes(raw)) or times(fields, fallback)
            members = tail[fields.ddsource is None, fields.service is None,
                           fields.hostname is None]
            close = line.rindex(b"}")
            if end == b"}" and not members:
                parts += (line, b",")
            elif close < 16 and not line[1:close].strip():  # {}: no comma after the brace
                parts += (b"{", (members + end)[1:], b",")
            else:
                parts += (line[:close], members, end, b",")
        parts[-1] = b"]"
        return Request(self.path, {"Content-Type": self.CONTENT_TYPE}, joined(b"[", b"", parts,
                                                                               b""))

    def _replace_timestamp(self, line, fallback_ms):
        """A message whose own timestamp is not a time Datadog takes (out of range, not a
        time): the batch's time, the original kept as original_timestamp."""
        try:
            entry = self.codec.ANY.decode(line)
        except NOT_JSON:  # a number beyond a double elsewhere in it: the line as text
            entry = {"message": line.decode()}
        entry["original_timestamp"] = entry.pop("timestamp", None)
        entry["timestamp"] = fallback_ms
        for key, value in self.tags.items():
            entry.setdefault(key, value)
        return self.codec.encode_json(entry)
