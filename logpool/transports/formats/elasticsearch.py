"""elasticsearch: Elasticsearch / OpenSearch `_bulk` (NDJSON action + document pairs).

URL: ``http://host:9200/`` (then ``/_bulk``), ``.../<index>/_bulk`` (the index from the path)
or any path ending in ``_bulk``. Each document is the message when it is a JSON object, else
``{"message": "<line>"}``. The action is ``create`` (what data streams need); with
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

from logpool.transports.formats.common import (Encoder, Fate, Option, Outcome, ProtocolError,
                                               Request, add_query, as_object, body_text,
                                               compact, text_option)

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
        self.action = (compact({"create": meta}) + "\n").encode()
        self.path = add_query(self.path, FILTER)

    def encode(self, messages, now_ns):
        out = []
        for m in messages:
            doc, text = as_object(m)
            if doc is None:
                doc, line = {"message": text}, None
            else:
                line = text if "\n" not in text else None
            if self.id_field is not None and doc.get(self.id_field) is not None:
                value = doc[self.id_field]
                meta = {**self.meta, "_id": value if isinstance(value, str) else
                        json.dumps(value)}
                out.append((compact({"create": meta}) + "\n").encode())
            else:
                out.append(self.action)
            out.append((line if line is not None else compact(doc)).encode() + b"\n")
        return Request(self.path, {"Content-Type": self.CONTENT_TYPE}, b"".join(out))

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
