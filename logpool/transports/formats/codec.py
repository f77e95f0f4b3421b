"""The formats' side that uses msgspec (strict JSON and msgpack, in C): reading a message once,
the structs a format decodes a line into or encodes a body from, and the time of a field's JSON
text. Imported by an encoder when it is built, so a pool without HTTP or forward sinks never
loads it (about 2 MiB of a worker's private memory)."""
import itertools
import struct

import msgspec

from logpool.transports.formats.common import (CACHED_KEY, CACHED_TIMES, NOT_JSON, _time_cache,
                                               joined, utf8_line, valid_utf8, value_ns)

# Every format reads a message as parse_line does (its steps inlined in the formats' loops),
# at most once: the bytes without the trailing newline, made valid UTF-8 (an invalid byte
# becomes U+FFFD), and, when the line is one strict JSON object (RFC 8259, checked by msgspec:
# no NaN or Infinity literal, no control character or lone surrogate in a string, nothing
# after the object, nested less deep than Python's recursion limit), the fields the format
# asked for, kept lazily (msgspec.Raw: the value's JSON text, parsed only if used). A line
# that is not such an object is text: the format wraps it or sends it as a string. Numbers
# are passed as written (RFC 8259 leaves their range to the receiver). Nothing here raises.


class Times(msgspec.Struct, gc=False):
    """The time fields of a record (TIME_FIELDS, first wins): their JSON text, or None."""
    at_timestamp: msgspec.Raw = msgspec.field(name="@timestamp", default=None)
    timestamp: msgspec.Raw = None
    time: msgspec.Raw = None
    ts: msgspec.Raw = None


class NoFields(msgspec.Struct, gc=False):
    """A strict JSON object, none of whose fields is wanted (the check alone)."""


TIMES = msgspec.json.Decoder(Times)
JSON_OBJECT = msgspec.json.Decoder(NoFields)
JSON_VALUE = msgspec.json.Decoder(msgspec.Raw)  # any strict JSON value
JSON_VALUES = msgspec.json.Decoder(list[msgspec.Raw])  # an array, each element's text
ANY = msgspec.json.Decoder()
encode_json = msgspec.json.Encoder().encode  # compact, UTF-8, strict (raises on NaN: never fed)
pack_msgpack = msgspec.msgpack.Encoder().encode  # bytes as bin, str as str (use_bin_type)


# -- what the formats decode a line into or encode a body from --------------------------------

class DatadogFields(msgspec.Struct, gc=False):
    """What a Datadog entry needs to know of a message: its time fields and the tags it sets."""
    at_timestamp: msgspec.Raw = msgspec.field(name="@timestamp", default=None)
    timestamp: msgspec.Raw = None
    time: msgspec.Raw = None
    ts: msgspec.Raw = None
    ddsource: msgspec.Raw = None
    service: msgspec.Raw = None
    hostname: msgspec.Raw = None


DATADOG_FIELDS = msgspec.json.Decoder(DatadogFields)


class LokiEntry(msgspec.Struct, array_like=True, gc=False):
    """One of a Loki stream's values: ["<ns>", "<line>"]."""
    ns: str
    line: str


class OtlpJsonBody(msgspec.Struct, gc=False):
    stringValue: str  # noqa: N815 — OTLP's JSON names


class OtlpJsonRecord(msgspec.Struct, gc=False):
    """A LogRecord in OTLP's JSON mapping (what the encoder sets)."""
    timeUnixNano: str  # noqa: N815
    observedTimeUnixNano: str  # noqa: N815
    body: OtlpJsonBody


def id_decoder(field):
    """A decoder of a JSON object's `field` (msgspec.Raw as IdField.id, or None)."""
    return msgspec.json.Decoder(msgspec.defstruct("IdField", [("id", msgspec.Raw, None)],
                                                  rename={"id": field}))


