"""The elasticsearch http_format (_bulk) against a strict scripted
receiver built from the backend's published API on a real socket: it checks every request
the way the backend would and answers the backend's documented failures."""
import json
import threading
import urllib.parse

from backends import FAST, log_all, numbered
from httppeer import assert_logged, response


# -- Elasticsearch _bulk --------------------------------------------------------------------

class FakeElasticsearch:
    """_bulk as Elasticsearch documents it: NDJSON action/document pairs, each line ending in
    a newline; "create" with an existing _id is a 409 conflict; `item_status(doc)` scripts
    an item's status (None: stored, 201)."""

    def __init__(self, item_status=lambda doc, attempt: None):
        self.item_status = item_status
        self.lock = threading.Lock()
        self.stored = {}  # _id -> doc
        self.order = []  # docs stored, in order
        self.attempts = {}
        self.paths = []

    def __call__(self, request):
        with self.lock:  # (several connections at once: nginx's workers)
            return self._bulk(request)

    def _bulk(self, request):
        assert request.method == "POST"
        assert request.headers["content-type"] == "application/x-ndjson"
        path, _, query = request.path.partition("?")
        assert path.endswith("/_bulk")
        self.paths.append(request.path)
        assert urllib.parse.parse_qs(query)["filter_path"]
        body = request.body
        assert body.endswith(b"\n")
        lines = body.split(b"\n")[:-1]
        assert len(lines) % 2 == 0, "action/document pairs"
        items, errors = [], False
        for action_line, doc_line in zip(lines[0::2], lines[1::2]):
            action = json.loads(action_line)
            assert list(action) == ["create"], action
            meta = action["create"]
            assert set(meta) <= {"_index", "_id", "pipeline"}, meta
            index = meta.get("_index") or path.strip("/").split("/")[0]
            assert index and index != "_bulk", "no index for the document"
            doc = json.loads(doc_line)
            assert isinstance(doc, dict)
            key = doc.get("seq", doc.get("message"))
            self.attempts[key] = self.attempts.get(key, 0) + 1
            status = self.item_status(doc, self.attempts[key])
            doc_id = meta.get("_id") or f"auto-{len(self.stored)}"
            if status is None and doc_id in self.stored:
                status = 409
            if status is None:
                self.stored[doc_id] = (index, meta.get("pipeline"), doc)
                self.order.append(doc)
                items.append({"create": {"status": 201}})
                continue
            errors = True
            error = {"type": {400: "mapper_parsing_exception", 409: "version_conflict_engine_"
                              "exception", 429: "es_rejected_execution_exception"}.get(
                                  status, "error"), "reason": f"scripted {status}"}
            items.append({"create": {"status": status, "error": error}})
        return [response(200, json.dumps({"took": 3, "errors": errors, "items": items}),
                         {"Content-Type": "application/json"})]


def test_elasticsearch_bulk_pairs_with_index_from_the_path_and_pipeline(peer, pools):
    es = FakeElasticsearch()
    server = peer(es)
    pool = pools({"sinks": [{"url": server.url + "/weblogs/_bulk", "http_format":
                             "elasticsearch", "elasticsearch_pipeline": "geoip"}], **FAST})
    log_all(pool, numbered(50) + [b"not json\n"])
    assert [d.get("seq") for d in es.order] == list(range(50)) + [None]
    assert es.order[-1] == {"message": "not json"}  # wrapped, not rejected
    assert {index for index, _, _ in es.stored.values()} == {"weblogs"}
    assert {pipeline for _, pipeline, _ in es.stored.values()} == {"geoip"}
    assert pool.stats(0)["sent_messages"] == 51


def test_elasticsearch_standard_path_and_default_index(peer, pools):
    es = FakeElasticsearch()
    server = peer(es)
    pool = pools({"sinks": [{"url": server.url + "/", "http_format": "elasticsearch"}], **FAST})
    log_all(pool, numbered(3))
    assert es.paths[0].startswith("/_bulk?")
    assert {index for index, _, _ in es.stored.values()} == {"logpool"}


def test_elasticsearch_mixed_item_statuses_retry_429_and_reject_the_rest(peer, pools, capfd):
    # seq 3: a mapping error (400, for good); seq 5: 429 on its first attempt; seq 8: 503
    # twice. A 409 on a create with an _id (elasticsearch_id_field) is taken as
    # acknowledged: the document is there.
    def item_status(doc, attempt):
        seq = doc.get("seq")
        if seq == 3:
            return 400
        if seq == 5 and attempt == 1:
            return 429
        if seq == 8 and attempt <= 2:
            return 503
        return None
    es = FakeElasticsearch(item_status)
    server = peer(es)
    pool = pools({"sinks": [{"url": server.url + "/", "http_format": "elasticsearch",
                             "elasticsearch_id_field": "id"}], **FAST})
    log_all(pool, [json.dumps({"seq": i, "id": f"doc-{i}"}).encode() for i in range(12)])
    stored = sorted(doc["seq"] for doc in es.order)
    assert stored == [i for i in range(12) if i != 3]  # each exactly once
    st = pool.stats(0)
    assert st["dropped_rejected"] == 1 and st["sent_messages"] == 11
    # Item 5 once and item 8 twice were answered "later": sent again, nothing stored.
    assert st["retried_messages"] >= 3
    err = assert_logged(capfd, "mapper_parsing_exception")
    assert "dropped_rejected" in err
