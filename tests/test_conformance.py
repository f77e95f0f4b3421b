"""The conformance matrix: every transport against scripted hostile collectors
(tests/peers), one cell per (transport, protocol step). The hostile collector is first in
the sink's failover list and a correct one second. Each cell asserts the transport
contract (logpool/transports/contract.py):
- nothing accepted is lost: every message is taken by a collector or counted as dropped;
- duplicates never exceed resent_messages (streams: a message may repeat only where a
  connection broke, and never arrives torn elsewhere);
- a collector that misbehaves at any step of the opening exchange or later loses the
  sink to the next collector: flush returns;
- the error log says what happened once per kind, not once per retry;
- close(t) returns within t plus a small constant while the hostile collector holds the
  connection.
The matrix, as run, is written to docs/guarantees.md by `python tests/test_conformance.py`
(test_the_documented_matrix_is_the_one_that_runs keeps them equal)."""
import collections
import os
import re
import ssl
import sys
import time

import pytest

import logpool
from conftest import message, parse_line, wait_for

import peers

TRANSPORTS = {  # scheme -> protocol of tests/peers, TLS or not
    "tcp": ("stream", False), "tls": ("tls", True), "relp": ("relp", False),
    "relp+tls": ("relp", True), "http": ("http", False), "https": ("http", True),
    "forward": ("forward", False), "forward+tls": ("forward", True),
}
N = 200
CLOSE_SLACK_S = 2.0  # close(t) may take t plus this (the writer's slices, thread joins)
REPORT_LINES_MAX = 6  # log lines per sink in one cell: once per kind, a few kinds


def cells():
    for scheme, (protocol, _) in TRANSPORTS.items():
        for step in peers.PROTOCOLS[protocol][1]:
            yield scheme, step


@pytest.fixture
def tls_server(test_ca):
    cert, key = test_ca.issue("collector")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def sink_url(peer, scheme):
    return peer.url(scheme, "/ingest" if scheme.startswith("http") else "")


def start_peers(scheme, step, tls_server):
    protocol, tls = TRANSPORTS[scheme]
    correct, steps = peers.PROTOCOLS[protocol]
    ctx = tls_server if tls else None
    return peers.Peer(steps[step][0], tls=ctx), peers.Peer(correct, tls=ctx), steps[step][1]


def sink_options(scheme, test_ca):
    opts = {"connect_timeout_ms": 1000, "send_timeout_ms": 1000, "retry_interval_ms": 20,
            "max_retry_interval_ms": 200, "periodic_flush_ms": 50}
    if scheme in ("tcp", "tls"):
        opts["framing"] = "newline"
    if scheme in ("tls", "relp+tls", "https", "forward+tls"):
        opts["ca_file"] = test_ca.ca_file
    return opts


def lines_of(taken):
    """(seq, intact) of each message a peer took."""
    out = []
    for raw in taken:
        line = raw if raw.endswith(b"\n") else raw + b"\n"
        try:
            out.append((parse_line(line)[1], True))
        except AssertionError:
            out.append((None, False))
    return out


@pytest.mark.parametrize("scheme,step", list(cells()))
def test_conformance(scheme, step, tls_server, test_ca, capfd):
    hostile, good, hostile_delivers = start_peers(scheme, step, tls_server)
    pool = None
    try:
        pool = logpool.Pool({"sinks": [{"url": [sink_url(hostile, scheme),
                                                 sink_url(good, scheme)],
                                         "name": "cell"}],
                             **sink_options(scheme, test_ca)})
        # Two batches: a stream learns that a collector went away only at the next one.
        for seq in range(N):
            assert pool.log(0, message(0, seq)) > 0
            if seq == N // 2:
                pool.flush(timeout=30)
                if getattr(hostile.script, "ends_before_second_batch", False):
                    wait_for(lambda: hostile.finished >= 1, what="the hang-up")
        pool.flush(timeout=30)  # raises logpool.Timeout when not everything settled
        st = pool.stats(0)
    finally:
        if pool is not None:
            pool.close(timeout=1)
        hostile.close()
        good.close()
    check_cell(scheme, step, st, hostile, good, hostile_delivers, capfd)


def check_cell(scheme, step, st, hostile, good, hostile_delivers, capfd):
    """The transport contract for one cell, once N messages were logged and flushed; st: the
    sink's stats (in agent mode: the agent's pool's)."""
    got = lines_of(hostile.taken) + lines_of(good.taken)
    if scheme == "tcp":  # a plain stream delivers what reached the collector's kernel
        got += lines_of(hostile.drained) + lines_of(good.drained)
    counts = collections.Counter(seq for seq, intact in got if intact)
    torn = sum(1 for _, intact in got if not intact)
    assert st["accepted_messages"] == N
    assert st["sent_messages"] + st["dropped_rejected"] + st["dropped_unsendable"] == N, st
    assert st["dropped_rejected"] == st["dropped_unsendable"] == 0, st
    missing = sorted(set(range(N)) - set(counts))
    duplicates = sum(c - 1 for c in counts.values())
    if scheme in ("tcp", "tls"):
        # A stream knows nothing past the kernel: what a connection that broke had taken
        # may be lost, as one contiguous run per broken connection; it repeats at most the
        # message a break tore, and nothing arrives torn elsewhere.
        runs = sum(1 for i, seq in enumerate(missing) if i == 0 or missing[i - 1] != seq - 1)
        assert runs <= st["reconnects"], (missing[:20], st)
        assert duplicates <= st["reconnects"], (duplicates, st)
        assert torn <= st["reconnects"], (torn, st)
    else:
        assert not missing, f"lost: {missing[:10]}"
        assert duplicates <= st["resent_messages"], (duplicates, st)
        assert torn == 0
    if hostile_delivers:
        assert good.taken == [] or step == "refuse then accept", "the hostile peer was fine"
    else:
        assert st["connect_failures"] + st["write_errors"] >= 1, st
    reports = [line for line in capfd.readouterr().err.splitlines()
               if "logpool: sink 0 (cell)" in line]
    assert len(reports) <= REPORT_LINES_MAX, "\n".join(reports)


