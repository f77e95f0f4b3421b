"""One source for each list. What can be derived is derived (stats field names from the C
struct, the package version from one attribute); what must be repeated in another language
is held equal here."""
import ast
import collections
import os
import re

import pytest

import logpool
from logpool import _binding, config, errors, metrics, paths, reference, stats, transports

PACKAGE = os.path.dirname(os.path.abspath(logpool.__file__))
HEADER = open(paths.header_path(), encoding="utf-8").read()
def lua_source(module):
    return open(os.path.join(paths.lua_dir(), *module.split(".")) + ".lua",
                encoding="utf-8").read()


LUA_BASE = lua_source("resty.logpool.base")
LUA_OPTIONS = lua_source("resty.logpool.options")


def package_modules():
    out = {}
    for dirpath, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, name), os.path.dirname(PACKAGE))
                module = rel[:-3].replace(os.sep, ".").removesuffix(".__init__")
                out[module] = os.path.join(dirpath, name)
    return out


def imports_of(module, path, known):
    """Package modules `module` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name in known and name != module:
                found.add(name)
    found.discard("logpool")  # the package's __init__ only re-exports
    return found


def test_no_import_circles_in_the_package():
    modules = package_modules()
    graph = {m: imports_of(m, p, modules) for m, p in modules.items()}
    state = {}

    def visit(m, trail):
        if state.get(m) == "done":
            return
        assert state.get(m) != "open", "import circle: " + " -> ".join(trail + [m])
        state[m] = "open"
        for dep in sorted(graph[m]):
            visit(dep, trail + [m])
        state[m] = "done"

    for m in sorted(graph):
        visit(m, [])


def test_the_engine_knows_no_socket_and_transports_know_no_engine():
    modules = package_modules()
    for module, path in modules.items():
        source = open(path, encoding="utf-8").read()
        if module.startswith("logpool.engine"):
            assert not re.search(r"^import (socket|ssl)\b", source, re.M), module
        if module.startswith("logpool.transports"):
            assert "logpool.engine" not in source, module


# The transport side of the chain API: the only transport modules that call into C.
CHAIN_API_MODULES = ("logpool.transports.base", "logpool.transports.native")


def test_no_transport_reaches_the_c_library_but_through_the_chain_api():
    """The engine owns delivery bookkeeping (logpool/transports/contract.py): a transport
    reports an Outcome and uses the Chain; it never calls the C library or its ffi."""
    reaching = re.compile(r"\b(lib|ffi)\.|\bchain\.(lib|ffi|csink)\b|logpool__|_binding")
    offenders = {}
    for module, path in package_modules().items():
        if module.startswith("logpool.transports") and module not in CHAIN_API_MODULES:
            source = open(path, encoding="utf-8").read()
            found = sorted({m.group(0) for m in reaching.finditer(source)})
            if found:
                offenders[module] = found
    assert not offenders


def test_the_contract_module_states_every_outcome_the_engine_applies():
    """The docstring, the code and this test name the same things: every Outcome.NAME the
    contract cites exists, and every constructor of Outcome is cited."""
    from logpool.transports import contract
    doc = contract.__doc__
    cited = set(re.findall(r"Outcome\.(\w+)", doc))
    missing = {name for name in cited if not hasattr(contract.Outcome, name)}
    assert not missing, f"the contract cites Outcome.{missing}, which do not exist"
    constructors = {name for name, v in vars(contract.Outcome).items()
                    if isinstance(v, classmethod)} | {"NOTHING"}
    assert constructors <= cited, f"not in the contract: {constructors - cited}"
    for name in ("per_message", "wrote", "acked", "rejected", "progressed", "opened",
                 "NOTHING", "RetryLater", "Unsendable", "Stopped", "connect(should_stop) ->",
                 "write() ->", "close() ->", "idle() ->", "deadline", "bounded"):
        assert name in doc, name
    assert set(f.value for f in contract.Fate) == {"ack", "retry", "reject"}


ENGINE_MODULES = ("engine/writer.py", "engine/spooling.py", "metrics.py")


def test_everything_the_engine_reads_of_a_transport_is_declared_on_the_interface():
    """No getattr(transport, ...) side channels: each name the engine uses is declared on
    base.Transport and listed in the contract."""
    from logpool.transports import contract
    from logpool.transports.base import Transport
    used = set()
    for rel in ENGINE_MODULES:
        source = open(os.path.join(PACKAGE, rel), encoding="utf-8").read()
        assert not re.search(r"getattr\(\s*self\.transport", source), rel
        used |= set(re.findall(r"\btransport\.(\w+)", source))
    assert {"inflight", "resumed", "connect", "close", "write"} <= used
    undeclared = {name for name in used if not hasattr(Transport, name)}
    assert not undeclared, f"the engine reads undeclared transport names: {undeclared}"
    unlisted = {name for name in used if name not in contract.__doc__}
    assert not unlisted, f"the contract does not list: {unlisted}"


def test_every_transport_is_one_level_below_the_contract():
    """Connections, TLS and acknowledged sessions are composed (self.conn, self.session),
    not inherited: every transport's only base class is the interface."""
    from logpool.transports.base import Transport
    for cls in transports.TRANSPORTS:
        assert cls.__bases__ == (Transport,), f"{cls.__name__}: {cls.__mro__}"
    assert Transport.__bases__ == (object,)


