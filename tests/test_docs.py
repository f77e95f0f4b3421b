"""The docs a newcomer reads point at things that exist: every relative link in README.md and
docs/*.md (and the heading it names), every repository file a doc names in backticks, every
test a doc cites as `file.py::test_name`, every `file.lua:LINE` an error-log example
shows, and every repository file a code comment or docstring names; and the performance
figures of README and docs/performance.md are bench/results.json's (figures come from one
place: `make bench` renders bench/RESULTS.md, README's block and the figures
docs/performance.md quotes through bench/render.py)."""
import glob
import io
import json
import os
import re
import sys
import tokenize

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(os.path.relpath(p, ROOT)
                              for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
SKIP_DIRS = {".git", ".venv", "__pycache__", "node_modules"}
EXTENSIONS = (".py", ".md", ".c", ".h", ".lua", ".toml", ".so", ".sh", ".cfg")
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`\n]+)`")
LUA_LINE = re.compile(r"\[lua\] ([\w/]+\.lua):(\d+):")  # as nginx's error log shows it


def repository_files():
    out = []
    for dirpath, dirnames, files in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info")
                       and not os.path.exists(os.path.join(dirpath, d, ".git"))]  # (a checkout)
        out += [os.path.relpath(os.path.join(dirpath, f), ROOT) for f in files]
    return out


FILES = set(repository_files())
DIRS = {os.path.dirname(f)[:i] for f in FILES for i in range(len(os.path.dirname(f)) + 1)
        if i == len(os.path.dirname(f)) or os.path.dirname(f)[i] == "/"} - {""}


def text_outside_code_blocks(path):
    out, fenced = [], False
    for line in open(os.path.join(ROOT, path), encoding="utf-8"):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            out.append(line)
    return "".join(out)


def slug(heading):
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path):
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text_outside_code_blocks(path),
                                                   re.M)}


def find(name):
    """The repository file (or directory) a doc means by `name`: a path from the root, or
    the tail of one (`csrc/pool.c`, `resty/logpool/base.lua`), or a bare file name."""
    name = name.rstrip("/")
    return [f for f in FILES | DIRS if f == name or f.endswith("/" + name)] if "/" in name \
        else [f for f in FILES if os.path.basename(f) == name]



def named_paths(text):
    """(path, test or None) for every backticked token that names a repository file."""
    for m in CODE.finditer(text):
        token = m.group(1).strip()
        token = re.sub(r"^(\S+\.\w+): .*", r"\1", token)  # `logpool/x.py: SomeClass`
        path, _, test = token.partition("::")
        if (re.search(r"[\s…*?<>{}$=,'\"()|#@]|://", path) or path.startswith(("/", "~", "-",
                                                                                  "."))):
            continue
        if path.endswith(EXTENSIONS) or (path.endswith("/") and "/" in path[:-1]):
            yield path, test or None


@pytest.mark.parametrize("doc", DOCS)
def test_every_relative_link_exists(doc):
    base = os.path.dirname(os.path.join(ROOT, doc))
    missing = []
    for m in LINK.finditer(text_outside_code_blocks(doc)):
        target = m.group(1)
        if re.match(r"[a-z]+:", target):
            continue  # http:, https:, mailto:
        path, _, anchor = target.partition("#")
        full = os.path.normpath(os.path.join(base, path)) if path else \
            os.path.join(ROOT, doc)
        if not os.path.exists(full):
            missing.append(target)
        elif anchor and full.endswith(".md") and anchor not in anchors(os.path.relpath(full,
                                                                                      ROOT)):
            missing.append(target + " (no such heading)")
    assert not missing, f"{doc}: links to nothing: {missing}"