def event_time(ns):
    """Fluent's EventTime: msgpack ext type 0, seconds and nanoseconds, big-endian (ns within
    record time's range: the seconds fit 32 bits)."""
    return msgspec.msgpack.Ext(0, struct.pack(">II", ns // 10**9, ns % 10**9))


# -- reading a message -------------------------------------------------------------------------


def parse_line(message, decoder=TIMES):
    """(line, fields): the message as valid UTF-8 without its trailing newline, and `decoder`'s
    struct of its fields when it is one strict JSON object, else None. (The formats' loops
    inline these steps: this is their reference.)"""
    line = utf8_line(message)
    if line[:1] != b"{":
        return line, None
    try:
        return line, decoder.decode(line)
    except NOT_JSON:
        return line, None


def json_array(lines, element=None):
    """The lines (bytes, no trailing newline) joined as a JSON array when each one alone is a
    strict JSON value (starting with element, e.g. b"{": an object) in valid UTF-8 with no
    newline inside, else None. Checked in one pass over the batch, then each element's length
    compared with its line's: they match only when every line is exactly one value (a comma
    inside a line would split it, and the elements fill the array with nothing between
    them)."""
    array = joined(b"[", b",", lines, b"]")
    if not array.isascii():
        try:
            array.decode()
        except UnicodeDecodeError:
            return None
    try:
        elements = JSON_VALUES.decode(array)
    except NOT_JSON:
        return None
    if (len(elements) != len(lines) or list(map(len, elements)) != list(map(len, lines))
            or array.find(b"\n") >= 0 or element is not None and not all(
                map(bytes.startswith, lines, itertools.repeat(element)))):
        return None
    return array


def wrapped(line):
    """{"message": <the line>} as JSON bytes (line: valid UTF-8)."""
    return b'{"message":' + encode_json(line.decode()) + b"}"


def one_line(line):
    """A JSON object line spread over several lines (whitespace between tokens), re-serialized
    on one; one that Python cannot hold (a number beyond a double) wrapped as text."""
    try:
        return encode_json(ANY.decode(line))
    except NOT_JSON:
        return wrapped(line)


def as_object(message):
    """(dict or None, text): the message as a JSON object if it is one (strict JSON), and as
    text (valid UTF-8)."""
    line = utf8_line(message)
    doc = None
    if line[:1] == b"{":
        try:
            doc = ANY.decode(line)
        except NOT_JSON:
            pass
    return (doc if type(doc) is dict else None), line.decode()


def raw_ns(raw):
    """A time field's JSON text (msgspec.Raw) -> ns, or None."""
    key = bytes(raw)
    try:
        return _time_cache[key]
    except KeyError:
        pass
    try:
        ns = value_ns(ANY.decode(key))
    except NOT_JSON:
        ns = None
    if len(key) <= CACHED_KEY:
        if len(_time_cache) > CACHED_TIMES:
            _time_cache.clear()
        _time_cache[key] = ns
    return ns


def fields_time_ns(fields, fallback_ns):
    """The record time from a Times-like struct (parse_line's fields, or None)."""
    if fields is not None:
        for raw in (fields.at_timestamp, fields.timestamp, fields.time, fields.ts):
            if raw is not None:
                ns = raw_ns(raw)
                if ns is not None:
                    return ns
    return fallback_ns


def document(message):
    """The message as a JSON object: itself, or {"message": text} (wrapped)."""
    doc, text = as_object(message)
    return doc if doc is not None else {"message": text}


def compact(doc):
    """doc as compact JSON text (strict: doc holds no NaN)."""
    return encode_json(doc).decode()


class TimeText:
    """A format's rendering of record times (render(ns): e.g. Loki's decimal string), memoized
    by the time field's JSON text (log lines repeat their second). The formats' loops look up
    ``cache.get(bytes(first present time field))`` themselves and call the object on a miss."""

    def __init__(self, render):
        self.render, self.cache = render, {}

    def __call__(self, fields, fallback):
        """The rendering of the record time of `fields` (a Times-like struct), or fallback."""
        raw = fields.at_timestamp or fields.timestamp or fields.time or fields.ts
        if raw is None:
            return fallback
        ns = raw_ns(raw)
        if ns is not None:
            text = self.render(ns)
            if len(raw) <= CACHED_KEY:
                if len(self.cache) > CACHED_TIMES:
                    self.cache.clear()
                self.cache[bytes(raw)] = text
            return text
        ns = fields_time_ns(fields, None)  # the first field is no time: the others
        return fallback if ns is None else self.render(ns)

    def lines(self, messages, fallback):
        """Every format's read of a message, in one place (a generator: cheaper per line
        than a call): (the line without its newline, valid UTF-8; its record time rendered,
        or fallback; its time fields, or None when it is not one strict JSON object)."""
        decode, cache = TIMES.decode, self.cache
        for m in messages:
            line = bytes(m).rstrip(b"\n")
            if not line.isascii():
                line = valid_utf8(line)
            when, fields = fallback, None
            if line[:1] == b"{":
                try:
                    fields = decode(line)
                except NOT_JSON:
                    pass
                else:
                    raw = fields.at_timestamp or fields.timestamp or fields.time or fields.ts
                    if raw is not None:
                        when = cache.get(bytes(raw)) or self(fields, fallback)
            yield line, when, fields