def test_a_new_transport_is_one_module_and_one_registry_line(monkeypatch):
    """Its address form, its keys (checked, with defaults), its Lua types and its reference
    entry all come from the class: registering it is all the rest of the package needs."""
    from logpool.transports.address import AddressForm
    from logpool.transports.base import Transport
    from logpool.transports.schema import Option, int_range

    class Echo(Transport):
        SCHEMES = ("echo",)
        ADDRESS = {"echo": AddressForm("echo", "{s}://name",
                                       lambda where, scheme, url, zero: url.split("://")[1])}
        OPTIONS = (Option("echo_depth", "integer", 3, "how deep it echoes", int_range(1, 9)),)

    monkeypatch.setattr(transports, "TRANSPORTS", transports.TRANSPORTS + (Echo,))
    monkeypatch.setitem(transports.BY_SCHEME, "echo", Echo)
    sink, = config.parse({"sinks": [{"url": "echo://x", "echo_depth": 5}]}).sinks
    assert (sink.address, sink.address_kind, sink.transport_options.echo_depth) == ("x", "echo",
                                                                                   5)
    assert config.parse({"sinks": ["echo://y"]}).sinks[0].transport_options.echo_depth == 3
    with pytest.raises(errors.ConfigError, match=r"echo_depth: must be an integer from 1 to 9"):
        config.parse({"sinks": [{"url": "echo://x", "echo_depth": 0}]})
    with pytest.raises(errors.ConfigError, match=r"only echo:// sinks take"):
        config.parse({"sinks": [{"url": "tcp://h:1", "echo_depth": 2}]})
    assert "| `echo_depth` | integer | 3 | how deep it echoes |" in reference.markdown()
    assert "    echo_depth = true,\n" in reference.lua_options()
    assert "echo://name" in transports.url_forms()


CONTRACT_CALLS = ("connect", "write", "close", "idle")


def test_every_contract_call_of_every_transport_returns_an_outcome():
    """connect, write, close and idle return a value on every path (never None): a bare
    `return`, or falling off the end, would hand the engine None."""
    offenders = []
    classes = {"Transport"} | {cls.__name__ for cls in transports.TRANSPORTS}
    for module, path in package_modules().items():
        if not module.startswith("logpool.transports"):
            continue
        tree = ast.parse(open(path, encoding="utf-8").read())
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)
                    and n.name in classes):
            for fn in cls.body:
                if not isinstance(fn, ast.FunctionDef) or fn.name not in CONTRACT_CALLS:
                    continue
                bare = [r for r in ast.walk(fn) if isinstance(r, ast.Return) and r.value is None]
                if bare or not _always_leaves(fn.body):
                    offenders.append(f"{module}.{cls.name}.{fn.name}")
    assert not offenders, f"may return None: {offenders}"


