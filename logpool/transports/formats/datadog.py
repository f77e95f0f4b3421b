"""datadog: Datadog's logs intake v2 (``POST /api/v2/logs``, a JSON array). The API key goes
in http_headers: ``{"DD-API-KEY": "<key>"}``; the URL names the site, e.g.
``https://http-intake.logs.datadoghq.com/``.

Each entry is the message when it is a JSON object, else ``{"message": "<line>"}``, with
``ddsource`` (``datadog_source``, default "nginx"), ``service`` (``datadog_service``, default
"logpool"), ``hostname`` (``datadog_hostname``, default this host's name) unless the message
sets them, and ``timestamp`` (milliseconds, the record time) unless it has one. At most 1000
entries per request (the intake's limit).

Answer, by the intake's published statuses (the generic HTTP rules): 202 (any 2xx)
acknowledges; 400 (a payload it cannot take) is narrowed down to the record, rejected with
the intake's answer; 401 and 403 (the API key) keep the data, logged once, retried on the
schedule; 408, 429, 500, 502, 503, 504 are retried after backoff honouring Retry-After; 413
halves the request (a single entry answered 413 is rejected).
"""
import socket

from logpool.transports.formats.common import (Encoder, Option, Request, as_object, compact,
                                        record_time_ns, text_option)


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
        self.tags = {"ddsource": options["datadog_source"] or "nginx",
                     "service": options["datadog_service"] or "logpool",
                     "hostname": options["datadog_hostname"] or socket.gethostname()}

    def encode(self, messages, now_ns):
        entries = []
        for m in messages:
            doc, text = as_object(m)
            entry = dict(doc) if doc is not None else {"message": text}
            for key, value in self.tags.items():
                entry.setdefault(key, value)
            if "timestamp" not in entry:
                entry["timestamp"] = record_time_ns(doc, now_ns) // 1_000_000
            entries.append(compact(entry))
        body = ("[" + ",".join(entries) + "]").encode()
        return Request(self.path, {"Content-Type": self.CONTENT_TYPE}, body)
