"""Encoding cannot fail a batch: every body format (logpool/transports/formats) and forward's
chunk codec, fed arbitrary bytes and arbitrary JSON (NaN, Infinity, huge integers, deep
nesting, invalid UTF-8, duplicate keys, times before 1970 and after 2106, Go's zero time),
never raises and always produces a body the format's own parser accepts: OTLP through
opentelemetry-proto, forward through msgpack, the JSON formats through a strict JSON parser
(no NaN or Infinity literal, valid UTF-8, no lone surrogate), each with its structure and its
times in range. A record the format cannot carry is rejected alone (Request.rejected)."""
import json
import sys

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2

from logpool.transports import forward
from logpool.transports.base import Fate, Outcome
from logpool.transports.formats import FORMATS
from logpool.transports.formats.codec import fields_time_ns, parse_line
from logpool.transports.formats.common import MAX_NS, record_time_ns
from logpool.transports.http import with_rejections

NOW_NS = 1_764_000_000_123_456_789  # the batch's time
PROPERTY = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
OPTIONS = {o.name: o.default for cls in FORMATS.values() for o in cls.OPTIONS}
CHECKED = ("ndjson", "json_array", "elasticsearch", "loki", "otlp", "otlp_json", "splunk_hec",
           "datadog")  # (clickhouse has its own owner and tests)
# Variants with a key that changes what is read: (format, options)
VARIANTS = [(fmt, {}) for fmt in CHECKED] + [("elasticsearch", {"elasticsearch_id_field": "id"}),
                                            ("splunk_hec", {"splunk_hec_endpoint": "raw"})]


# -- strict parsers ------------------------------------------------------------------------------

def _no_constant(name):
    raise ValueError(f"{name} is not JSON")