def _always_leaves(body):
    """The statements end in a return or raise on every path (`while True` loops leave only
    through one)."""
    last = body[-1] if body else None
    if isinstance(last, (ast.Return, ast.Raise)):
        return True
    if isinstance(last, ast.While):
        return isinstance(last.test, ast.Constant) and last.test.value is True
    if isinstance(last, ast.If):
        return _always_leaves(last.body) and _always_leaves(last.orelse)
    if isinstance(last, ast.Try):
        return ((last.finalbody and _always_leaves(last.finalbody))
                or (_always_leaves(last.orelse or last.body)
                    and all(_always_leaves(h.body) for h in last.handlers)))
    return False


def test_stats_fields_come_from_the_c_struct_and_every_copy_agrees():
    header_fields = re.findall(r"uint64_t (\w+);", HEADER[HEADER.index("typedef struct logpool_stats_s"):
                                                          HEADER.index("} logpool_stats_t;")])
    assert stats.fields(_binding.ffi) == tuple(header_fields)
    start = LUA_BASE.index("_M.STATS_FIELDS")
    lua_fields = re.findall(r'"(\w+)"', LUA_BASE[start:LUA_BASE.index("}", start)])
    assert tuple(lua_fields) == tuple(header_fields)
    rendered = [f for _, f, _ in metrics.COUNTERS] + [f for _, f, _ in metrics.GAUGES] + [
        f for _, f in metrics.DROPS]
    assert sorted(rendered) == sorted(header_fields), "every counter is in Prometheus once"
    c_list = re.search(r"#define STATS_FIELDS\(XX\)(.*?)\n\n", open(
        os.path.join(PACKAGE, "csrc", "chain.c"), encoding="utf-8").read(), re.S).group(1)
    assert re.findall(r"XX\((\w+)\)", c_list) == header_fields


def test_error_codes_agree_everywhere():
    enum = {n: int(v) for n, v in re.findall(r"LOGPOOL_(E[A-Z]+|OK) = (-?\d+)", HEADER)}
    python = {n: getattr(errors, n) for n in dir(errors) if re.fullmatch(r"E[A-Z]+|OK", n)}
    assert python == enum
    assert {cls.code for cls in errors.BY_CODE.values()} == set(enum.values()) - {0}
    lib = _binding.lib()
    for name, code in enum.items():
        assert getattr(lib, f"LOGPOOL_{name}") == code


def test_the_version_is_one_value():
    version = logpool.__version__
    assert re.search(r'#define LOGPOOL_VERSION_STRING "([^"]+)"', HEADER).group(1) == version
    major, minor, patch = (int(x) for x in version.split("."))
    for part, value in (("MAJOR", major), ("MINOR", minor), ("PATCH", patch)):
        assert re.search(rf"#define LOGPOOL_VERSION_{part} (\d+)", HEADER).group(1) == str(value)
    for module in ("resty.logpool", "resty.logpool.base", "resty.logpool.compat",
                   "resty.logpool.json", "resty.logpool.options", "resty.logpool.metrics"):
        assert f'_VERSION = "{version}"' in lua_source(module), module
    pyproject = open(os.path.join(os.path.dirname(PACKAGE), "pyproject.toml")).read()
    assert 'dynamic = ["version"]' in pyproject and 'attr = "logpool.__version__"' in pyproject
    assert _binding.ffi.string(_binding.lib().logpool_version()).decode() == version