@pytest.mark.parametrize("doc", DOCS)
def test_every_file_and_test_a_doc_names_exists(doc):
    missing = []
    for path, test in named_paths(open(os.path.join(ROOT, doc), encoding="utf-8").read()):
        found = find(path)
        if not found:
            missing.append(path)
            continue
        if test and not test.startswith("…"):
            prefix = test.rstrip("…")
            exact = not test.endswith("…")
            source = "".join(open(os.path.join(ROOT, f), encoding="utf-8").read()
                             for f in found if f.endswith(".py"))
            pattern = rf"^def {re.escape(prefix)}" + (r"\(" if exact else "")
            if not re.search(pattern, source, re.M):
                missing.append(f"{path}::{test}")
    assert not missing, f"{doc} names files or tests that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS)
def test_lua_line_numbers_in_log_examples_point_at_a_log_call(doc):
    for m in LUA_LINE.finditer(open(os.path.join(ROOT, doc), encoding="utf-8").read()):
        name, line = m.group(1), int(m.group(2))
        found = [f for f in find(name) if f.startswith("lua/")]
        assert found, f"{doc}: {m.group(0)}: no such Lua file"
        lines = open(os.path.join(ROOT, found[0]), encoding="utf-8").read().splitlines()
        assert line <= len(lines) and "ngx.log" in lines[line - 1], \
            f"{doc}: {m.group(0)} is not where the Lua module logs (line {line}: " \
            f"{lines[line - 1].strip() if line <= len(lines) else 'past the end'!r})"


# -- code comments name files that exist --------------------------------------------------

# A file name in a comment or docstring: a path or a bare name with a source extension.
COMMENT_PATH = re.compile(r"(?<![\w/.\-*{$<])((?:[\w-]+/)*[\w-]+\.(?:py|c|h|lua|md|json|toml))"
                          r"\b(?![\w/(>])")
# Files of other projects that comments name on purpose (headers, nginx's own sources).
OUTSIDE_FILES = {"Python.h", "rdkafka.h", "ngx_http_log_module.c", "src/core/ngx_string.c"}
# Files whose comments name example paths (this one's patterns).
EXAMPLE_NAMERS = {"tests/test_docs.py"}


def comments(path):
    """The comments and docstrings of a source file, as one text."""
    text = open(os.path.join(ROOT, path), encoding="utf-8").read()
    if path.endswith(".py"):
        out = []
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.COMMENT or (
                    tok.type == tokenize.STRING
                    and tok.string.lstrip("rbuRBU").startswith(('"""', "'''"))):
                out.append(tok.string)
        return "\n".join(out)
    if path.endswith((".c", ".h")):
        return "\n".join(re.findall(r"/\*.*?\*/|//[^\n]*", text, re.S))
    if path.endswith(".lua"):
        return "\n".join(re.findall(r"--\[\[.*?\]\]|--[^\n]*", text, re.S))
    return ""


def names_in_comments(path):
    for m in COMMENT_PATH.finditer(comments(path)):
        name = m.group(1)
        if not name.startswith("self.") and name not in OUTSIDE_FILES:
            yield name


SOURCES = sorted(f for f in FILES if f.endswith((".py", ".c", ".h", ".lua"))
                 and not f.startswith(("bench/vendor/", "build/")) and f not in EXAMPLE_NAMERS)


def test_every_file_a_code_comment_names_exists():
    """A comment that cites a file sends the reader there: it must exist (a renamed or
    merged file leaves such comments behind, e.g. "logpool.c" after the split)."""
    missing = [f"{path}: {name}" for path in SOURCES for name in names_in_comments(path)
               if not find(name)]
    assert not missing, f"comments name files that do not exist: {missing}"


def test_the_checks_see_what_they_check():
    """The patterns above find the links and names they are meant to (a check that matches
    nothing passes vacuously)."""
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert "docs/architecture.md" in {m.group(1).partition("#")[0]
                                      for m in LINK.finditer(readme)}
    arch = open(os.path.join(ROOT, "docs", "architecture.md"), encoding="utf-8").read()
    named = list(named_paths(arch))
    assert ("logpool/csrc/hotpath.c", None) in named
    assert len({test for _, test in named if test}) >= 8  # the traps' tests
    assert find("nonexistent/file.py") == [] and find("csrc/pool.c")
    assert "the-eight-embedding-traps" in anchors("docs/architecture.md")
    assert "bench/vendor" in DIRS
    assert LUA_LINE.search(open(os.path.join(ROOT, "docs", "operating.md"),
                                encoding="utf-8").read())
    named = set(names_in_comments("logpool/csrc/core.h"))
    assert {"chunks.c", "cursor.c", "spool.c"} <= named
    assert "compat.md" in "".join(names_in_comments("lua/resty/logpool/compat.lua"))
    assert "logpool/transports/base.py" in set(names_in_comments(
        "logpool/transports/contract.py"))