def _check_strings(value):
    """Every string (and key) is valid Unicode: no lone surrogate from a \\ud800 escape."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            v.encode("utf-8")
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())


def strict_json(data):
    """RFC 8259 JSON text: UTF-8, no NaN/Infinity literals, no lone surrogates."""
    text = data.decode("utf-8")  # strict
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20000))  # as deep as the encoders let through
    try:
        value = json.loads(text, parse_constant=_no_constant)
    finally:
        sys.setrecursionlimit(limit)
    _check_strings(value)
    return value


def is_time_ns(value):
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_NS


def decimal_ns(text):
    assert isinstance(text, str) and text.isdigit() and text == str(int(text)), text
    assert is_time_ns(int(text)), text
    return int(text)


# -- inputs ---------------------------------------------------------------------------------------

TIME_VALUES = st.one_of(
    st.sampled_from(["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "1969-12-31T23:59:59Z",
                     "2106-02-07T06:28:16Z", "2106-02-07T06:28:15Z", "2026-11-23T09:00:00+00:00",
                     "1700000000", "1.7e9", "NaN", "", "20231123", "2026-13-45T99:99:99",
                     "2026-11-23 09:00:00.123", "x" * 100]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([5e9, -1, -1.5, 0, 1e11, 1e14, 1e17, 1e20, 4294967295, 4294967296,
                     2**63, 2**64, 10**30, -(10**30), True, False, None]),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.text(max_size=30),
)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
TIME_KEYS = st.sampled_from(["@timestamp", "timestamp", "time", "ts", "ddsource", "service",
                             "hostname", "message", "id"])


@st.composite
def json_lines(draw):
    """A JSON object line as Python's json writes it (NaN, Infinity allowed), then perhaps
    mangled: a duplicate key, an invalid UTF-8 byte, a lone surrogate escape, whitespace
    and newlines inside, deep nesting, trailing text."""
    doc = draw(st.dictionaries(TIME_KEYS, TIME_VALUES, max_size=4))
    doc.update(draw(st.dictionaries(st.text(max_size=8), VALUES, max_size=4)))
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()),
                      separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])))
    data = text.encode("utf-8", "surrogatepass")
    mangle = draw(st.sampled_from(["none", "duplicate", "utf8", "surrogate", "newlines",
                                   "deep", "trailing", "none", "none"]))
    if mangle == "duplicate" and data != b"{}":
        key = json.dumps(draw(TIME_KEYS)).encode()
        data = b"{" + key + b":1," + key + b":" + data[1:-1].split(b",")[0].split(b":")[-1] \
            + b"," + data[1:]
    elif mangle == "utf8":
        at = draw(st.integers(min_value=0, max_value=len(data)))
        data = data[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80"])) \
            + data[at:]
    elif mangle == "surrogate":
        data = b'{"s":"\\ud800",' + data[1:] if data != b"{}" else b'{"s":"\\udfff"}'
    elif mangle == "newlines":
        data = data.replace(b",", b",\n ").replace(b":", b" :\r\n")
    elif mangle == "deep":
        depth = draw(st.sampled_from([10, 100, 400, 999, 1000, 10_000]))
        data = b'{"d":' + b"[" * depth + b"]" * depth + b"," + data[1:] if data != b"{}" else (
            b'{"d":' + b'{"a":' * depth + b"1" + b"}" * depth + b"}")
    elif mangle == "trailing":
        data += draw(st.sampled_from([b" x", b"}", b",", b"{}", b" \t"]))
    return data + draw(st.sampled_from([b"\n", b"", b"\n\n"]))


SPECIAL = st.sampled_from([
    b"", b"\n", b"   ", b"{", b"{}", b"[]", b"null", b"1", b'"s"', b"NaN", b"[NaN]",
    b'{"time": NaN}', b'{"ts": Infinity}', b'{"ts": -Infinity}', b'{"time": 1e400}',
    b'{"time":"0001-01-01T00:00:00Z"}', b'{"ts": 5e9}', b'{"ts": -1}', b'{"time": true}',
    b'{"ts": "1700000000"}', b'{"timestamp": 123456789012345678901234567890}',
    b'{"a": 123456789012345678901234567890}', b'{"a": -99999999999999999999}',
    b"[" * 10_000 + b"]" * 10_000, b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    b'{"a":1,"a":2}', b'{"time":1,"time":"0001-01-01T00:00:00Z"}', b"\xff\xfe\x00",
    b'{"a":"\xff"}', b'{"a":"\\ud800"}', b'{"a":"x\x01"}', b"\x00", b"{\n}", b'{"a":\n1}\n',
])
MESSAGES = st.one_of(st.binary(max_size=120), json_lines(), SPECIAL)
BATCHES = st.lists(MESSAGES, min_size=1, max_size=8)


# -- what each format's parser must accept -------------------------------------------------------

def check_rejections(request, messages):
    rejected = request.rejected
    indices = [i for i, _ in rejected]
    assert indices == sorted(set(indices)) and all(0 <= i < len(messages) for i in indices)
    assert all(isinstance(why, str) and why for _, why in rejected)
    return len(messages) - len(rejected)


def check_ndjson(body, messages, request):
    assert body == b"".join(m if m.endswith(b"\n") else m + b"\n" for m in messages)


def check_json_array(body, messages, request):
    assert len(strict_json(body)) == len(messages)


def check_elasticsearch(body, messages, request):
    lines = body.split(b"\n")
    assert lines[-1] == b""
    lines = lines[:-1]
    assert len(lines) == 2 * len(messages)  # an action line and a document line each
    for action, doc in zip(lines[0::2], lines[1::2]):
        assert list(strict_json(action)) == ["create"]
        assert isinstance(strict_json(action)["create"].get("_id", ""), str)
        assert isinstance(strict_json(doc), dict)


def check_loki(body, messages, request):
    push = strict_json(body)
    (stream,) = push["streams"]
    assert stream["stream"] == {"job": "logpool"}
    assert len(stream["values"]) == len(messages)
    for ts, line in stream["values"]:
        decimal_ns(ts)
        assert isinstance(line, str)


def check_otlp(body, messages, request):
    parsed = logs_service_pb2.ExportLogsServiceRequest.FromString(body)  # UTF-8 checked too
    (resource_logs,) = parsed.resource_logs
    (scope_logs,) = resource_logs.scope_logs
    assert scope_logs.scope.name == "logpool"
    assert len(scope_logs.log_records) == len(messages)
    for record in scope_logs.log_records:
        assert is_time_ns(record.time_unix_nano) and record.observed_time_unix_nano == NOW_NS
        assert record.body.WhichOneof("value") == "string_value"
    assert parsed.SerializeToString(deterministic=True) == body  # canonical protobuf


def check_otlp_json(body, messages, request):
    parsed = strict_json(body)
    (resource_logs,) = parsed["resourceLogs"]
    (scope_logs,) = resource_logs["scopeLogs"]
    assert len(scope_logs["logRecords"]) == len(messages)
    for record in scope_logs["logRecords"]:
        decimal_ns(record["timeUnixNano"])
        assert decimal_ns(record["observedTimeUnixNano"]) == NOW_NS
        assert isinstance(record["body"]["stringValue"], str)


def check_splunk_hec(body, messages, request):
    sent = check_rejections(request, messages)
    for i, why in request.rejected:  # only what HEC refuses: a blank event
        assert not messages[i].strip() and "blank" in why
    events = [strict_json(line) for line in body.split(b"\n")[:-1]] if body else []
    assert len(events) == sent
    for event in events:
        assert set(event) == {"time", "event"}
        assert isinstance(event["time"], float) and 0 <= event["time"] <= MAX_NS / 1e9
        assert event["event"] != ""


def check_datadog(body, messages, request):
    entries = strict_json(body)
    assert len(entries) == len(messages)
    for entry in entries:
        assert {"ddsource", "service", "hostname", "timestamp"} <= set(entry)


CHECKS = {name: globals()["check_" + name] for name in CHECKED}


@pytest.mark.parametrize("fmt, options", VARIANTS,
                         ids=[fmt + "".join(f"-{v}" for v in o.values()) for fmt, o in VARIANTS])
@PROPERTY
@given(messages=BATCHES)
@example(messages=[b"x" * (1 << 20)])  # a 1 MiB line
@example(messages=[b'{"message":"' + b"x" * (1 << 20) + b'","ts":5e9}'])
@example(messages=[b'{"id": 1e400}', b'{"id": [1, {"a": null}]}', b'{"id": null}'])
def test_an_encoder_never_raises_and_its_body_parses(fmt, options, messages):
    encoder = FORMATS[fmt]({**OPTIONS, **options}, "/")
    request = encoder.encode([bytearray(m) for m in messages], NOW_NS)  # any buffer
    if fmt != "splunk_hec" or options:
        assert request.rejected == ()  # each has a fallback for everything
    if options.get("splunk_hec_endpoint") == "raw":
        check_ndjson(request.body, messages, request)  # the lines as they are
    else:
        CHECKS[fmt](request.body, messages, request)
    assert encoder.encode(messages, NOW_NS) == request  # pure: a retry is byte-identical


@PROPERTY
@given(messages=BATCHES)
@example(messages=[b"x" * (1 << 20)])
def test_forward_chunks_unpack_with_event_times_in_range(messages):
    chunk = forward.encode_chunk("app.tag", messages, "Y2h1bms=", NOW_NS)
    tag, entries, option = msgpack.unpackb(chunk, raw=False, strict_map_key=False)
    assert tag == "app.tag" and option == {"size": len(messages), "chunk": "Y2h1bms="}
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=64 << 20)
    unpacker.feed(entries)
    pairs = list(unpacker)
    assert len(pairs) == len(messages)
    for when, record in pairs:
        assert isinstance(when, msgpack.ExtType) and when.code == 0 and len(when.data) == 8
        seconds, nanos = int.from_bytes(when.data[:4], "big"), int.from_bytes(when.data[4:],
                                                                                "big")
        assert nanos < 10**9 and is_time_ns(seconds * 10**9 + nanos)
        assert isinstance(record, dict)  # a map (maybe empty: {} is a JSON object)
    assert forward.encode_chunk("app.tag", messages, "Y2h1bms=", NOW_NS) == chunk


# -- the documented fallbacks --------------------------------------------------------------------

@pytest.mark.parametrize("value, ns", [
    ('"0001-01-01T00:00:00Z"', None),  # Go's zero time
    ("NaN", None), ("1e400", None), ("-1", None), ('"1969-12-31T23:59:59Z"', None),
    ('"2106-02-07T06:28:16Z"', None), ("5e9", None), ("4294967296", None),
    ("123456789012345678901234567890", None), ("true", None), ("false", None), ("null", None),
    ('"1700000000"', None), ('"not a time"', None), ("[1]", None), ('{"a":1}', None),
    ("1700000000.25", 1_700_000_000_250_000_000),  # seconds ($msec)
    ("1700000000250", 1_700_000_000_250_000_000),  # milliseconds
    ("1700000000250000", 1_700_000_000_250_000_000),  # microseconds
    ("1700000000250000001", 1_700_000_000_250_000_001),  # nanoseconds
    ('"2106-02-07T06:28:15Z"', 4294967295 * 10**9), ('"1970-01-01T00:00:00Z"', 0),
    ('"2026-11-23T09:00:00+01:00"', 1_795_420_800 * 10**9),
    ('"2026-11-23 09:00:00.5"', 1_795_424_400_500_000_000),  # no zone: UTC
])
def test_record_time_in_range_or_the_batch_time(value, ns):
    line, fields = parse_line(b'{"time":' + value.encode() + b"}")
    assert fields_time_ns(fields, NOW_NS) == (NOW_NS if ns is None else ns)
    try:
        doc = json.loads(line)
    except ValueError:
        return
    assert record_time_ns(doc, NOW_NS) == (NOW_NS if ns is None else ns)


def test_the_first_field_with_a_time_in_range_wins():
    line = b'{"@timestamp":"0001-01-01T00:00:00Z","timestamp":NaN,"time":5e9,"ts":1700000000}'
    assert fields_time_ns(parse_line(line)[1], NOW_NS) == NOW_NS  # NaN: not JSON, all of it
    line = b'{"@timestamp":"0001-01-01T00:00:00Z","time":5e9,"ts":1700000000}'
    assert fields_time_ns(parse_line(line)[1], NOW_NS) == 1_700_000_000 * 10**9


GO_ZERO = b'{"time":"0001-01-01T00:00:00Z","msg":"hello"}'


@pytest.mark.parametrize("fmt", ["loki", "otlp_json", "splunk_hec"])
def test_a_time_out_of_range_becomes_the_batch_time_and_the_line_keeps_it(fmt):
    body = FORMATS[fmt](OPTIONS, "/").encode([GO_ZERO], NOW_NS).body
    parsed = strict_json(body)
    if fmt == "loki":
        assert parsed["streams"][0]["values"] == [[str(NOW_NS), GO_ZERO.decode()]]
    elif fmt == "otlp_json":
        record = parsed["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]
        assert record["timeUnixNano"] == str(NOW_NS)
        assert record["body"]["stringValue"] == GO_ZERO.decode()
    else:
        assert parsed == {"time": NOW_NS // 10**6 / 1000, "event": json.loads(GO_ZERO)}


def test_otlp_a_time_out_of_range_becomes_the_batch_time_and_the_body_keeps_it():
    body = FORMATS["otlp"](OPTIONS, "/").encode([GO_ZERO, b'{"ts":1700000000}'], NOW_NS).body
    records = logs_service_pb2.ExportLogsServiceRequest.FromString(body).resource_logs[
        0].scope_logs[0].log_records
    assert [r.time_unix_nano for r in records] == [NOW_NS, 1_700_000_000 * 10**9]
    assert records[0].body.string_value == GO_ZERO.decode()


def test_datadog_replaces_a_timestamp_it_cannot_take_and_keeps_the_original():
    entries = strict_json(FORMATS["datadog"](OPTIONS, "/").encode(
        [b'{"timestamp":"0001-01-01T00:00:00Z","service":"api"}', b'{"ts":5e9}',
         b'{"timestamp":1700000000123}'], NOW_NS).body)
    assert entries[0]["timestamp"] == NOW_NS // 10**6
    assert entries[0]["original_timestamp"] == "0001-01-01T00:00:00Z"
    assert entries[0]["service"] == "api"
    assert entries[1]["timestamp"] == NOW_NS // 10**6 and entries[1]["ts"] == 5e9
    assert entries[2]["timestamp"] == 1700000000123 and "original_timestamp" not in entries[2]


def test_forward_a_time_out_of_range_is_the_chunk_time_and_the_record_keeps_it():
    chunk = forward.encode_chunk("t", [b'{"ts":-1}', b'{"ts":1e400}', b"\xff text"], "c",
                                 NOW_NS)
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(msgpack.unpackb(chunk, raw=False)[1])
    (t1, r1), (t2, r2), (t3, r3) = unpacker
    batch = ((NOW_NS // 10**9).to_bytes(4, "big") + (NOW_NS % 10**9).to_bytes(4, "big"))
    assert t1.data == t2.data == t3.data == batch
    assert r1 == {"ts": -1}
    assert r2 == {"message": '{"ts":1e400}'}  # beyond a double: the line as text
    assert r3 == {"message": "\ufffd text"}


@pytest.mark.parametrize("fmt", ["elasticsearch", "json_array", "datadog", "splunk_hec"])
def test_a_valid_json_object_line_passes_through_byte_for_byte(fmt):
    line = b'{"b": 1,   "a": "caf\xc3\xa9 \\u00e9", "n": 1.50, "time": "2026-11-23T09:00:00Z"}'
    body = FORMATS[fmt](OPTIONS, "/").encode([line + b"\n"], NOW_NS).body
    assert line[:-1] in body  # (datadog appends its members inside the braces)


def test_elasticsearch_a_document_on_several_lines_is_put_on_one():
    body = FORMATS["elasticsearch"](OPTIONS, "/").encode([b'{"a":\n 1,\n"b": [2]}'], NOW_NS)
    assert body.body.split(b"\n")[1] == b'{"a":1,"b":[2]}'


# -- rejections reach the engine as fates at their place ------------------------------------------

def test_with_rejections_puts_each_rejected_message_at_its_place():
    body = Outcome.per_message([(Fate.ACK, None), (Fate.RETRY, "429"), (Fate.ACK, None)])
    out = with_rejections(body, ((0, "blank"), (2, "blank"), (5, "blank")))
    assert out.fates == ((Fate.REJECT, 1, "blank"), (Fate.ACK, 1, None),
                         (Fate.REJECT, 1, "blank"), (Fate.RETRY, 1, "429"),
                         (Fate.ACK, 1, None), (Fate.REJECT, 1, "blank"))
    assert with_rejections(Outcome.NOTHING, ((0, "x"), (1, "x"))).fates == (
        (Fate.REJECT, 2, "x"),)
    assert with_rejections(body, ()) is body


def test_splunk_hec_rejects_a_blank_event_alone():
    request = FORMATS["splunk_hec"](OPTIONS, "/").encode([b"a", b"\n", b" \t", b"b"], NOW_NS)
    assert [i for i, _ in request.rejected] == [1, 2]
    assert [e["event"] for e in map(json.loads, request.body.splitlines())] == ["a", "b"]


@pytest.mark.parametrize("fmt", ["json_array", "elasticsearch", "loki", "otlp_json",
                                 "splunk_hec", "datadog"])
def test_nan_and_infinity_literals_never_reach_a_body(fmt):
    # Python's json takes them; strict parsers and the backends do not: the line goes as text.
    line = b'{"time": NaN, "x": -Infinity}'
    body = FORMATS[fmt](OPTIONS, "/").encode([line], NOW_NS).body
    for part in (body.splitlines() if fmt in ("elasticsearch", "splunk_hec") else [body]):
        strict_json(part)
    assert b"NaN" in body  # (as text, within a string)


def test_the_time_caches_stay_small_whatever_the_lines_hold():
    from logpool.transports.formats import codec, common
    encoder = FORMATS["loki"](OPTIONS, "/")
    for i in range(50):  # long time texts that parse (a float with a long mantissa)
        encoder.encode([b'{"ts":1700000000.' + b"0" * 100_000 + b"%d}" % i], NOW_NS)
    assert all(len(key) <= common.CACHED_KEY for key in encoder.times.cache)
    assert all(len(key) <= common.CACHED_KEY for key in codec._time_cache)
    assert len(common._text_cache) <= common.CACHED_TIMES + 1


def test_msgspec_is_loaded_only_by_a_sink_that_encodes():
    # ~2 MiB of a worker's private memory: a pool without HTTP or forward sinks never pays it.
    import subprocess
    script = (
        "import sys, logpool, logpool.config, logpool.transports\n"
        "cfg = logpool.config.parse({'sinks': [{'url': 'unix:/tmp/x.sock'},"
        " {'url': 'http://h:1/', 'http_format': 'loki'}, {'url': 'forward://h:24224'}]})\n"
        "assert 'msgspec' not in sys.modules, 'loaded by config'\n"
        "from logpool.transports.formats import FORMATS\n"
        "options = {o.name: o.default for c in FORMATS.values() for o in c.OPTIONS}\n"
        "FORMATS['loki'](options, '/').encode([b'{}'], 1)\n"
        "assert 'msgspec' in sys.modules\n")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
