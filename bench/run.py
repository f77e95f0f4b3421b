"""make bench: every benchmark prints its baseline, measured in the same run, and the ratio.

Figures, not pass/fail. One module per benchmark (bench/<name>.py: run(ctx) -> figures,
rows(results) -> its table with targets); this driver runs them, merges their figures into
bench/results.json (a subset keeps the others' latest figures) and renders, through
bench/render.py, bench/RESULTS.md, README.md's performance block and the figures
docs/performance.md quotes.

usage: python bench/run.py [--quick] [--only NAME[,NAME...]]... [--list]
"""
import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

# Run as a script, this directory comes first on sys.path: put the repository there instead,
# so that the benchmarks import as the bench package and no module here shadows another.
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:] = [ROOT] + [p for p in sys.path if os.path.abspath(p or ".") != HERE]

from bench import render  # noqa: E402
from bench.common import Context  # noqa: E402

RESULTS = os.path.join(HERE, "results.json")
README = os.path.join(ROOT, "README.md")
PERFORMANCE = os.path.join(ROOT, "docs", "performance.md")  # its prose quotes figures


def parse_args(argv):
    names = [b.NAME for b in render.BENCHMARKS]
    ap = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter runs (about two minutes)")
    ap.add_argument("--only", action="append", default=[], metavar="NAME[,NAME]",
                    help="run only these benchmarks: " + ", ".join(names))
    ap.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = ap.parse_args(argv)
    only = [n for arg in args.only for n in arg.split(",") if n]
    unknown = sorted(set(only) - set(names))
    if unknown:
        ap.error(f"unknown benchmark {', '.join(unknown)}; known: {', '.join(names)}")
    args.selected = [b for b in render.BENCHMARKS if not only or b.NAME in only]
    return args


def load_previous():
    """The latest figures, with when each benchmark ran (older files: the whole run's date)."""
    try:
        with open(RESULTS) as f:
            r = json.load(f)
    except (OSError, ValueError):
        return {}
    runs = r.setdefault("runs", {})
    for bench in render.present(r):
        runs.setdefault(bench.NAME, dict(date=r["date"], quick=r["quick"], seconds=None))
    return r


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.list:
        for bench in render.BENCHMARKS:
            print(f"{bench.NAME:12} {bench.__doc__.splitlines()[0]}")
        return
    # A subset updates its own figures and keeps the others'; a whole run keeps only the
    # records of code that no longer exists (a "before" of a change: it cannot run again).
    previous = load_previous()
    results = previous if len(args.selected) < len(render.BENCHMARKS) else {
        key: previous[key] for key in render.HISTORICAL if key in previous}
    results.setdefault("runs", {})
    tmp = tempfile.mkdtemp(prefix="logpool-bench-")
    ctx = Context(tmp, quick=args.quick)
    started = time.monotonic()
    try:
        for bench in args.selected:
            print(f"{bench.NAME} ...", flush=True)
            t0 = time.monotonic()
            results.update(bench.run(ctx))
            results["runs"][bench.NAME] = dict(
                date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), quick=args.quick,
                seconds=time.monotonic() - t0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results.update(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                   machine=f"{platform.machine()}, {os.cpu_count()} cores, "
                           f"{platform.platform()}",
                   quick=args.quick, seconds=time.monotonic() - started)
    with open(RESULTS, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    with open(os.path.join(HERE, "RESULTS.md"), "w") as f:
        f.write(render.markdown(results))
    if not render.update_readme(README, results):
        print("README.md has no bench:readme block: not updated", file=sys.stderr)
    render.update_figures(PERFORMANCE, results)
    render.report(results, [b.NAME for b in args.selected])


if __name__ == "__main__":
    main()