def lua_option_set(name):
    block = LUA_OPTIONS[LUA_OPTIONS.index(f"local {name} = {{"):]
    block = block[:block.index("}")]
    return set(re.findall(r"(\w+) = true", block))


def test_the_lua_option_list_is_generated_from_the_schemas():
    assert LUA_OPTIONS == reference.lua_options(), \
        "regenerate: python -m logpool config-reference --lua > lua/resty/logpool/options.lua"


def test_the_lua_option_checks_cover_exactly_the_config_keys():
    """options.lua's type lists are the option schemas' types, key for key."""
    from logpool.transports.schema import TYPES
    wanted = collections.defaultdict(set)
    for option in reference.all_options():
        wanted[TYPES[option.type]].add(option.name)
    assert lua_option_set("NUMBER_OPTIONS") == wanted["number"]
    assert lua_option_set("STRING_OPTIONS") == wanted["string"]
    assert lua_option_set("TABLE_OPTIONS") == wanted["table"]
    assert lua_option_set("BOOLEAN_OPTIONS") == wanted["boolean"]


# Checks still wrapped in the module that declares the key (the encoders' branch edits
# these files; inlined once it lands).
CHECKS_WRAPPED_ELSEWHERE = {"otlp_resource_attributes"}


def test_every_key_is_an_option_checked_by_the_schema_vocabulary():
    """One vocabulary: every key of the pool, of every transport and format is a
    schema.Option, and its value check (if it needs more than its type) is built from
    logpool/transports/schema.py's checkers, not an if-chain on the key elsewhere."""
    from logpool.transports import schema
    options = reference.all_options()
    assert {o.name for o in options} >= {"flush_limit", "framing", "spool_dir", "relp_window",
                                          "http_format", "loki_labels", "kafka", "forward_tag"}
    foreign = sorted(o.name for o in options if not isinstance(o, schema.Option) or (
        o.check is not None and o.check.__module__ != schema.__name__
        and o.name not in CHECKS_WRAPPED_ELSEWHERE))
    assert not foreign, f"keys checked outside schema.py: {foreign}"
    for module, path in package_modules().items():
        source = open(path, encoding="utf-8").read()
        assert not re.search(r"if key == \"", source), f"{module}: an if-chain on a key"


def test_defaults_are_applied_once_by_config_and_transports_get_every_key():
    """A transport's options come complete from config (its defaults, the pool-wide values,
    the sink's), validated; no transport fills in defaults of its own."""
    from logpool.transports import schema
    urls = ("tcp://h:1", "tls://h:1", "udp://h:1", "relp+tls://h:1", "https://h/x",
            "forward+tls://h:1")
    pool = config.parse({"sinks": [{"url": u} for u in urls] + [
        {"url": "http://h/y", "http_method": "PUT"}], "relp_window": 7,
        "http_compression": "gzip", "loki_labels": {"a": "b"}})
    for sink in pool.sinks:
        values = sink.transport_options
        assert isinstance(values, schema.Values), sink.url
        for option in sink.transport.options_for(sink.scheme):
            assert hasattr(values, option.name), (sink.url, option.name)
    relp, https, put = pool.sinks[3], pool.sinks[4], pool.sinks[6]
    assert relp.transport_options.relp_window == 7  # pool-wide
    assert https.transport_options.http_compression == "gzip"
    assert https.transport_options.http_method == "POST"  # the default
    assert https.transport_options.format_options["loki_labels"] == {"a": "b"}
    assert put.transport_options.http_method == "PUT"  # the sink's own
    assert https.transport_options.tls is not None and pool.sinks[0].transport_options.tls \
        is None
    for module, path in package_modules().items():
        if module.startswith("logpool.transports") and module != "logpool.transports.schema":
            source = open(path, encoding="utf-8").read()
            assert not re.search(r"\{\*\*defaults\(|options\.get\(key, default\)", source), \
                f"{module} applies defaults itself"


