"""ndjson and json_array.

ndjson: the messages as they are, one per line (the one format that never reads them: any
line goes, JSON or not, as logpool receive and line-oriented collectors take it).

json_array: the messages as the elements of one JSON array. A message that is not one strict
JSON value (RFC 8259: a NaN or Infinity literal, invalid UTF-8, a control character or lone
surrogate in a string, nesting deeper than Python's recursion limit, trailing text) would make
the whole body unreadable, so it goes as ``{"message": "<the line>"}`` instead (invalid UTF-8
bytes as U+FFFD); each valid one is passed through byte for byte, checked with the whole batch
in one pass."""
from logpool.transports.formats.common import NOT_JSON, Encoder, Request, joined, utf8_line


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
        import logpool.transports.formats.codec as codec
        array = codec.json_array([bytes(m).rstrip(b"\n") for m in messages])
        if array is not None:  # each one JSON value: the elements as they are
            return Request(self.path, {"Content-Type": self.CONTENT_TYPE}, array)
        check, wrapped = codec.JSON_VALUE.decode, codec.wrapped
        elements = []
        for m in messages:
            line = utf8_line(m)
            try:
                check(line)
            except NOT_JSON:
                line = wrapped(line)
            elements.append(line)
        return Request(self.path, {"Content-Type": self.CONTENT_TYPE},
                       joined(b"[", b",", elements, b"]"))
