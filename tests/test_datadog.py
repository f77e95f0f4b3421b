"""The datadog http_format (logs intake) against a strict scripted
receiver built from the backend's published API on a real socket: it checks every request
the way the backend would and answers the backend's documented failures."""
import json

from backends import FAST, log_all, numbered
from httppeer import response


# -- Datadog ---------------------------------------------------------------------------------

class FakeDatadog:
    """/api/v2/logs: a JSON array of log objects; 202; 413 above `max_entries` entries."""

    def __init__(self, max_entries=1000):
        self.max_entries = max_entries
        self.entries = []
        self.sizes = []

    def __call__(self, request):
        assert (request.method, request.path) == ("POST", "/api/v2/logs")
        assert request.headers["dd-api-key"] == "k3y"
        entries = json.loads(request.body)
        assert isinstance(entries, list) and all(isinstance(e, dict) for e in entries)
        self.sizes.append(len(entries))
        if len(entries) > self.max_entries:
            return [response(413, '{"errors":["Payload too large"]}')]
        self.entries += entries
        return [response(202, "{}")]


def test_datadog_entries_tags_and_413_split(peer, pools):
    dd = FakeDatadog(max_entries=7)
    server = peer(dd)
    pool = pools({"sinks": [{"url": server.url + "/", "http_format": "datadog",
                             "http_headers": {"DD-API-KEY": "k3y"},
                             "datadog_service": "shop", "datadog_hostname": "web-1"}],
                  **{**FAST, "periodic_flush_ms": 300}})
    log_all(pool, numbered(20, time=1700000000.5) + [b"plain"])
    assert [e.get("seq") for e in dd.entries] == list(range(20)) + [None]
    assert all(e["ddsource"] == "nginx" and e["service"] == "shop" and e["hostname"] == "web-1"
               for e in dd.entries)
    assert dd.entries[0]["timestamp"] == 1_700_000_000_500
    assert dd.entries[-1]["message"] == "plain"
    assert max(dd.sizes) > 7 and pool.stats(0)["dropped_rejected"] == 0