def test_every_key_is_validated_even_when_no_sink_takes_it():
    """Config validates all keys first: a bad pool-wide transport key is an error whatever
    the sinks are."""
    with pytest.raises(errors.ConfigError, match=r"^http_method: must be 'POST' or 'PUT'"):
        config.parse({"sinks": ["tcp://h:1"], "http_method": "GET"})
    with pytest.raises(errors.ConfigError, match=r"^relp_window: must be an integer from 1"):
        config.parse({"sinks": ["unix:/x"], "relp_window": 0})


def test_the_configuration_reference_is_generated_from_the_schemas():
    path = os.path.join(os.path.dirname(PACKAGE), "docs", "configuration.md")
    assert open(path, encoding="utf-8").read() == reference.markdown(), \
        "regenerate: python -m logpool config-reference > docs/configuration.md"


@pytest.mark.parametrize("key", sorted(set(config.SINK_OPTIONS) | {"framing"}))
def test_every_option_is_documented(key):
    readme = "\n".join(open(os.path.join(os.path.dirname(PACKAGE), p), encoding="utf-8").read()
                       for p in ("README.md",) + tuple(
                           os.path.join("docs", f) for f in sorted(os.listdir(
                               os.path.join(os.path.dirname(PACKAGE), "docs")))
                           if f.endswith(".md")))
    assert f"`{key}`" in readme


def test_every_python_package_of_the_source_tree_is_installed():
    """pyproject lists the packages a `pip install` ships: a new subpackage missing there
    works from the checkout and breaks `make install`."""
    import tomllib
    with open(os.path.join(os.path.dirname(PACKAGE), "pyproject.toml"), "rb") as f:
        listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
    found = {m for m, p in package_modules().items() if p.endswith("__init__.py")}
    assert found == listed


CSRC = os.path.join(PACKAGE, "csrc")
C_DEFINITION = re.compile(r"^(static\s+)?(?:[A-Za-z_][\w \*]*?[\s\*])?(logpool_\w+|log_cdata)"
                          r"\s*\(([^;{]*)\)\s*\{", re.M)


def c_sources():
    """{file: its text without comments} of the C core."""
    return {f: re.sub(r"/\*.*?\*/", "", open(os.path.join(CSRC, f), encoding="utf-8").read(),
                      flags=re.S)
            for f in sorted(os.listdir(CSRC)) if f.endswith(".c")}


def test_no_call_circles_between_the_c_files():
    """Each concern is one file and calls flow one way (pool -> chain -> hot path ->
    process, never back): a circle means two files share one concern."""
    sources = c_sources()
    owner = {m.group(2): f for f, src in sources.items() for m in C_DEFINITION.finditer(src)}
    graph = {f: {owner[m.group(1)] for m in re.finditer(r"\b(logpool_\w+|log_cdata)\s*\(", src)
                 if owner.get(m.group(1), f) != f}
             for f, src in sources.items()}
    state = {}

    def visit(f, trail):
        if state.get(f) == "done":
            return
        assert state.get(f) != "open", "call circle: " + " -> ".join(trail + [f])
        state[f] = "open"
        for g in sorted(graph[f]):
            visit(g, trail + [f])
        state[f] = "done"

    for f in graph:
        visit(f, [])


def test_every_c_function_has_one_declaration_in_a_header():
    headers = "\n".join(open(os.path.join(d, f), encoding="utf-8").read()
                        for d in (CSRC, paths.include_dir()) for f in os.listdir(d)
                        if f.endswith(".h"))
    for f, src in c_sources().items():
        assert not re.search(r"^\s+extern\b", src, re.M), f"{f}: a declaration inside a body"
        for m in C_DEFINITION.finditer(src):
            if m.group(1):  # static: the file's own
                continue
            declared = re.findall(r"\b%s\s*\([^;{)]*\)\s*;" % m.group(2), headers)
            assert len(declared) == 1, f"{m.group(2)} ({f}) declared {len(declared)} times"