# -- figures come from one place: a hand edit to README's block or RESULTS.md, or a
# results.json committed without rendering, fails here.

def bench_render():
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from bench import render
    return render


def results():
    with open(os.path.join(ROOT, "bench", "results.json"), encoding="utf-8") as f:
        return json.load(f)


def read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def test_readme_performance_block_is_rendered_from_bench_results():
    block = bench_render().readme_block_in(read("README.md"))
    assert block is not None, "README.md lost its bench:readme markers"
    assert block == bench_render().readme_block(results()), (
        "README's performance figures differ from bench/results.json: run `make bench` "
        "(or bench/run.py --only NAME) instead of editing them by hand")


def test_results_md_is_rendered_from_bench_results():
    assert read("bench/RESULTS.md") == bench_render().markdown(results())


def test_every_benchmark_in_results_is_rendered_and_named_once():
    r = results()
    names = [b.NAME for b in bench_render().BENCHMARKS]
    assert len(names) == len(set(names))
    assert bench_render().present(r), "results.json has no figures"
    md = bench_render().markdown(r)
    for bench in bench_render().present(r):
        assert f"## {bench.NAME} — " in md
        assert bench.rows(r), bench.NAME


def test_the_block_changes_when_a_figure_does():
    """The check compares figures, not just markers: a changed figure changes the block."""
    r = results()
    before = bench_render().readme_block(r)
    r["hotpath"]["mean"]["live"]["mean"] += 1.0
    assert bench_render().readme_block(r) != before


PERFORMANCE = "docs/performance.md"
# A measured figure: a number with the unit of a time, a share, a ratio, a rate or a size in
# MiB (message sizes in B/KiB and counts are the benchmarks' settings, not their results).
TYPED_FIGURE = re.compile(r"(?<![\w.=])[±~]?\d[\d.,]*(?:[–-]\d[\d.,]*)?\s*"
                          r"(?:ns|µs|us|ms|%|×(?!\s*\d)|x\b|MiB|MB/s|req/s|k\b)")


def prose_section(text):
    """The part of performance.md that reads the figures (after the table of lines)."""
    start = text.index("How to read them")
    return text[start:text.index("The benchmarks live in", start)]


def test_performance_page_figures_are_rendered_from_bench_results():
    text = read(PERFORMANCE)
    render = bench_render()
    quoted = render.figures_in(text)
    assert quoted, "docs/performance.md lost its fig markers"
    assert text == render.render_figures(text, results()), (
        "docs/performance.md quotes figures that differ from bench/results.json: run "
        "`make bench` (or bench/run.py --only NAME) instead of editing them by hand")
    assert {name for name, _ in quoted} == set(render.FIGURES), \
        "a figure of bench/render.py's FIGURES is not quoted, or the page names an unknown one"


def test_performance_prose_types_no_figure_by_hand():
    """Outside the fig markers the prose holds no measured figure: each comes from a run."""
    prose = bench_render().FIGURE.sub("", prose_section(read(PERFORMANCE)))
    typed = TYPED_FIGURE.findall(prose)
    assert not typed, f"docs/performance.md types figures by hand: {typed}"


def test_the_figure_checks_see_what_they_check():
    r = results()
    text = read(PERFORMANCE)
    r["hotpath"]["mean"]["live"]["mean"] += 1.0
    assert bench_render().render_figures(text, r) != text
    assert TYPED_FIGURE.findall("about 7.6 MiB, 0.3 % and about 9× the floor; 20–25 µs")
