"""Build liblogpool.so: cffi in embedding mode.

The declarations come from include/logpool.h and logpool/csrc/*.h (the blocks between the
LOGPOOL_CDEF markers); this file only wires sources, flags and the Python init code.

The library bakes in the interpreter it was built with (docs/architecture.md, trap 2): an
rpath to its libpython, the venv's python as PyConfig.executable, the cffi version, and the
directory holding the `logpool` package. Run it with the venv's python: `python build_ffi.py`.
"""
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import cffi

ROOT = os.path.dirname(os.path.abspath(__file__))
INCLUDE = os.path.join(ROOT, "include")
CSRC = os.path.join(ROOT, "logpool", "csrc")
TARGET = os.path.join(ROOT, "logpool", "liblogpool.so")
MODULE = "_logpool_embedded"
PRODUCER_TARGET = os.path.join(ROOT, "logpool", "liblogpool_producer.so")
PRODUCER_SOURCES = ["producer_abi.c", "producer.c", "agent_config.c", "agentmode.c", "codes.c",
                    "process.c", "metrics_merge.c"]


def cdef_block(path):
    """The declarations between the LOGPOOL_CDEF markers of a header: the runtime reads them
    with the same function, loaded here by path so that building never imports the package."""
    spec = importlib.util.spec_from_file_location(
        "_logpool_cdef", os.path.join(ROOT, "logpool", "_cdef.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.cdef_block(path)


def package_version():
    text = open(os.path.join(ROOT, "logpool", "__init__.py"), encoding="utf-8").read()
    return re.search(r'^__version__ = "([^"]+)"', text, re.M).group(1)


def libpython_path():
    libdir = sysconfig.get_config_var("LIBDIR")
    name = sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY")
    path = os.path.realpath(os.path.join(libdir, name))
    if not sysconfig.get_config_var("Py_ENABLE_SHARED") or not os.path.exists(path):
        raise SystemExit(
            f"logpool needs a Python built with --enable-shared (no {path}); "
            "embedding links against libpython")
    return libdir, path


def c_string(value):
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


INIT_CODE = r'''
import sys

_BUILD_CFFI = {cffi_version!r}
_PACKAGE_PARENT = {package_parent!r}

def _start():
    import _cffi_backend
    if _cffi_backend.__version__ != _BUILD_CFFI:
        raise ImportError(
            "liblogpool was built with cffi %s but this Python loads cffi %s from %s; "
            "rebuild logpool (make build)"
            % (_BUILD_CFFI, _cffi_backend.__version__, _cffi_backend.__file__))
    try:
        import logpool._embedded
    except ImportError:
        sys.path.insert(0, _PACKAGE_PARENT)
        import logpool._embedded
    from {module} import ffi, lib
    logpool._embedded.install(ffi, lib)

try:
    _start()
except BaseException as exc:
    # Without this, every logpool_new would print a traceback and say nothing useful.
    from {module} import ffi, lib
    _reason = ("embedded Python runtime unavailable: %s: %s" % (type(exc).__name__, exc))

    @ffi.def_extern(name="logpool__py_start")
    def _unavailable(config_json):
        lib.logpool__set_error(lib.LOGPOOL_ERUNTIME, _reason.encode("utf-8", "replace")[:470])
        return ffi.NULL
'''


def build(sanitize=False, target=TARGET):
    version = package_version()  # the version the library must agree with
    header_version = re.search(r'#define LOGPOOL_VERSION_STRING "([^"]+)"',
                               open(os.path.join(INCLUDE, "logpool.h"), encoding="utf-8").read()).group(1)
    if header_version != version:
        raise SystemExit(f"include/logpool.h says {header_version}, "
                         f"logpool/__init__.py says {version}")

    libdir, libpython = libpython_path()
    ffibuilder = cffi.FFI()
    ffibuilder.embedding_api(cdef_block(os.path.join(CSRC, "embedding.h")))
    ffibuilder.cdef(cdef_block(os.path.join(INCLUDE, "logpool.h")))
    ffibuilder.cdef(cdef_block(os.path.join(CSRC, "logpool_internal.h")))
    ffibuilder.cdef(cdef_block(os.path.join(CSRC, "ring_agent.h")))

    cflags = ["-O2", "-g", "-fvisibility=hidden", "-pthread", "-Wall", "-Wextra",
              "-Wno-unused-parameter", "-Wno-missing-field-initializers"]
    ldflags = ["-pthread", f"-Wl,-rpath,{libdir}", "-Wl,--disable-new-dtags", "-ldl"]
    if sanitize:
        cflags += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1"]
        ldflags += ["-fsanitize=address,undefined"]
    ffibuilder.set_source(
        MODULE,
        '#include "logpool_internal.h"\n#include "ring_agent.h"\n',
        sources=sorted(set(glob.glob(os.path.join(CSRC, "*.c"))) -
                       {os.path.join(CSRC, "producer_abi.c")}),
        include_dirs=[INCLUDE, CSRC],
        define_macros=[
            ("LOGPOOL_BUILD_EXECUTABLE", c_string(sys.executable)),
            ("LOGPOOL_BUILD_LIBPYTHON", c_string(libpython)),
        ],
        extra_compile_args=cflags,
        extra_link_args=ldflags,
    )
    ffibuilder.embedding_init_code(INIT_CODE.format(
        cffi_version=cffi.__version__, package_parent=ROOT, module=MODULE))

    with tempfile.TemporaryDirectory(prefix="logpool-build-") as tmp:
        built = ffibuilder.compile(tmpdir=tmp, target="liblogpool.*", verbose=False)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp_target = target + ".tmp"
        shutil.copyfile(built, tmp_target)
        os.chmod(tmp_target, 0o755)
        os.replace(tmp_target, target)  # atomic: a running process keeps its mapping
    return target


def build_producer(sanitize=False, target=PRODUCER_TARGET):
    """liblogpool_producer.so: agent mode only, no Python linked (the Lua module and the nginx
    module load it for {"agent": ...}, so a worker never maps libpython)."""
    cc = sysconfig.get_config_var("CC") or "cc"
    cflags = ["-O2", "-g", "-fPIC", "-shared", "-fvisibility=hidden", "-pthread", "-Wall",
              "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers",
              f"-I{INCLUDE}", f"-I{CSRC}"]
    if sanitize:
        cflags += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1"]
    sources = [os.path.join(CSRC, name) for name in PRODUCER_SOURCES]
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp_target = target + ".tmp"
    subprocess.run(cc.split()[:1] + cflags + ["-o", tmp_target] + sources + ["-pthread"],
                   check=True)
    os.replace(tmp_target, target)
    return target


if __name__ == "__main__":
    sanitize = "--sanitize" in sys.argv
    out = TARGET
    for arg in sys.argv[1:]:
        if arg.startswith("--out="):
            out = os.path.abspath(arg.split("=", 1)[1])
    print(build(sanitize=sanitize, target=out))
    print(build_producer(sanitize=sanitize,
                         target=os.path.join(os.path.dirname(out), "liblogpool_producer.so")))
