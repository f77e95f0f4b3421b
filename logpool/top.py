"""`python -m logpool top --metrics-url URL`: a live per-sink view of logpool's metrics, the
way operators watch varnishstat: rates, drops, buffered bytes, connections."""
import sys
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

COLUMNS = ("sink", "msgs/s", "MB/s", "sent", "dropped", "drop/s", "buffered", "spooled",
           "unacked", "connected", "reconn", "errors")


def scrape(url, timeout=5):
    """{sink: {metric: value}} summed over everything else (reasons, workers)."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            sink = s.labels.get("sink")
            if sink is not None:
                d = out.setdefault(sink, {})
                d[s.name] = d.get(s.name, 0) + s.value
    return out


def rows(prev, cur, dt):
    table = []
    for sink in sorted(cur):
        c, p = cur[sink], prev.get(sink, {})

        def rate(name):
            return (c.get(name, 0) - p.get(name, 0)) / dt if dt > 0 else 0.0
        table.append((
            sink, f"{rate('logpool_sent_messages_total'):.0f}",
            f"{rate('logpool_sent_bytes_total') / 1e6:.2f}",
            f"{c.get('logpool_sent_messages_total', 0):.0f}",
            f"{c.get('logpool_dropped_messages_total', 0):.0f}",
            f"{rate('logpool_dropped_messages_total'):.0f}",
            f"{c.get('logpool_buffered_bytes', 0):.0f}",
            f"{c.get('logpool_spooled_bytes', 0):.0f}",
            f"{c.get('logpool_unacked_messages', 0):.0f}",
            f"{c.get('logpool_connected', 0):.0f}",
            f"{c.get('logpool_reconnects_total', 0):.0f}",
            f"{c.get('logpool_write_errors_total', 0) + c.get('logpool_connect_failures_total', 0):.0f}",
        ))
    return table


def format_table(table):
    widths = [max(len(str(r[i])) for r in [COLUMNS] + table) for i in range(len(COLUMNS))]
    lines = ["  ".join(str(v).rjust(w) if i else str(v).ljust(w)
                       for i, (v, w) in enumerate(zip(row, widths)))
             for row in [COLUMNS] + table]
    return "\n".join(lines)


def run(url, interval=1.0, once=False):
    try:
        prev, t_prev = scrape(url), time.monotonic()
    except OSError as exc:
        print(f"logpool top: cannot read {url}: {exc}", file=sys.stderr)
        return 2
    while True:
        time.sleep(interval)
        try:
            cur, t_cur = scrape(url), time.monotonic()
        except OSError as exc:
            print(f"logpool top: cannot read {url}: {exc}", file=sys.stderr)
            return 2
        table = format_table(rows(prev, cur, t_cur - t_prev))
        if once:
            print(table)
            return 0
        sys.stdout.write("\x1b[H\x1b[2J" + f"logpool top — {url} — every {interval:g} s "
                         "(Ctrl-C to quit)\n\n" + table + "\n")
        sys.stdout.flush()
        prev, t_prev = cur, t_cur
