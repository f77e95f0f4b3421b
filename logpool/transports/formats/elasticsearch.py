"""elasticsearch: Elasticsearch / OpenSearch `_bulk` (NDJSON action + document pairs).

URL: ``http://host:9200/`` (then ``/_bulk``), ``.../<index>/_bulk`` (the index from the path)
or any path ending in ``_bulk``. Each document is the message when it is one strict JSON object
(passed through byte for byte, parsed only to check it; one spread over several lines is
re-serialized on one), else ``{"message": "<line>"}`` (invalid UTF-8 bytes as U+FFFD). A
document with a duplicate key goes as it is: Elasticsearch refuses it per item (400), that
record alone. The action is ``create`` (what data streams need); with
``elasticsearch_id_field`` the document's field is its ``_id``, so a retried item is not
indexed twice (its 409 "already exists" counts as acknowledged).

Answer: 200 with ``"errors": false`` acknowledges all; ``"errors": true`` is per item: 2xx
acknowledged, 409 (version conflict) on a ``create`` with an ``_id`` acknowledged (the
document is there: an earlier attempt stored it), 429 and 5xx retried after backoff (those
items alone: the others are released and never sent again, so a retried item arrives after
later ones), any other status refused for good with ES's ``type: reason``. A non-2xx answer
to the whole request follows the generic HTTP rules (a 400 is narrowed to the record).
"""
import json

from logpool.transports.formats.common import (NOT_JSON, Encoder, Fate, Option, Outcome,
                                               ProtocolError, Request, add_query, body_text,
                                               joined, text_option)

# Only what is read back: keeps the answer small (about 30 bytes per item).
FILTER = "filter_path=errors,items.*.status,items.*.error.type,items.*.error.reason"


class Elasticsearch(Encoder):
    NAME = "elasticsearch"
    CONTENT_TYPE = "application/x-ndjson"
    STANDARD_PATH = "/_bulk"
    JSON_NEEDED = True
    OPTIONS = (
        Option("elasticsearch_index", "string or null", None, "index (or data stream) of the "
               "documents", text_option(r"[^\s\"\\/*?<>|,#:]+", "an index name", True),
               default_doc="the index in the URL path (.../<index>/_bulk), else \"logpool\""),
        Option("elasticsearch_pipeline", "string or null", None, "ingest pipeline of the "
               "documents", text_option(r"[^\s\"]+", "a pipeline name", True)),
        Option("elasticsearch_id_field", "string or null", None, "a document field whose "
               "value is its _id (idempotent retries)", text_option(None, "a field name", True)),
    )

    def __init__(self, options, url_path):
        super().__init__(options, url_path)
        base = self.path.partition("?")[0]
        index = options["elasticsearch_index"]
        in_path = base.rstrip("/").rsplit("/", 2)
        if index is None and not (base.endswith("/_bulk") and len(in_path) == 3
                                  and in_path[1]):
            index = "logpool"  # neither in the path nor configured
        self.id_field = options["elasticsearch_id_field"]
        meta = {}
        if index is not None:
            meta["_index"] = index
        if options["elasticsearch_pipeline"] is not None:
            meta["pipeline"] = options["elasticsearch_pipeline"]
        self.meta = meta
        import logpool.transports.formats.codec as codec  # (msgspec: only once a sink is built)
        self.action = (codec.compact({"create": meta}) + "\n").encode()
        # The one field read from a document: its _id (none: the line is only checked).
        self.codec = codec
        self.decoder = (codec.JSON_OBJECT if self.id_field is None else
                        codec.id_decoder(self.id_field))
        self.path = add_query(self.path, FILTER)

    def encode(self, messages, now_ns):
        action, id_field, decoder = self.action, self.id_field, self.decoder
        if id_field is None:
            lines = [bytes(m).rstrip(b"\n") for m in messages]
            if self.codec.json_array(lines, b"{") is not None:  # objects on one line: as they are
                return Request(self.path, {"Content-Type": self.CONTENT_TYPE},
                               joined(action, b"\n" + action, lines, b"\n"))
        out = []
        codec = self.codec
        parse_line, wrapped, one_line = codec.parse_line, codec.wrapped, codec.one_line
        for m in messages:
            line, fields = parse_line(m, decoder)
            if fields is None:
                line = wrapped(line)
            elif line.find(b"\n") >= 0:  # whitespace between tokens: put on one line
                line = one_line(line)
            if id_field is not None and fields is not None and fields.id is not None:
                out.append(self._action_with_id(fields.id))
            else:
                out.append(action)
            out.append(line)
            out.append(b"\n")
        return Request(self.path, {"Content-Type": self.CONTENT_TYPE}, b"".join(out))

    def _action_with_id(self, raw):
        try:
            value = self.codec.ANY.decode(raw)
        except NOT_JSON:  # a number beyond a double: its text
            value = bytes(raw).decode()
        if value is None:
            return self.action
        meta = {**self.meta, "_id": value if isinstance(value, str) else bytes(raw).decode()}
        return self.codec.encode_json({"create": meta}) + b"\n"

    def response_limit(self, count):
        return min(64 * 1024 + 400 * count, 16 << 20)

    def interpret(self, response, request, count):
        if not 200 <= response.status < 300:
            return None
        try:
            answer = json.loads(response.body)
            errors = answer["errors"]
        except (ValueError, KeyError, TypeError):
            raise ProtocolError(f"a _bulk answer that is not JSON with \"errors\": "
                                f"{body_text(response)!r}") from None
        if errors is False:
            return Outcome.acked(count)
        items = answer.get("items")
        if not isinstance(items, list) or len(items) != count:
            raise ProtocolError(f"a _bulk answer with errors and {len(items or ())} items "
                                f"for {count} documents")
        fates = []
        for item in items:
            try:
                ((action, result),) = item.items()
                status = int(result["status"])
            except (ValueError, KeyError, TypeError, AttributeError):
                raise ProtocolError(f"a _bulk item not understood: {item!r:.200}") from None
            error = result.get("error") or {}
            why = (f"{error.get('type', '?')}: {error.get('reason', '')}"
                   if isinstance(error, dict) else str(error))[:300]
            if 200 <= status < 300 or (status == 409 and action == "create"
                                       and self.id_field is not None):
                fates.append((Fate.ACK, None))
            elif status == 429 or status >= 500:
                fates.append((Fate.RETRY, f"Elasticsearch item {status}: {why}"))
            else:
                fates.append((Fate.REJECT, f"Elasticsearch item {status}: {why}"))
        return Outcome.per_message(fates)
