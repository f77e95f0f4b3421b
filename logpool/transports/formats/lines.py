"""ndjson and json_array: the messages themselves, one per line or as a JSON array (the
messages are sent as they are: the caller makes them JSON)."""
from logpool.transports.formats.common import Encoder, Request


class Ndjson(Encoder):
    NAME = "ndjson"
    CONTENT_TYPE = "application/x-ndjson"

    def encode(self, messages, now_ns):
        body = b"".join(m if m.endswith(b"\n") else m + b"\n" for m in map(bytes, messages))
        return Request(self.path, {"Content-Type": self.CONTENT_TYPE}, body)


class JsonArray(Encoder):
    NAME = "json_array"
    CONTENT_TYPE = "application/json"

    def encode(self, messages, now_ns):
        body = b"[" + b",".join(bytes(m).rstrip(b"\n") for m in messages) + b"]"
        return Request(self.path, {"Content-Type": self.CONTENT_TYPE}, body)