def log_then_close_while_engaged(pool, hostile, timeout=0.5):
    """N messages, then close(timeout) once the writer is at the hostile peer: (what close
    abandoned, how long it took)."""
    for seq in range(N):
        pool.log(0, message(0, seq))
    wait_for(lambda: hostile.connections >= 1, what="the writer reached the hostile peer")
    started = time.monotonic()
    abandoned = pool.close(timeout=timeout)
    return abandoned, time.monotonic() - started


@pytest.mark.parametrize("scheme,step", [(s, st) for s, st in cells()
                                         if not peers.PROTOCOLS[TRANSPORTS[s][0]][1][st][1]])
def test_close_ends_every_wait_on_a_hostile_collector(scheme, step, tls_server, test_ca):
    """The same hostile collector alone: close(t) returns within t plus a small constant
    whatever step the collector hangs in, and says what it abandoned."""
    hostile, good, _ = start_peers(scheme, step, tls_server)
    good.close()
    try:
        opts = {**sink_options(scheme, test_ca), "connect_timeout_ms": 60_000,
                "send_timeout_ms": 60_000}
        pool = logpool.Pool({"sinks": [{"url": sink_url(hostile, scheme), "name": "alone"}],
                             **opts})
        abandoned, took = log_then_close_while_engaged(pool, hostile)
    finally:
        hostile.close()
    assert took < 0.5 + CLOSE_SLACK_S, took
    assert abandoned >= 0


# Kafka has no failover list (one URL names every bootstrap broker) and acknowledges through
# librdkafka: a broker that misbehaves is played by the same scripted peers, alone.
KAFKA_STEPS = {
    "never answer": lambda c: c.hang(),
    "close mid-reply": peers.close_after_first_request,
    "answer garbage": peers.garbage_after_first_request,
}


def kafka_cells():
    return [("kafka", step) for step in KAFKA_STEPS]


@pytest.mark.parametrize("step", list(KAFKA_STEPS))
def test_a_kafka_broker_that_misbehaves_costs_a_bounded_wait(step, capfd):
    """A bootstrap broker that hangs, closes mid-reply or answers garbage: a counted connect
    failure, nothing lost (abandoned at close and counted), close(t) within t plus a small
    constant even with a long connect_timeout_ms, one log line per kind."""
    hostile = peers.Peer(KAFKA_STEPS[step])
    try:
        pool = logpool.Pool({"sinks": [{"url": f"kafka://127.0.0.1:{hostile.port}/t",
                                        "name": "broker"}],
                             "connect_timeout_ms": 60_000, "retry_interval_ms": 20,
                             "max_retry_interval_ms": 200})
        abandoned, took = log_then_close_while_engaged(pool, hostile)
        st = pool.stats(0)
    finally:
        hostile.close()
    assert took < 0.5 + CLOSE_SLACK_S, took
    assert abandoned == N and st["sent_messages"] == 0 and st["accepted_messages"] == N, st
    reports = [line for line in capfd.readouterr().err.splitlines() if "(broker)" in line]
    assert len(reports) <= REPORT_LINES_MAX, "\n".join(reports)


def render_matrix(results):
    schemes = list(TRANSPORTS) + ["kafka"]
    steps = sorted({step for _, (proto, _) in TRANSPORTS.items()
                    for step in peers.PROTOCOLS[proto][1]} | set(KAFKA_STEPS))
    head = "| step | " + " | ".join(schemes) + " |"
    rows = [head, "|" + "---|" * (len(schemes) + 1)]
    for step in steps:
        rows.append(f"| {step} | " + " | ".join(results.get((s, step), "–") for s in schemes)
                    + " |")
    return "\n".join(rows)


MATRIX_START = "<!-- conformance matrix: generated by python tests/test_conformance.py -->"
MATRIX_END = "<!-- end of the conformance matrix -->"
GUARANTEES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                          "guarantees.md")


def documented_matrix():
    text = open(GUARANTEES, encoding="utf-8").read()
    m = re.search(re.escape(MATRIX_START) + r"\n(.*?)\n" + re.escape(MATRIX_END), text, re.S)
    return text, m


def test_the_documented_matrix_is_the_one_that_runs():
    """docs/guarantees.md lists every cell this module runs ("pass" is what CI checks: a
    failing cell fails the suite)."""
    _, m = documented_matrix()
    assert m is not None, "docs/guarantees.md has no conformance matrix"
    expected = render_matrix({**{cell: "pass" for cell in cells()},
                              **{cell: "pass (alone)" for cell in kafka_cells()}})
    assert m.group(1) == expected, "regenerate: python tests/test_conformance.py"


if __name__ == "__main__":  # rewrite the matrix in docs/guarantees.md
    text, m = documented_matrix()
    table = render_matrix({**{cell: "pass" for cell in cells()},
                           **{cell: "pass (alone)" for cell in kafka_cells()}})
    block = f"{MATRIX_START}\n{table}\n{MATRIX_END}"
    text = text[:m.start()] + block + text[m.end():] if m else text.rstrip() + "\n\n" + block + "\n"
    open(GUARANTEES, "w", encoding="utf-8").write(text)
    sys.exit(0)
